//! Verdict to published table: the controller's failover path, measured in-process on a loaded
//! data plane through the same `Controller::apply_verdict` the probe results go through.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use failover_ctl::{
    config,
    daemon::{
        controller::{Controller, Links, Message, Start},
        events::EventLog,
        status::Status,
    },
    loader::{Dataplane, LoadOptions},
};
use tokio::sync::mpsc;

use super::{
    report::ControlRow,
    statistics::{median, percentile},
};

const BACKENDS: usize = 100;
const ROUNDS: usize = 400;
/// The target for the verdict-to-published latency, p99.
const TARGET_US: f64 = 1000.0;
/// How long the tables one verdict away may take to be ready before the rounds start (100
/// builds on a niced thread; a daemon that has run for a while has them).
const WARM_UP_LIMIT: Duration = Duration::from_secs(60);

fn configuration() -> String {
    let mut text = String::from(
        "instance = \"bench\"\ninterfaces = [\"lo\"]\n[next_hop]\nmac = \"02:00:00:00:00:02\"\n[tunnel]\nsource_v4 = \"10.250.0.0/24\"\n[flows]\ncapacity = 4096\n[probe_defaults]\ninterval = \"1m\"\ntimeout = \"1s\"\n[[vip]]\nname = \"web\"\naddress = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\n",
    );
    for index in 0..BACKENDS {
        text.push_str(&format!(
            "[[vip.backend]]\naddress = \"10.200.{}.{}\"\nprobe = {{ kind = \"exec\", argv = [\"/bin/false\"] }}\n",
            index / 250,
            index % 250 + 1
        ));
    }
    text
}

/// Flips backends down and up through the state owner and times each verdict until its VIP's
/// table is published (and, separately, until the health bit is written).
pub fn verdict_to_publish() -> Result<(Vec<ControlRow>, String)> {
    let config = config::parse(&configuration(), "bench.toml").context("the benchmark configuration")?;
    let directory = std::env::temp_dir().join(format!("failover-bench-{}", std::process::id()));
    std::fs::create_dir_all(&directory)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let (probe_sender, mut probe_receiver) = mpsc::channel(4096);
    runtime.spawn(async move { while probe_receiver.recv().await.is_some() {} });
    let dataplane = Dataplane::load(LoadOptions { flow_entries: 4096, ..LoadOptions::default() })
        .context("loading the data plane (needs root)")?;
    let links = Box::new(|_: &mut Dataplane, _: &config::Config| {
        Ok(Links { interfaces: Vec::new(), interface_mac: [2, 0, 0, 0, 0, 1], next_hop_mac: [2, 0, 0, 0, 0, 2] })
    });
    let mut controller = Controller::start(Start {
        dataplane,
        config_path: directory.join("bench.toml"),
        config,
        links,
        adopted: false,
        events: EventLog::open(&directory.join("events.jsonl"))?,
        state_path: directory.join("state.json"),
        shared: Arc::new(Mutex::new(Status::default())),
        probe_sender,
        runtime: runtime.handle().clone(),
        previous: None,
        elections: None,
        announcing: None,
        flow_sync: None,
    })?;
    let ids = controller.backend_ids("web");
    for id in &ids {
        controller.apply_verdict(*id, true, 0, "benchmark", Instant::now());
    }
    let warm_up = Instant::now();
    while controller.ready_tables_pending() {
        if warm_up.elapsed() > WARM_UP_LIMIT {
            bail!("the ready failover tables took over {WARM_UP_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let warm_up = warm_up.elapsed();
    let (mut published, mut health, mut built, mut written) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let id = ids[round % ids.len()];
        for up in [false, true] {
            let before = controller.table_slots_written();
            let timings = controller
                .apply_verdict(id, up, 0, "benchmark", Instant::now())
                .context("a verdict changed nothing")?;
            published.push(timings.table_published_us as f64);
            health.push(timings.health_written_us as f64);
            written.push((controller.table_slots_written() - before) as f64);
            if timings.table != "ready" {
                built.push(timings.table_published_us as f64);
            }
        }
        // The daemon's once-a-second tick reclaims retired table regions.
        if round % 10 == 9 {
            controller.handle(Message::Tick);
        }
    }
    controller.handle(Message::Shutdown);
    drop(controller);
    drop(runtime);
    let _ = std::fs::remove_dir_all(&directory);
    published.sort_by(f64::total_cmp);
    health.sort_by(f64::total_cmp);
    built.sort_by(f64::total_cmp);
    written.sort_by(f64::total_cmp);
    // Publications that wrote less than a table: into a standby whose content was known.
    let patched: Vec<f64> = written.iter().copied().filter(|slots| *slots < 65537.0).collect();
    let built_detail = if built.is_empty() {
        "none built".to_string()
    } else {
        format!("{} built: median {:.0} us, max {:.0} us", built.len(), median(&mut built.clone()), built[built.len() - 1])
    };
    let p99 = percentile(&published, 0.99);
    let rows = vec![
        ControlRow {
            scenario: "verdict_to_published_p99".into(),
            method: "Controller::apply_verdict, wall clock".into(),
            value: p99,
            unit: "us",
            min: published[0],
            max: *published.last().unwrap_or(&0.0),
            runs: published.len(),
            verdict: Some(p99 <= TARGET_US),
            target: Some(format!("<= {TARGET_US} us")),
            detail: format!(
                "{BACKENDS} backends, 65537 slots; median {:.0} us; health bit p99 {:.0} us (median {:.0} us); {} of {} tables ready, {built_detail}; slots written per publication: median {:.0}, max {:.0} ({} into a reused standby, median {:.0}: the others went to a fresh region while the standby waited for its grace period); tables ready {:.1} s after start",
                median(&mut published.clone()),
                percentile(&health, 0.99),
                median(&mut health.clone()),
                published.len() - built.len(),
                published.len(),
                median(&mut written.clone()),
                written.last().copied().unwrap_or(0.0),
                patched.len(),
                if patched.is_empty() { 0.0 } else { median(&mut patched.clone()) },
                warm_up.as_secs_f64()
            ),
        },
    ];
    let note = format!(
        "verdict_to_published: {ROUNDS} backends of a {BACKENDS}-backend VIP taken down and brought back ({} verdicts) through the controller's own failover path on a loaded (unattached) data plane: health bit written, then the VIP's table (the ready one the worker prepared after the previous publication, or a fresh Maglev build when none is ready) written into an inactive pool region (only the slots that differ when the region's content is known) and switched in; the value is the p99 of verdict-to-published wall-clock time (to the VIPS switch). The rounds start once the tables one verdict away from the all-up state are ready, as in a daemon that has run for a while. Retired regions are reclaimed every 10 rounds as the daemon's tick does. Load average when done: {}.",
        published.len(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    Ok((rows, note))
}
