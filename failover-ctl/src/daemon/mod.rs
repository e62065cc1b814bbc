//! The controller daemon: one task owns the desired state and the map writer; probes, the
//! control socket and signals talk to it through typed messages.

pub mod control;
pub mod controller;
pub mod elections;
pub mod events;
pub mod plan;
pub mod ready_tables;
pub mod run;
pub mod status;
