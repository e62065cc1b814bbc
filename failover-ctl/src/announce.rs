//! What this node announces: a VIP is announceable when announcing is on for it, this node
//! serves it (owns it, alone or as its group's master), it can serve it (a backend up or
//! draining, or `all_down = "pass"`) and the node is neither drained nor stopping. Pure: the
//! state owner feeds it and writes the routes (`netlink` `add_blackhole` / `remove_blackhole`).

use crate::{config::AllDown, daemon::plan::Member, daemon::plan::Admin};

/// Why a VIP is (not) announced: the `announce_reason` of the status and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Announced,
    /// `announce = false` on the VIP.
    Disabled,
    /// Another node serves it (its flag, or its group's master is elsewhere).
    NotOwned,
    /// No backend is up or draining, and `all_down` is `drop`.
    NoBackendUp,
    /// `drain-node`.
    NodeDrained,
    /// Announceable, to be announced anew once it has been so for `announce.rejoin_delay`.
    RejoinDelay,
    /// The daemon stops for good (SIGUSR1: `systemctl stop`, a shutdown) and withdrew first.
    Stopping,
}

/// The node's own state, which overrides every VIP's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Serving,
    /// `drain-node`: an operator's decision, kept across restarts until `undrain-node`.
    Drained,
    /// A stop for good: for the rest of this process only, so the next start announces again.
    Stopping,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Announced => "announced",
            Reason::Disabled => "disabled",
            Reason::NotOwned => "not_owned",
            Reason::NoBackendUp => "no_backend_up",
            Reason::NodeDrained => "node_drained",
            Reason::RejoinDelay => "rejoin_delay",
            Reason::Stopping => "stopping",
        }
    }
}

/// The decision for one VIP.
pub fn decide(announce: bool, owned: bool, all_down: AllDown, members: &[Member], node: Node) -> Reason {
    if !announce {
        return Reason::Disabled;
    }
    match node {
        Node::Stopping => return Reason::Stopping,
        Node::Drained => return Reason::NodeDrained,
        Node::Serving => {}
    }
    if !owned {
        return Reason::NotOwned;
    }
    let serving = members.iter().any(|member| member.up && member.admin != Admin::Maintenance);
    if !serving && all_down == AllDown::Drop {
        return Reason::NoBackendUp;
    }
    Reason::Announced
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::config::Tier;

    fn member(up: bool, admin: Admin) -> Member {
        Member { id: 1, address: IpAddr::from([10, 0, 0, 1]), weight: 1, tier: Tier::Primary, admin, up }
    }

    #[test]
    fn every_reason() {
        let up = [member(true, Admin::Enabled)];
        assert_eq!(decide(true, true, AllDown::Drop, &up, Node::Serving), Reason::Announced);
        assert_eq!(decide(false, true, AllDown::Drop, &up, Node::Serving), Reason::Disabled);
        assert_eq!(decide(true, true, AllDown::Drop, &up, Node::Drained), Reason::NodeDrained);
        assert_eq!(decide(true, true, AllDown::Drop, &up, Node::Stopping), Reason::Stopping);
        assert_eq!(decide(false, true, AllDown::Drop, &up, Node::Stopping), Reason::Disabled, "never announced, nothing to say");
        assert_eq!(decide(true, false, AllDown::Drop, &up, Node::Serving), Reason::NotOwned);
        let down = [member(false, Admin::Enabled), member(true, Admin::Maintenance)];
        assert_eq!(decide(true, true, AllDown::Drop, &down, Node::Serving), Reason::NoBackendUp);
        assert_eq!(decide(true, true, AllDown::Pass, &down, Node::Serving), Reason::Announced, "all_down = pass serves locally");
        // A draining backend still serves its tracked flows.
        assert_eq!(decide(true, true, AllDown::Drop, &[member(true, Admin::Drained)], Node::Serving), Reason::Announced);
        assert_eq!(decide(true, true, AllDown::Drop, &[], Node::Serving), Reason::NoBackendUp);
    }
}
