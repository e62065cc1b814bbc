//! `status`, `vips`, `backends`, `table`, `flows`, `stats`, `which`, `events` and `elections`: read-only
//! views of one instance, built from its pinned maps and the daemon's runtime files.
//!
//! The maps are the truth about what the data plane does; `state.json` only adds what the maps
//! do not hold (names, weights, tiers, probe verdicts). Without it every command still works and
//! shows ids where names would be. Every command prints an aligned table, or with `--json` one
//! JSON object whose field names are part of the CLI's interface.
//!
//! One file per view; `instance` opens the pins and reads the state file, `render` turns values
//! into text. The views depend on those two (and `status` on `events` for the last event), never
//! on each other otherwise.

mod announcements;
mod backends;
mod elections;
mod events;
mod flows;
mod instance;
mod render;
mod stats;
mod status;
mod table;
mod vips;
mod which;

pub use announcements::announcements;
pub use backends::backends;
pub use elections::elections;
pub use events::events;
pub use flows::flows;
pub use render::utc;
pub use stats::stats;
pub use status::status;
pub use table::table;
pub use vips::vips;
pub use which::which;

use crate::paths::InstancePaths;

/// Which instance to read and how to print.
pub struct Target {
    pub paths: InstancePaths,
    pub json: bool,
}
