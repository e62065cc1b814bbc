//! The scale-out lab's summary: one row per phase (what was done, the time measured, the
//! router's next hops at the end, flows that changed node, connections broken, requests
//! failed, and the checks that failed), printed as a table or as one JSON object per phase.

use serde_json::{json, Map, Value};

use super::network::names;
use crate::lab::traffic::Snapshot;

/// One phase of the demonstration.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// "1" to "6b".
    pub phase: &'static str,
    pub what: String,
    /// The times measured, as the table shows them.
    pub time: String,
    /// The router's next hops for the VIP at the end of the phase.
    pub next_hops: Vec<usize>,
    /// Long-lived connections that changed node, of those seen before and after.
    pub moved: Option<(usize, usize)>,
    /// The traffic of the phase's window.
    pub window: Snapshot,
    /// The measurements, for `--json`.
    pub measured: Map<String, Value>,
    /// The checks that did not hold, one sentence each.
    pub failures: Vec<String>,
}

impl Row {
    pub fn new(phase: &'static str, what: impl Into<String>) -> Self {
        Self {
            phase,
            what: what.into(),
            ..Self::default()
        }
    }

    /// Records a check: `failure` when `held` is false.
    pub fn check(&mut self, held: bool, failure: impl FnOnce() -> String) {
        if !held {
            self.failures.push(failure());
        }
    }

    /// Records a measurement for `--json`.
    pub fn measure(&mut self, name: &str, value: impl Into<Value>) {
        self.measured.insert(name.into(), value.into());
    }

    /// Fails the row unless the router's next hops `found` are exactly `expected`.
    pub fn check_next_hops(&mut self, found: &[usize], expected: &[usize]) {
        self.check(found == expected, || format!("the router's next hops are {}, expected {}", names(found), names(expected)));
    }

    /// Fails the row if a short request failed during the phase.
    pub fn check_no_failed_requests(&mut self) {
        let failed = self.window.failed;
        self.check(failed == 0, || format!("{failed} short requests failed, expected none"));
    }

    /// Appends to the table's time column.
    pub fn time(&mut self, text: impl AsRef<str>) {
        if !self.time.is_empty() {
            self.time.push_str("; ");
        }
        self.time.push_str(text.as_ref());
    }
}

/// Milliseconds with one decimal, from microseconds.
pub fn ms(us: u64) -> f64 {
    (us as f64 / 100.0).round() / 10.0
}

/// The summary table, one line per phase, then the legend.
pub fn table(rows: &[Row]) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<3} {:<34} {:<46} {:<12} {:>6} {:>6} {:>6}  {}",
        "", "what", "time measured", "next hops", "moved", "broken", "failed", "result"
    )];
    for row in rows {
        let moved = row
            .moved
            .map_or("-".into(), |(moved, of)| format!("{moved}/{of}"));
        lines.push(format!(
            "{:<3} {:<34} {:<46} {:<12} {:>6} {:>6} {:>6}  {}",
            row.phase,
            row.what,
            row.time,
            names(&row.next_hops),
            moved,
            row.window.broken,
            row.window.failed,
            if row.failures.is_empty() {
                "ok"
            } else {
                "FAIL"
            }
        ));
    }
    lines.push("next hops: the router's multipath route to the VIP at the end of the phase; moved: long-lived connections whose node (the router's ECMP choice) changed, of those open before and after; broken: long-lived connections that failed or changed backend; failed: short requests that failed.".into());
    lines
}

/// One JSON object per phase.
pub fn json_lines(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .map(|row| {
            let mut object = json!({
                "phase": row.phase,
                "what": row.what,
                "next_hops": row.next_hops.iter().map(|&index| crate::lab::topology::lb_name(index)).collect::<Vec<_>>(),
                "flows_moved": row.moved.map(|(moved, _)| moved),
                "flows_compared": row.moved.map(|(_, of)| of),
                "broken": row.window.broken,
                "failed": row.window.failed,
                "ok": row.window.ok(),
                "passed": row.failures.is_empty(),
                "failures": row.failures,
            });
            if let Value::Object(fields) = &mut object {
                fields.extend(row.measured.clone());
            }
            object.to_string()
        })
        .collect()
}

/// Every failed check, named by its phase.
pub fn failed_checks(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .flat_map(|row| {
            row.failures
                .iter()
                .map(move |failure| format!("phase {} ({}): {failure}", row.phase, row.what))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        let mut announce = Row::new("1", "announce, 2 nodes");
        announce.time("lb1 12.0 ms");
        announce.time("lb2 40.5 ms");
        announce.next_hops = vec![0, 1];
        announce.measure("announce_ms", json!({"lb1": 12.0, "lb2": 40.5}));
        let mut withdraw = Row::new("2", "backends unreachable from lb1");
        withdraw.next_hops = vec![1];
        withdraw.moved = Some((5, 12));
        withdraw.window.broken = 1;
        withdraw.check(withdraw.window.broken == 0, || {
            "1 connections broken".into()
        });
        withdraw.check(true, || unreachable!());
        vec![announce, withdraw]
    }

    #[test]
    fn table_and_checks() {
        let rows = rows();
        let lines = table(&rows);
        assert!(
            lines[1].contains("lb1 12.0 ms; lb2 40.5 ms"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with("ok"), "{}", lines[1]);
        assert!(lines[2].contains(" 5/12 "), "{}", lines[2]);
        assert!(lines[2].ends_with("FAIL"), "{}", lines[2]);
        assert_eq!(
            failed_checks(&rows),
            ["phase 2 (backends unreachable from lb1): 1 connections broken"]
        );
        assert_eq!(ms(12_345), 12.3);
    }

    #[test]
    fn json_has_one_object_per_phase() {
        let lines = json_lines(&rows());
        assert_eq!(lines.len(), 2);
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["phase"], "1");
        assert_eq!(first["next_hops"], json!(["lb1", "lb2"]));
        assert_eq!(first["announce_ms"]["lb2"], 40.5);
        assert_eq!(first["passed"], true);
        assert!(first["flows_moved"].is_null());
        let second: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(
            (
                second["flows_moved"].as_u64(),
                second["flows_compared"].as_u64()
            ),
            (Some(5), Some(12))
        );
        assert_eq!(second["passed"], false);
    }
}
