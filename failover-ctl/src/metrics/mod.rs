//! The metrics the daemon exports: typed Prometheus families (`prometheus-client`) filled at each scrape from the daemon's status and the data plane's counters.
//!
//! Nothing here keeps state between scrapes. The numbers already live elsewhere: the counters
//! in the pinned per-CPU maps (the kernel adds to them), the probe and failover counts in the
//! controller's [`Status`]. A scrape takes a snapshot of both and a [`Collector`] writes every
//! family from it, in status order, so a VIP or backend removed by a reload disappears at the
//! next scrape instead of lingering in a long-lived registry. The output is the Prometheus
//! text format 0.0.4 ([`CONTENT_TYPE`]), which every Prometheus version and `promtool check
//! metrics` read.

mod server;

use std::{borrow::Cow, collections::BTreeMap, fmt};

use failover_common::{maps::Counter, stats::REASON_NAMES};
use prometheus_client::{
    collector::Collector,
    encoding::{
        prometheus_text, DescriptorEncoder, EncodeLabel as _, EncodeLabelSet, EncodeMetric,
        LabelSetEncoder, MetricEncoder, NoLabelSet,
    },
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info, MetricType, TypedMetric},
    registry::{Registry, Unit},
};

use crate::{
    daemon::status::{BackendStatus, ElectionStatus, Status, VipStatus},
    election::codec::Discard,
};

pub use server::{serve, Render};

/// The data plane's counters, summed over CPUs, as read from the maps at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    /// By `vip_id` (`VIP_STATS`). A VIP with no entry gets no traffic samples (rather than a
    /// zero, which would look like a counter reset).
    pub vips: BTreeMap<u32, Counter>,
    /// By backend id (`BACKEND_STATS`); same rule for missing entries.
    pub backends: BTreeMap<u32, Counter>,
    /// Indexed by reason (`REASON_STATS`, see `failover_common::stats`).
    pub reasons: Vec<Counter>,
}

/// The content type of the text format 0.0.4, as Prometheus' own client libraries send it.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Renders every metric family in the text format; the output ends with a newline.
pub fn render(status: Status, traffic: Traffic) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { status, traffic }));
    let mut text = String::new();
    // Writing to a String cannot fail, and the collector has no error of its own.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

/// A label set that borrows from the scrape's snapshot, its labels in exposition order.
/// (prometheus-client's derive takes no lifetime parameter, hence this instead of it.)
macro_rules! label_set {
    ($(#[$doc:meta])* $name:ident { $($label:ident: $type:ty),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        struct $name<'a> {
            $($label: $type),+
        }

        impl EncodeLabelSet for $name<'_> {
            fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
                $((stringify!($label), self.$label.clone()).encode(encoder.encode_label())?;)+
                Ok(())
            }
        }
    };
}

label_set!(InstanceLabels { instance: &'a str });
label_set!(VipLabels { vip: &'a str });
label_set!(VipTableLabels { vip: &'a str, digest: &'a str });
label_set!(
    /// The traffic counters name the VIP by its address too: a dashboard can show either.
    VipTrafficLabels { vip: &'a str, address: &'a str, port: u16, protocol: &'a str }
);
label_set!(
    /// A backend is an address within a VIP: the same address can back several VIPs.
    BackendLabels { vip: &'a str, backend: &'a str }
);
label_set!(BackendInfoLabels { vip: &'a str, backend: &'a str, id: u32, tier: &'a str, probe: &'a str });
label_set!(AdminStateLabels { vip: &'a str, backend: &'a str, state: &'a str });
label_set!(ReasonLabels { reason: Cow<'a, str> });
label_set!(GroupLabels { group: &'a str });
label_set!(GroupStateLabels { group: &'a str, state: &'a str });
label_set!(GroupReasonLabels { group: &'a str, reason: &'a str });
label_set!(OutcomeLabels { outcome: &'a str });
label_set!(DiscardLabels { reason: &'a str });

/// One scrape's snapshot, written out by [`Collector::encode`].
#[derive(Debug)]
struct Scrape {
    status: Status,
    traffic: Traffic,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.daemon(&mut encoder)?;
        self.vips(&mut encoder)?;
        self.backends(&mut encoder)?;
        self.probes(&mut encoder)?;
        self.failovers(&mut encoder)?;
        self.reasons(&mut encoder)?;
        self.elections(&mut encoder)?;
        self.flow_sync(&mut encoder)?;
        self.announcements(&mut encoder)
    }
}

impl Scrape {
    fn daemon(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let status = &self.status;
        info(
            encoder,
            "failover",
            "Always 1; the instance name of this load balancer.",
            [InstanceLabels {
                instance: &status.instance,
            }],
        )?;
        single(
            encoder,
            "failover_adopted",
            "1 when this daemon adopted pinned state left by an earlier one, else 0.",
            None,
            ConstGauge::new(i64::from(status.adopted)),
        )?;
        single(
            encoder,
            "failover_start_time",
            "When the daemon started, seconds since the Unix epoch.",
            Some(&Unit::Seconds),
            ConstGauge::new(seconds_from_millis(status.started_at)),
        )?;
        single(
            encoder,
            "failover_config_loaded_timestamp",
            "When the configuration in force was loaded, seconds since the Unix epoch.",
            Some(&Unit::Seconds),
            ConstGauge::new(seconds_from_millis(status.config_loaded_at)),
        )
    }

    fn vips(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let vips = &self.status.vips;
        family(
            encoder,
            "failover_vip_owned",
            "1 when this node owns the VIP (forwards its traffic), else 0.",
            None,
            vips.iter().map(|vip| {
                let labels = VipLabels { vip: &vip.name };
                (labels, ConstGauge::new(i64::from(vip.owned)))
            }),
        )?;
        info(
            encoder,
            "failover_vip_table",
            "Always 1; the digest of the VIP's published table over slot -> backend address (equal on nodes that send every flow to the same backend).",
            vips.iter().filter(|vip| !vip.table_digest.is_empty()).map(|vip| VipTableLabels { vip: &vip.name, digest: &vip.table_digest }),
        )?;
        let traffic = |field: fn(&Counter) -> u64| {
            vips.iter().filter_map(move |vip| {
                let counter = self.traffic.vips.get(&vip.vip_id)?;
                let labels = VipTrafficLabels {
                    vip: &vip.name,
                    address: &vip.address,
                    port: vip.port,
                    protocol: &vip.protocol,
                };
                Some((labels, ConstCounter::new(field(counter))))
            })
        };
        family(
            encoder,
            "failover_vip_packets",
            "Packets forwarded for the VIP.",
            None,
            traffic(|counter| counter.packets),
        )?;
        family(
            encoder,
            "failover_vip_bytes",
            "Bytes forwarded for the VIP (before encapsulation).",
            None,
            traffic(|counter| counter.bytes),
        )
    }

    fn backends(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let traffic = |field: fn(&Counter) -> u64| {
            self.each_backend().filter_map(move |(vip, backend)| {
                let counter = self.traffic.backends.get(&backend.id)?;
                Some((labels(vip, backend), ConstCounter::new(field(counter))))
            })
        };
        family(
            encoder,
            "failover_backend_packets",
            "Packets forwarded to the backend.",
            None,
            traffic(|counter| counter.packets),
        )?;
        family(
            encoder,
            "failover_backend_bytes",
            "Bytes forwarded to the backend (before encapsulation).",
            None,
            traffic(|counter| counter.bytes),
        )?;
        info(
            encoder,
            "failover_backend",
            "Always 1; the backend's id, tier and probe kind.",
            self.each_backend().map(|(vip, backend)| BackendInfoLabels {
                vip: &vip.name,
                backend: &backend.address,
                id: backend.id,
                tier: &backend.tier,
                probe: &backend.probe,
            }),
        )?;
        self.backend_gauge(
            encoder,
            "failover_backend_up",
            "1 when the probes' verdict is up, else 0.",
            |backend| i64::from(backend.health == "up"),
        )?;
        self.backend_gauge(
            encoder,
            "failover_backend_serving",
            "1 when the backend is in the VIP's published table (gets new flows), else 0.",
            |backend| i64::from(backend.serving),
        )?;
        family(
            encoder,
            "failover_backend_admin_state",
            "1 for the backend's administrative state, 0 for the others.",
            None,
            self.each_backend().flat_map(|(vip, backend)| {
                // The three known states always, so a query for one of them never finds a gap;
                // an unknown state (newer daemon, older dashboard) is shown rather than lost.
                let mut states = vec!["enabled", "drained", "maintenance"];
                if !states.contains(&backend.admin.as_str()) {
                    states.push(&backend.admin);
                }
                states.into_iter().map(move |state| {
                    let labels = AdminStateLabels {
                        vip: &vip.name,
                        backend: &backend.address,
                        state,
                    };
                    (labels, ConstGauge::new(i64::from(backend.admin == state)))
                })
            }),
        )?;
        self.backend_gauge(
            encoder,
            "failover_backend_weight",
            "The backend's configured Maglev weight.",
            |backend| i64::from(backend.weight),
        )
    }

    fn probes(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        family(
            encoder,
            "failover_probe_success",
            "1 when the backend's last probe succeeded, else 0 (absent before the first probe).",
            None,
            self.each_backend().filter_map(|(vip, backend)| {
                let last = backend.last_probe.as_ref()?;
                Some((
                    labels(vip, backend),
                    ConstGauge::new(i64::from(last.success)),
                ))
            }),
        )?;
        family(
            encoder,
            "failover_probe_latency",
            "How long the backend's last probe took.",
            Some(&Unit::Seconds),
            self.each_backend().filter_map(|(vip, backend)| {
                let last = backend.last_probe.as_ref()?;
                let seconds = seconds_from_micros(last.latency_us);
                Some((labels(vip, backend), ConstGauge::new(seconds)))
            }),
        )?;
        family(
            encoder,
            "failover_probes",
            "Probe attempts since the daemon started.",
            None,
            self.each_backend()
                .map(|(vip, backend)| (labels(vip, backend), ConstCounter::new(backend.probes))),
        )?;
        family(
            encoder,
            "failover_probe_failures",
            "Failed probe attempts since the daemon started.",
            None,
            self.each_backend().map(|(vip, backend)| {
                (
                    labels(vip, backend),
                    ConstCounter::new(backend.probe_failures),
                )
            }),
        )
    }

    fn failovers(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let failovers = &self.status.failovers;
        single(
            encoder,
            "failover_failovers",
            "Backend health transitions applied to the maps.",
            None,
            ConstCounter::new(failovers.count),
        )?;
        // The controller keeps cumulative counts; the encoder wants each bucket's own.
        let mut below = 0;
        let buckets = failovers
            .latency_buckets
            .iter()
            .map(|(bound_us, cumulative)| {
                let own = cumulative.saturating_sub(below);
                below = *cumulative;
                (seconds_from_micros(*bound_us), own)
            })
            .collect();
        single(
            encoder,
            "failover_failover_latency",
            "Time from a probe verdict to the affected VIPs' tables being published.",
            Some(&Unit::Seconds),
            ConstHistogram {
                sum: seconds_from_micros(failovers.latency_sum_us),
                count: failovers.count,
                buckets,
            },
        )
    }

    fn reasons(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        family(
            encoder,
            "failover_packets",
            "Packets by the data plane's verdict reason (events included), all CPUs.",
            None,
            self.traffic
                .reasons
                .iter()
                .enumerate()
                .map(|(reason, counter)| {
                    // A reason newer than this build's names is labelled with its number.
                    let reason = REASON_NAMES.get(reason).map_or_else(
                        || Cow::Owned(reason.to_string()),
                        |name| Cow::Borrowed(*name),
                    );
                    (ReasonLabels { reason }, ConstCounter::new(counter.packets))
                }),
        )
    }

    /// The VRRP groups: state (one sample per state, 1 for the current one), priority,
    /// ownership, adverts, transitions to master and discarded adverts by reason.
    fn elections(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        const STATES: [&str; 4] = ["initialize", "backup", "master", "fault"];
        let elections = &self.status.elections;
        family(
            encoder,
            "failover_election_state",
            "1 for the state the VRRP group is in (initialize, backup, master, fault), 0 for the others.",
            None,
            elections.iter().flat_map(|election| {
                STATES.iter().map(move |state| {
                    (GroupStateLabels { group: &election.name, state }, ConstGauge::new(i64::from(election.state == *state)))
                })
            }),
        )?;
        family(
            encoder,
            "failover_election_priority",
            "The priority the group advertises (after tracks and the operator's override).",
            None,
            elections.iter().map(|election| (group_labels(election), ConstGauge::new(i64::from(election.effective_priority)))),
        )?;
        family(
            encoder,
            "failover_election_owned",
            "1 while this node holds the ownership of the group's VIPs in the data plane.",
            None,
            elections.iter().map(|election| (group_labels(election), ConstGauge::new(i64::from(election.owned)))),
        )?;
        family(
            encoder,
            "failover_election_master_transitions",
            "Transitions of the group to master.",
            None,
            elections.iter().map(|election| (group_labels(election), ConstCounter::new(election.counters.master_transitions))),
        )?;
        family(
            encoder,
            "failover_election_adverts_received",
            "Valid adverts received from other nodes.",
            None,
            elections.iter().map(|election| (group_labels(election), ConstCounter::new(election.counters.adverts_received))),
        )?;
        family(
            encoder,
            "failover_election_adverts_sent",
            "Adverts sent (priority 0 included).",
            None,
            elections.iter().map(|election| (group_labels(election), ConstCounter::new(election.counters.adverts_sent))),
        )?;
        family(
            encoder,
            "failover_election_rx_errors",
            "Received adverts discarded, by reason (RFC 6527 names where it has one).",
            None,
            elections.iter().flat_map(|election| {
                Discard::ALL.iter().map(move |reason| {
                    let count = election.counters.discarded.get(reason.name()).copied().unwrap_or(0);
                    (GroupReasonLabels { group: &election.name, reason: reason.name() }, ConstCounter::new(count))
                })
            }),
        )
    }

    /// Flow sync, when configured: the flows sent, what became of those received, discards.
    fn flow_sync(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let Some(sync) = &self.status.flow_sync else { return Ok(()) };
        single(encoder, "failover_flow_sync_sending", "Flows this node sends each interval (the exceptions of the groups it serves).", None, ConstGauge::new(sync.sending as i64))?;
        single(encoder, "failover_flow_sync_sent_records", "Flow records sent to the peers.", None, ConstCounter::new(sync.sent_records))?;
        single(encoder, "failover_flow_sync_send_queue_full", "Intervals whose datagrams did not fit the send queue.", None, ConstCounter::new(sync.send_queue_full))?;
        single(encoder, "failover_flow_sync_received_records", "Flow records received from the peers.", None, ConstCounter::new(sync.received_records))?;
        family(
            encoder,
            "failover_flow_sync_placed",
            "Received flow records by outcome (new, moved, refreshed: placed; the others not).",
            None,
            sync.placed.iter().map(|(outcome, count)| (OutcomeLabels { outcome }, ConstCounter::new(*count))),
        )?;
        single(encoder, "failover_flow_sync_expired", "Flows a peer's complete set no longer named, forgotten here.", None, ConstCounter::new(sync.expired))?;
        family(
            encoder,
            "failover_flow_sync_rx_errors",
            "Received datagrams discarded, by reason.",
            None,
            sync.discarded.iter().map(|(reason, count)| (DiscardLabels { reason }, ConstCounter::new(*count))),
        )
    }

    /// Announcements: whether each VIP's route is in the announce table, and withdrawals.
    fn announcements(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        family(
            encoder,
            "failover_vip_announced",
            "1 while this node announces the VIP (its route is in the announce table).",
            None,
            self.status.vips.iter().map(|vip| (VipLabels { vip: &vip.name }, ConstGauge::new(i64::from(vip.announced)))),
        )?;
        single(
            encoder,
            "failover_announce_withdrawals",
            "Announced VIP addresses withdrawn since the daemon started.",
            None,
            ConstCounter::new(self.status.withdrawals),
        )
    }

    /// Every backend with its VIP, in status order.
    fn each_backend(&self) -> impl Iterator<Item = (&VipStatus, &BackendStatus)> {
        self.status
            .vips
            .iter()
            .flat_map(|vip| vip.backends.iter().map(move |backend| (vip, backend)))
    }

    /// A gauge with one sample per backend.
    fn backend_gauge(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: fn(&BackendStatus) -> i64,
    ) -> fmt::Result {
        family(
            encoder,
            name,
            help,
            None,
            self.each_backend()
                .map(|(vip, backend)| (labels(vip, backend), ConstGauge::new(value(backend)))),
        )
    }
}

fn group_labels(election: &ElectionStatus) -> GroupLabels<'_> {
    GroupLabels { group: &election.name }
}

fn labels<'a>(vip: &'a VipStatus, backend: &'a BackendStatus) -> BackendLabels<'a> {
    BackendLabels {
        vip: &vip.name,
        backend: &backend.address,
    }
}

/// A family's `# HELP` and `# TYPE` lines, then one sample per label set. The lines are written
/// also when there is no sample, so the metric names are always known.
///
/// `name` is the base name: the encoder appends the unit (`_seconds`) and, for counters,
/// `_total`.
fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, unit, M::TYPE)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family with one sample and no labels.
fn single<M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: M,
) -> fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, unit, M::TYPE)?)
}

/// An info family (`<name>_info`, a gauge at 1 in the text format) with one sample per label set.
fn info<L: EncodeLabelSet + Clone + Eq + std::hash::Hash>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label_sets: impl IntoIterator<Item = L>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Info)?;
    for labels in label_sets {
        // The info metric carries its labels; the family adds none.
        let none: [(&str, &str); 0] = [];
        Info::new(labels).encode(family.encode_family(&none)?)?;
    }
    Ok(())
}

/// A histogram counted elsewhere (the controller keeps it in the status).
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    /// (upper bound, observations in this bucket only); `+Inf` is added with `count`.
    buckets: Vec<(f64, u64)>,
}

impl TypedMetric for ConstHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn seconds_from_micros(micros: u64) -> f64 {
    micros as f64 / 1e6
}

fn seconds_from_millis(millis: u64) -> f64 {
    millis as f64 / 1e3
}

#[cfg(test)]
mod tests;
