//! `stats`: the data plane's counters by reason, VIP and backend; with `--watch`, again at a
//! fixed cadence with rates.

use std::time::{Duration, Instant};

use anyhow::bail;
use failover_common::{
    maps::{Backend, Counter, VipKey, VipMeta},
    stats::REASON_NAMES,
};
use serde::Serialize;

use super::{
    instance::{open, sorted_vips, vip_ref, State, VipRef},
    render::{emit, human_bytes, ip, round2, utc, Table},
    Target,
};
use crate::{daemon::status::now_millis, pin::PinnedView};


/// One reading of every counter.
struct Sample {
    at: Instant,
    wall: u64,
    reasons: Vec<Counter>,
    vips: Vec<(VipKey, VipMeta, Counter)>,
    backends: Vec<(u32, Backend, Counter)>,
}

impl Sample {
    fn take(view: &PinnedView) -> anyhow::Result<Self> {
        let counters = view.counters();
        let vips = sorted_vips(view)?
            .into_iter()
            .map(|(key, meta)| Ok((key, meta, counters.vip(meta.vip_id)?)))
            .collect::<anyhow::Result<_>>()?;
        let backends = view
            .backends()?
            .into_iter()
            .map(|(id, backend, _)| Ok((id, backend, counters.backend(id)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { at: Instant::now(), wall: now_millis(), reasons: counters.reasons()?, vips, backends })
    }
}

#[derive(Serialize)]
struct CounterRow {
    packets: u64,
    bytes: u64,
    /// Per second since the previous print (`--watch` only, not on the first).
    packets_per_second: Option<f64>,
    bytes_per_second: Option<f64>,
}

#[derive(Serialize)]
struct ReasonRow {
    reason: &'static str,
    index: usize,
    #[serde(flatten)]
    counter: CounterRow,
}

#[derive(Serialize)]
struct VipCounterRow {
    vip: VipRef,
    #[serde(flatten)]
    counter: CounterRow,
}

#[derive(Serialize)]
struct BackendCounterRow {
    vip: String,
    vip_id: u32,
    id: u32,
    address: String,
    #[serde(flatten)]
    counter: CounterRow,
}

#[derive(Serialize)]
struct StatsView {
    at: String,
    interval_seconds: Option<f64>,
    reasons: Vec<ReasonRow>,
    vips: Vec<VipCounterRow>,
    backends: Vec<BackendCounterRow>,
}

fn counter_row(now: Counter, before: Option<Counter>, seconds: Option<f64>) -> CounterRow {
    let rate = |now: u64, before: u64| {
        seconds.filter(|seconds| *seconds > 0.0).map(|seconds| now.saturating_sub(before) as f64 / seconds)
    };
    CounterRow {
        packets: now.packets,
        bytes: now.bytes,
        packets_per_second: before.and_then(|before| rate(now.packets, before.packets)).map(round2),
        bytes_per_second: before.and_then(|before| rate(now.bytes, before.bytes)).map(round2),
    }
}

fn stats_view(state: &State, sample: &Sample, previous: Option<&Sample>) -> StatsView {
    let seconds = previous.map(|previous| sample.at.duration_since(previous.at).as_secs_f64());
    let reasons = sample
        .reasons
        .iter()
        .enumerate()
        .map(|(index, counter)| ReasonRow {
            reason: REASON_NAMES.get(index).copied().unwrap_or("unknown"),
            index,
            counter: counter_row(*counter, previous.and_then(|previous| previous.reasons.get(index).copied()), seconds),
        })
        .collect();
    let vips = sample
        .vips
        .iter()
        .map(|(key, meta, counter)| {
            let before = previous
                .and_then(|previous| previous.vips.iter().find(|(k, m, _)| k == key && m.vip_id == meta.vip_id))
                .map(|(_, _, c)| *c);
            VipCounterRow { vip: vip_ref(state, key, meta), counter: counter_row(*counter, before, seconds) }
        })
        .collect();
    let backends = sample
        .backends
        .iter()
        .map(|(id, backend, counter)| {
            let before = previous
                .and_then(|previous| previous.backends.iter().find(|(i, b, _)| i == id && b == backend))
                .map(|(_, _, c)| *c);
            BackendCounterRow {
                vip: state.vip_name(backend.vip_id),
                vip_id: backend.vip_id,
                id: *id,
                address: ip(&backend.address, backend.family),
                counter: counter_row(*counter, before, seconds),
            }
        })
        .collect();
    StatsView {
        at: utc(sample.wall),
        interval_seconds: seconds.map(|seconds| (seconds * 1000.0).round() / 1000.0),
        reasons,
        vips,
        backends,
    }
}

fn render_stats(report: &StatsView) -> String {
    let rates = report.interval_seconds.is_some();
    let columns = |first: &'static [&'static str]| -> Vec<&'static str> {
        let mut columns = first.to_vec();
        columns.extend([">PACKETS", ">BYTES"]);
        if rates {
            columns.extend([">PKT/S", ">BYTES/S"]);
        }
        columns
    };
    let cells = |counter: &CounterRow| -> Vec<String> {
        let mut cells = vec![counter.packets.to_string(), human_bytes(counter.bytes as f64)];
        if rates {
            cells.push(counter.packets_per_second.map_or_else(|| "-".into(), |rate| format!("{rate:.1}")));
            cells.push(counter.bytes_per_second.map_or_else(|| "-".into(), |rate| format!("{}/s", human_bytes(rate))));
        }
        cells
    };
    let mut text = match report.interval_seconds {
        Some(seconds) => format!("== {} (rates over {seconds:.3} s)\n", report.at),
        None => format!("== {}\n", report.at),
    };
    let mut reasons = Table::new(&columns(&["REASON"]));
    for row in &report.reasons {
        let mut line = vec![row.reason.to_string()];
        line.extend(cells(&row.counter));
        reasons.row(line);
    }
    text.push_str(&reasons.render());
    text.push('\n');
    if report.vips.is_empty() {
        text.push_str("no VIPs published\n");
    } else {
        let mut vips = Table::new(&columns(&["VIP", "ADDRESS", ">ID"]));
        for row in &report.vips {
            let mut line = vec![
                row.vip.name.clone().unwrap_or_else(|| format!("#{}", row.vip.vip_id)),
                row.vip.address.clone(),
                row.vip.vip_id.to_string(),
            ];
            line.extend(cells(&row.counter));
            vips.row(line);
        }
        text.push_str(&vips.render());
    }
    text.push('\n');
    if report.backends.is_empty() {
        text.push_str("no backends\n");
    } else {
        let mut backends = Table::new(&columns(&["VIP", "BACKEND", ">ID"]));
        for row in &report.backends {
            let mut line = vec![row.vip.clone(), row.address.clone(), row.id.to_string()];
            line.extend(cells(&row.counter));
            backends.row(line);
        }
        text.push_str(&backends.render());
    }
    text
}

/// Prints the counters; with `watch`, again every interval with rates, `count` times in all
/// (until interrupted without `count`).
pub fn stats(target: &Target, watch: Option<Duration>, count: Option<u64>) -> anyhow::Result<()> {
    if count == Some(0) {
        bail!("--count 0: expected at least 1");
    }
    let view = open(&target.paths)?;
    let state = State::read(&target.paths);
    state.warn();
    let prints = match watch {
        None => 1,
        Some(_) => count.unwrap_or(u64::MAX),
    };
    let mut previous: Option<Sample> = None;
    let mut printed = 0;
    let start = Instant::now();
    loop {
        let sample = Sample::take(&view)?;
        let report = stats_view(&state, &sample, previous.as_ref());
        if target.json {
            // One object per line under --watch, so a consumer can read the stream.
            let mut line =
                if watch.is_some() { serde_json::to_string(&report)? } else { serde_json::to_string_pretty(&report)? };
            line.push('\n');
            emit(&line)?;
        } else {
            let mut text = render_stats(&report);
            if watch.is_some() && printed + 1 < prints {
                text.push('\n');
            }
            emit(&text)?;
        }
        printed += 1;
        previous = Some(sample);
        let Some(interval) = watch else { break };
        if printed >= prints {
            break;
        }
        // Fixed cadence: sleep to the next multiple of the interval, not interval after the print.
        let next = start + interval.mul_f64(printed as f64);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(())
}
