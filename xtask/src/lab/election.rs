//! The load balancers' own view of the election (`failover-ctl elections --json`): each node's
//! state of the lab's group and its VIP's table digest. Equal digests on both nodes are what
//! lets a takeover keep the established connections: the new master picks the same backend for
//! every flow without knowing the old master's flows.

use anyhow::{Context as _, Result};
use serde::Deserialize;

use super::{
    config::{GROUP, VIP_NAME},
    control::Daemon,
};

/// `elections --json` (failover-ctl/src/cli/inspect/elections.rs): the fields the lab reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ElectionsView {
    elections: Vec<GroupView>,
}

/// One group as one node runs it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct GroupView {
    pub name: String,
    /// "initialize", "backup", "master" or "fault".
    pub state: String,
    pub effective_priority: u8,
    /// The master as this node last heard it.
    pub master: String,
    pub owned: bool,
    /// VIP name -> table digest, for the VIPs that follow the group.
    pub digests: Vec<(String, String)>,
}

impl GroupView {
    /// The lab VIP's table digest on this node.
    pub fn digest(&self) -> Option<&str> {
        self.digests
            .iter()
            .find(|(vip, _)| vip == VIP_NAME)
            .map(|(_, digest)| digest.as_str())
            .filter(|digest| !digest.is_empty())
    }
}

/// The lab's group on `daemon`'s node.
pub fn group(daemon: &Daemon) -> Result<GroupView> {
    let text = daemon.ctl(&["elections", "--json"])?;
    let view: ElectionsView = serde_json::from_str(&text)
        .with_context(|| format!("parsing `elections --json` of {}", daemon.name))?;
    view.elections
        .into_iter()
        .find(|group| group.name == GROUP)
        .with_context(|| format!("{} runs no group {GROUP}", daemon.name))
}

/// Each node's table digest of the lab's VIP ("?" where a node could not say), and whether they
/// are all the same.
pub fn digests(daemons: &[Daemon]) -> (Vec<String>, bool) {
    let digests: Vec<Option<String>> = daemons
        .iter()
        .map(|daemon| {
            group(daemon)
                .ok()
                .and_then(|group| group.digest().map(str::to_owned))
        })
        .collect();
    let equal =
        digests.iter().all(Option::is_some) && digests.windows(2).all(|pair| pair[0] == pair[1]);
    let shown = digests
        .into_iter()
        .map(|digest| digest.unwrap_or_else(|| "?".into()))
        .collect();
    (shown, equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_elections_view() {
        let text = r#"{"instance":"lab-1-lb1","source":"daemon","elections":[{"name":"edge",
            "interface":"l0","vrid":51,"state":"master","priority":150,"effective_priority":150,
            "master":"10.100.2.2","advert_interval_ms":100,"addresses":["10.100.2.100"],
            "vips":["web"],"owned":true,"last_transition":null,"failed_tracks":[],
            "counters":{"adverts_received":3},"digests":[["web","5f3a"]]}]}"#;
        let view: ElectionsView = serde_json::from_str(text).unwrap();
        let group = &view.elections[0];
        assert_eq!((group.state.as_str(), group.owned), ("master", true));
        assert_eq!(group.digest(), Some("5f3a"));
    }
}
