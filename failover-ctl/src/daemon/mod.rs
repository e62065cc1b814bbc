//! The controller daemon: one task owns the desired state and the map writer; probes, the
//! control socket and signals talk to it through typed messages.

pub mod status;
