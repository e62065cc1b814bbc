//! Probe results and failovers: a verdict change is applied in two stages (health bit, then the
//! VIP's table) and timed. The table comes ready when the worker prepared it (see
//! `daemon::ready_tables`), and is built here otherwise.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::state::{members, Controller};
use crate::{
    daemon::{
        plan,
        ready_tables::{differences, WayBack},
        status::{now_millis, Event, FailoverTimings, ProbeStatus},
    },
    maglev,
    maps::VipSettings,
    probe::{Health, ProbeEvent},
};

/// A table that went live: when, and whether it came ready or was built on the spot.
pub(super) struct Publication {
    pub(super) at: Instant,
    pub(super) ready: bool,
}

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
        // Stage 2: the tables of the VIP, from the surviving weights. Timed to the moment the
        // VIPS entry switched, not to the end of the bookkeeping after it.
        let stage_two = self.republish(&vip_name);
        let (published, table) = match &stage_two {
            Ok(Some(publication)) => (
                publication.at.saturating_duration_since(received),
                if publication.ready { "ready" } else { "built" },
            ),
            Ok(None) => (received.elapsed(), "unchanged"),
            Err(_) => (received.elapsed(), "failed"),
        };
        let mut detail = format!(
            "{vip_name}: backend {address} is {} ({why}): health bit in {} us, table ({table}) in {} us",
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
            table: table.into(),
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

    /// Whether tables one verdict away are still being prepared: a benchmark waits for them,
    /// as a failover in a daemon that has run for a while finds them ready.
    pub fn ready_tables_pending(&self) -> bool {
        self.ready.pending()
    }

    /// Slots written into the table pool since start: what publications cost in writes.
    pub fn table_slots_written(&self) -> u64 {
        self.dataplane.writer.table_slots_written()
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

    /// Publishes the table of the VIP named `name` if its inputs changed: the ready table when
    /// the worker prepared it, else a fresh build. Returns when the new table went live, `None`
    /// when nothing was published. Afterwards the table back to the state before is kept ready
    /// and the worker is asked for the tables one verdict away from the new one.
    pub(super) fn republish(&mut self, name: &str) -> anyhow::Result<Option<Publication>> {
        let Some(index) = self.vips.iter().position(|vip| vip.config.name == name) else {
            return Ok(None);
        };
        let vip = &self.vips[index];
        let members = members(vip, &self.backends);
        let inputs = plan::table_inputs(&members);
        if inputs == vip.inputs {
            return Ok(None);
        }
        let flags = plan::vip_flags(&vip.config, plan::group_index(&self.config, &vip.config.name));
        let settings = VipSettings { vip_id: vip.vip_id, flags };
        let size = vip.config.table_size;
        // Sizes differ only if a reload changed the size, which publishes through `apply`.
        let same_size = vip.table.len() == size as usize;
        let ready = if same_size { self.ready.take(&vip.key, size, &vip.inputs, &inputs) } else { None };
        let changed = match ready {
            Some(changes) if changes.is_empty() => None,
            Some(changes) => {
                self.dataplane.writer.publish_vip_changes(vip.key, settings, &changes)?;
                let at = Instant::now();
                let mut table = vip.table.to_vec();
                let back = changes.iter().map(|&(slot, _)| (slot, table[slot as usize])).collect();
                for &(slot, id) in changes.iter() {
                    table[slot as usize] = id;
                }
                Some((Publication { at, ready: true }, table, Some(back)))
            }
            None => {
                let table = maglev::build(&inputs, size)?;
                if *table == *vip.table {
                    None
                } else {
                    self.dataplane.writer.publish_vip(vip.key, settings, &table)?;
                    let at = Instant::now();
                    let back = same_size.then(|| differences(&table, &vip.table));
                    Some((Publication { at, ready: false }, table, back))
                }
            }
        };
        let vip = &mut self.vips[index];
        let previous = std::mem::replace(&mut vip.inputs, inputs);
        let Some((publication, table, back)) = changed else {
            // Other inputs, the same table (weights in the same proportions): only the key of
            // its ready tables changes.
            self.ready.published(vip.key, vip.table.clone(), &vip.inputs, &members, None);
            return Ok(None);
        };
        vip.table = Arc::from(table);
        vip.table_digest.clear();
        vip.published_at = now_millis();
        // The way back is a ready table only from inputs naming the same members (an adopted
        // table has none).
        let back = back.filter(|_| !previous.is_empty()).map(|changes| WayBack { inputs: &previous, changes });
        self.ready.published(vip.key, vip.table.clone(), &vip.inputs, &members, back);
        Ok(Some(publication))
    }
}
