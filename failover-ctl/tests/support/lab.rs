//! A whole lab: namespaces, backend servers and the daemon, dropped in that reverse order.

use std::{net::Ipv4Addr, time::Duration};

use super::{daemon::*, http::*, topology::*};

/// A whole lab: the daemon is dropped first (stopped, torn down), then the servers, then the
/// namespaces.
pub struct Lab {
    pub daemon: Daemon,
    pub servers: Vec<Option<HttpServer>>,
    pub topology: Topology,
}

impl Lab {
    /// `backends` HTTP backends on port 80 with the given weights and tiers, all up.
    pub fn http(weights_and_tiers: &[(u16, &'static str)]) -> Self {
        let topology = Topology::new(weights_and_tiers.len());
        let servers = (0..weights_and_tiers.len())
            .map(|index| {
                Some(HttpServer::start(
                    &topology.backends[index],
                    80,
                    &backend_name(index),
                ))
            })
            .collect();
        let mut spec = ConfigSpec {
            instance: String::new(),
            metrics_port: 9650 + (unique() % 1000) as u16,
            next_hop_mac: topology.next_hop_mac(),
            vip_name: "web",
            vip_port: 80,
            backends: weights_and_tiers
                .iter()
                .enumerate()
                .map(|(index, (weight, tier))| BackendSpec {
                    weight: *weight,
                    tier,
                    ..BackendSpec::http(index)
                })
                .collect(),
        };
        let daemon = Daemon::start(&topology.lb, &mut spec);
        let lab = Self {
            daemon,
            servers,
            topology,
        };
        let all: Vec<Ipv4Addr> = weights_and_tiers
            .iter()
            .enumerate()
            .filter(|(_, (_, tier))| *tier == "primary")
            .map(|(index, _)| backend_address(index))
            .collect();
        lab.daemon.wait_serving(&all, Duration::from_secs(10));
        lab
    }

    pub fn kill_server(&mut self, index: usize) {
        if let Some(mut server) = self.servers[index].take() {
            server.kill();
        }
    }

    pub fn restart_server(&mut self, index: usize) {
        assert!(self.servers[index].is_none());
        self.servers[index] = Some(HttpServer::start(
            &self.topology.backends[index],
            80,
            &backend_name(index),
        ));
    }
}
