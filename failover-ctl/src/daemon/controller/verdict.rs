//! Probe results and failovers: a verdict change is applied in two stages (health bit, then the
//! VIP's table) and timed.

use std::time::{Duration, Instant};

use super::state::{members, Controller};
use crate::{
    daemon::{
        plan,
        status::{now_millis, Event, FailoverTimings, ProbeStatus},
    },
    maps::VipSettings,
    probe::{Health, ProbeEvent},
};

impl Controller {
    pub(super) fn on_probe(&mut self, event: ProbeEvent) {
        let received = Instant::now();
        let Some(id) = self.tokens.get(&event.id).copied() else { return };
        let Some(backend) = self.backends.get_mut(&id) else { return };
        backend.probes += 1;
        backend.failures += u64::from(!event.result.success);
        backend.last = Some(ProbeStatus {
            at: event.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            success: event.result.success,
            latency_us: event.result.latency.as_micros() as u64,
            detail: event.result.detail.clone(),
        });
        self.dirty = true;
        let Some(transition) = event.transition else { return };
        let probe_at = event.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.apply_verdict(id, transition.to == Health::Up, probe_at, &event.result.detail, received);
    }

    /// Applies a verdict change of backend `id` in two stages (health bit, then the VIP's
    /// table) and records the failover event. `received`: when the verdict reached the state
    /// owner, the start of the measured latencies. Returns the timings, `None` when nothing
    /// changed.
    pub fn apply_verdict(
        &mut self,
        id: u32,
        up: bool,
        probe_at: u64,
        why: &str,
        received: Instant,
    ) -> Option<FailoverTimings> {
        let backend = self.backends.get_mut(&id)?;
        if backend.up == up {
            return None;
        }
        backend.up = up;
        let vip_name = backend.vip.clone();
        let address = backend.address;
        // Stage 1: the health bit, one map update.
        let bit = backend.health_bit();
        let stage_one = self.dataplane.writer.set_health(id, bit);
        let health_written = received.elapsed();
        // Stage 2: the tables of the VIP, rebuilt from the surviving weights.
        let stage_two = self.republish(&vip_name);
        let published = received.elapsed();
        let mut detail = format!(
            "{vip_name}: backend {address} is {} ({why}): health bit in {} us, table in {} us",
            if up { "up" } else { "down" },
            health_written.as_micros(),
            published.as_micros()
        );
        if let Err(error) = stage_one {
            detail.push_str(&format!("; writing the health bit failed: {error}"));
        }
        if let Err(error) = stage_two {
            detail.push_str(&format!("; publishing the table failed: {error:#}"));
        }
        self.count_failover(published);
        let timings = FailoverTimings {
            probe_at,
            to: if up { "up" } else { "down" }.into(),
            health_written_us: health_written.as_micros() as u64,
            table_published_us: published.as_micros() as u64,
        };
        self.record(Event {
            kind: "failover".into(),
            vip: Some(vip_name),
            backend: Some(address.to_string()),
            detail,
            timings: Some(timings.clone()),
            ..Event::default()
        });
        // Published at the end of the step, after the announcements it may change: the status
        // (table digests, state.json) never delays a withdraw.
        self.dirty = true;
        Some(timings)
    }

    /// The backend ids of the VIP named `vip`, in file order.
    pub fn backend_ids(&self, vip: &str) -> Vec<u32> {
        self.vips.iter().find(|state| state.config.name == vip).map(|state| state.members.clone()).unwrap_or_default()
    }

    pub(super) fn count_failover(&mut self, latency: Duration) {
        let micros = latency.as_micros() as u64;
        self.failovers.count += 1;
        self.failovers.latency_sum_us += micros;
        for (bound, count) in &mut self.failovers.latency_buckets {
            if micros <= *bound {
                *count += 1;
            }
        }
    }

    /// Rebuilds the table of the VIP named `name` and publishes it if it changed.
    pub(super) fn republish(&mut self, name: &str) -> anyhow::Result<()> {
        let Some(index) = self.vips.iter().position(|vip| vip.config.name == name) else {
            return Ok(());
        };
        let vip = &self.vips[index];
        let members = members(vip, &self.backends);
        let table = plan::table(&members, vip.config.table_size)?;
        if table != vip.table {
            let flags = plan::vip_flags(&vip.config, plan::group_index(&self.config, &vip.config.name));
            let settings = VipSettings { vip_id: vip.vip_id, flags };
            self.dataplane.writer.publish_vip(vip.key, settings, &table)?;
            let vip = &mut self.vips[index];
            vip.table = table;
            vip.table_digest.clear();
            vip.published_at = now_millis();
        }
        Ok(())
    }
}
