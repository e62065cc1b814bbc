//! Verdict to published table: the controller's failover path, measured in-process on a loaded
//! data plane through the same `Controller::apply_verdict` the probe results go through.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context as _, Result};
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
    })?;
    let ids = controller.backend_ids("web");
    for id in &ids {
        controller.apply_verdict(*id, true, 0, "benchmark", Instant::now());
    }
    let (mut published, mut health) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let id = ids[round % ids.len()];
        for up in [false, true] {
            let timings = controller
                .apply_verdict(id, up, 0, "benchmark", Instant::now())
                .context("a verdict changed nothing")?;
            published.push(timings.table_published_us as f64);
            health.push(timings.health_written_us as f64);
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
                "{BACKENDS} backends, 65537 slots; median {:.0} us; health bit p99 {:.0} us (median {:.0} us)",
                median(&mut published.clone()),
                percentile(&health, 0.99),
                median(&mut health.clone())
            ),
        },
    ];
    let note = format!(
        "verdict_to_published: {ROUNDS} backends of a {BACKENDS}-backend VIP taken down and brought back ({} verdicts) through the controller's own failover path on a loaded (unattached) data plane: health bit written, Maglev table rebuilt, written into an inactive pool region and switched in; the value is the p99 of verdict-to-published wall-clock time. Retired regions are reclaimed every 10 rounds as the daemon's tick does.",
        published.len()
    );
    Ok((rows, note))
}
