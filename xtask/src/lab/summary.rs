//! The lab's summary: one row per phase (steady, each fault), the table printed at the end, and
//! the checks that make `cargo xtask lab` fail when what it demonstrates did not hold.
//!
//! The checks are chosen to hold on a loaded 2-core machine: counts of failed requests where
//! the design promises none (steady state, drain, undrain, the daemon killed and restarted),
//! every backend serving in the steady state, and the daemon's events within a generous
//! timeout. Requests to a backend that is killed do fail until detection, so that phase is
//! only checked for the detection itself.

use super::{topology::backend_name, traffic::Snapshot};

/// What a row measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Steady,
    /// Steady traffic with the router sending the VIP straight to backend1 (no daemon).
    SteadyWithoutDaemon,
    KillBackend,
    RestartBackend,
    Drain,
    Undrain,
    KillDaemon,
}

/// One row of the summary.
#[derive(Debug, Clone)]
pub struct Row {
    pub phase: Phase,
    pub fault: String,
    /// Fault to the daemon's event, ms; `None` when no event came.
    pub detection: Option<u64>,
    /// Verdict to published table, µs (from the event's timings).
    pub published: Option<u64>,
    /// Short requests answered and failed, established connections broken, in the window.
    pub window: Snapshot,
    pub note: String,
}

impl Row {
    pub fn new(phase: Phase, fault: impl Into<String>) -> Self {
        Self {
            phase,
            fault: fault.into(),
            detection: None,
            published: None,
            window: Snapshot::default(),
            note: String::new(),
        }
    }
}

pub fn print_rows(rows: &[Row]) {
    println!(
        "{:<20} {:>10} {:>11} {:>8} {:>8} {:>7}  note",
        "fault", "detection", "published", "ok", "failed", "broken"
    );
    for row in rows {
        let detection = row.detection.map_or("-".into(), |ms| format!("{ms} ms"));
        let published = row
            .published
            .map_or("-".into(), |us| format!("{:.2} ms", us as f64 / 1000.0));
        println!(
            "{:<20} {:>10} {:>11} {:>8} {:>8} {:>7}  {}",
            row.fault,
            detection,
            published,
            row.window.ok(),
            row.window.failed,
            row.window.broken,
            row.note
        );
    }
    println!("detection: fault to the daemon's event; published: verdict to the VIP's table published (daemon's timings); ok/failed: short requests; broken: established keep-alive connections that failed or changed backend.");
}

/// What a phase promises.
struct Promise {
    /// No short request fails in the window.
    no_failed_requests: bool,
    /// Every backend answers some short request in the window.
    every_backend_serves: bool,
    /// The daemon reports this event (the row has a detection time).
    event: Option<&'static str>,
}

impl Phase {
    fn promise(self) -> Promise {
        let promise = |no_failed_requests, every_backend_serves, event| Promise {
            no_failed_requests,
            every_backend_serves,
            event,
        };
        match self {
            Phase::Steady => promise(true, true, None),
            Phase::SteadyWithoutDaemon => promise(true, false, None),
            // Requests sent to the killed backend fail until the daemon notices: not checked.
            Phase::KillBackend => promise(false, false, Some("the killed backend down")),
            Phase::RestartBackend => promise(false, false, Some("the restarted backend up")),
            Phase::Drain => promise(true, false, Some("the drain")),
            Phase::Undrain => promise(true, false, Some("the undrain")),
            Phase::KillDaemon => promise(true, false, Some("the restarted daemon taking over")),
        }
    }
}

/// The checks that failed, one sentence each naming its phase; empty when the run showed what
/// it claims.
pub fn failed_checks(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .flat_map(|row| {
            broken_promises(row)
                .into_iter()
                .map(move |what| format!("{}: {what}", row.fault))
        })
        .collect()
}

fn broken_promises(row: &Row) -> Vec<String> {
    let promise = row.phase.promise();
    let mut broken = Vec::new();
    if promise.no_failed_requests && row.window.failed > 0 {
        broken.push(format!(
            "{} requests failed, expected none",
            row.window.failed
        ));
    }
    if promise.every_backend_serves {
        let idle: Vec<String> = (0..row.window.answered.len())
            .filter(|&index| row.window.answered[index] == 0)
            .map(backend_name)
            .collect();
        if !idle.is_empty() {
            broken.push(format!("{} served no request", idle.join(", ")));
        }
    }
    if let Some(event) = promise.event {
        if row.detection.is_none() {
            broken.push(format!("the daemon never reported {event}"));
        }
    }
    broken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(phase: Phase, answered: [u64; 3], failed: u64, detection: Option<u64>) -> Row {
        Row {
            detection,
            window: Snapshot {
                answered,
                failed,
                ..Snapshot::default()
            },
            ..Row::new(phase, format!("{phase:?}"))
        }
    }

    fn good_run() -> Vec<Row> {
        vec![
            row(Phase::Steady, [100, 100, 100], 0, None),
            // Requests sent to the killed backend before detection fail: allowed.
            row(Phase::KillBackend, [150, 0, 150], 14, Some(300)),
            row(Phase::RestartBackend, [100, 100, 100], 0, Some(320)),
            row(Phase::Drain, [150, 150, 0], 0, Some(6)),
            row(Phase::Undrain, [100, 100, 100], 0, Some(4)),
            row(Phase::KillDaemon, [150, 150, 150], 0, Some(171)),
        ]
    }

    #[test]
    fn a_run_that_held_passes() {
        assert_eq!(failed_checks(&good_run()), Vec::<String>::new());
    }

    #[test]
    fn each_broken_promise_is_named() {
        let mut rows = good_run();
        rows[0].window.answered[2] = 0;
        rows[0].window.failed = 2;
        rows[1].detection = None;
        rows[3].window.failed = 1;
        rows[5].window.failed = 3;
        let failures = failed_checks(&rows);
        assert_eq!(
            failures,
            [
                "Steady: 2 requests failed, expected none",
                "Steady: backend3 served no request",
                "KillBackend: the daemon never reported the killed backend down",
                "Drain: 1 requests failed, expected none",
                "KillDaemon: 3 requests failed, expected none",
            ]
        );
    }

    #[test]
    fn without_the_daemon_only_failures_count() {
        let rows = [row(Phase::SteadyWithoutDaemon, [300, 0, 0], 0, None)];
        assert!(failed_checks(&rows).is_empty());
    }
}
