//! Validation of `[flow_sync]`: where this node listens, its peers of the same family, and an
//! interval short enough to matter and long enough not to flood.

use super::super::schema::RawFlowSync;
use super::*;

const MIN_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Validator {
    pub(super) fn flow_sync(&mut self, raw: RawFlowSync, elections: &[Election]) -> FlowSync {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let socket_address = |text: &str| -> Result<SocketAddr, String> {
            let address: SocketAddr = text.parse().map_err(|_| format!("expected an address and port such as \"10.0.0.1:7946\", got {text:?}"))?;
            if address.ip().is_unspecified() || address.ip().is_multicast() || address.port() == 0 {
                return Err(format!("must be one unicast address with a port, got {text:?}"));
            }
            Ok(address)
        };
        if raw.listen.is_none() {
            self.problem("flow_sync.listen", "required: the address and UDP port to receive on, such as \"10.0.0.1:7946\"");
        }
        let listen = self.field("flow_sync.listen", raw.listen.as_deref(), unspecified, socket_address);
        let texts = raw.peers.unwrap_or_default();
        if texts.is_empty() {
            self.problem("flow_sync.peers", "at least one peer (another load balancer's flow_sync.listen)");
        }
        let mut peers = Vec::new();
        for (index, text) in texts.iter().enumerate() {
            let path = format!("flow_sync.peers[{index}]");
            let peer = self.field(&path, Some(text), unspecified, socket_address);
            if peer == unspecified {
                continue;
            }
            if listen != unspecified && peer.is_ipv4() != listen.is_ipv4() {
                self.problem(&path, format!("{peer} is not of flow_sync.listen's family ({listen})"));
            } else if peer == listen {
                self.problem(&path, format!("{peer} is this node's own flow_sync.listen"));
            } else if peers.contains(&peer) {
                self.problem(&path, format!("{peer} is listed twice"));
            } else {
                peers.push(peer);
            }
        }
        let interval = self.field("flow_sync.interval", raw.interval.as_deref(), DEFAULT_INTERVAL, parse_duration);
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            self.problem("flow_sync.interval", format!("must be from 10ms to 60s, got {}", humantime::format_duration(interval)));
        }
        let idle_timeout = self.field("flow_sync.idle_timeout", raw.idle_timeout.as_deref(), DEFAULT_IDLE_TIMEOUT, parse_duration);
        if !(MIN_IDLE_TIMEOUT..=MAX_IDLE_TIMEOUT).contains(&idle_timeout) {
            self.problem("flow_sync.idle_timeout", format!("must be from 1s to 1h, got {}", humantime::format_duration(idle_timeout)));
        }
        if elections.is_empty() {
            self.problem("flow_sync", "needs [[election]] groups: it sends the flows of their VIPs from the master to the other nodes");
        }
        FlowSync { listen, peers, interval, idle_timeout }
    }
}
