//! The controller's probe tasks: one per backend not in maintenance, each reporting with a
//! token so that results of a replaced task are recognised and ignored.

use super::state::{Controller, ProbeTask};
use crate::{
    daemon::plan::Admin,
    probe::{self, Health},
};

impl Controller {
    pub(super) fn stop_probes(&mut self) {
        for (_, task) in std::mem::take(&mut self.probes) {
            task.handle.abort();
        }
        self.tokens.clear();
    }

    pub(super) fn stop_probe(&mut self, id: u32) {
        if let Some(task) = self.probes.remove(&id) {
            task.handle.abort();
            self.tokens.remove(&task.token);
        }
    }

    pub(super) fn start_probe(&mut self, id: u32, initial: Health) {
        self.stop_probe(id);
        let Some(backend) = self.backends.get(&id) else { return };
        if backend.admin == Admin::Maintenance {
            return;
        }
        let (spec, settings) = match probe::from_config(&backend.probe, backend.address) {
            Ok(converted) => converted,
            Err(error) => {
                tracing::error!("backend {}: {error}", backend.address);
                return;
            }
        };
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(1);
        let _guard = self.runtime.enter();
        let handle = probe::spawn_from(token, spec, settings, initial, self.probe_sender.clone());
        self.tokens.insert(token, id);
        self.probes.insert(id, ProbeTask { token, handle });
    }
}
