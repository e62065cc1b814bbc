//! The inspection commands: they read the pinned maps, `state.json` and `events.jsonl`
//! directly, so they work with the daemon stopped.

pub mod inspect;
