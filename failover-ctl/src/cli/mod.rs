//! The inspection commands: they read the pinned maps, `state.json` and `events.jsonl`
//! directly, so they work with the daemon stopped; and the packet monitor, which also writes the
//! one map the daemon does not (`MONITOR_FILTER`); and `flush-announcements`, which removes the
//! announce table's routes when no daemon can.

pub mod flush;
pub mod inspect;
pub mod monitor;
