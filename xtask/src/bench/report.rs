//! The results: one row per (scenario, method), printed as a table or as one JSON object per line.

use serde_json::json;

pub struct Row {
    pub scenario: &'static str,
    pub method: &'static str,
    /// Median over the measured rounds of the kernel-reported nanoseconds per packet.
    pub ns_per_packet: f64,
    /// Median of wall-clock nanoseconds per packet (the system call(s) around it).
    pub wall_ns_per_packet: f64,
    pub min_ns: f64,
    pub max_ns: f64,
    pub rounds: usize,
    /// Packets per round.
    pub packets: u32,
    pub target: Option<String>,
    /// `Some(true)` when the target is met.
    pub verdict: Option<bool>,
}

impl Row {
    pub fn mpps(&self) -> f64 {
        if self.ns_per_packet > 0.0 { 1000.0 / self.ns_per_packet } else { f64::INFINITY }
    }

    fn verdict_word(&self) -> &'static str {
        match self.verdict {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "-",
        }
    }
}

pub fn print_table(rows: &[Row]) {
    let header = ["scenario", "method", "ns/packet", "Mpps", "target", "verdict", "wall ns/pkt", "min..max ns", "packets x rounds"];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|row| {
            [
                row.scenario.to_string(),
                row.method.to_string(),
                format!("{:.1}", row.ns_per_packet),
                format!("{:.2}", row.mpps()),
                row.target.clone().unwrap_or_else(|| "-".to_string()),
                row.verdict_word().to_string(),
                format!("{:.1}", row.wall_ns_per_packet),
                format!("{:.0}..{:.0}", row.min_ns, row.max_ns),
                format!("{} x {}", row.packets, row.rounds),
            ]
        })
        .collect();
    print_grid(header, &cells);
}

pub fn print_json(rows: &[Row]) {
    for row in rows {
        let object = json!({
            "scenario": row.scenario,
            "method": row.method,
            "ns_per_packet": row.ns_per_packet,
            "mpps": row.mpps(),
            "wall_ns_per_packet": row.wall_ns_per_packet,
            "min_ns": row.min_ns,
            "max_ns": row.max_ns,
            "rounds": row.rounds,
            "packets_per_round": row.packets,
            "target": row.target,
            "verdict": row.verdict.map(|met| if met { "pass" } else { "miss" }),
        });
        println!("{object}");
    }
}

/// A control-plane result (a Maglev build, the probes' CPU): not per packet, so it has a
/// table of its own, with the unit stated in every row.
pub struct ControlRow {
    pub scenario: String,
    pub method: String,
    /// The reported number: the median over `runs` where there are several.
    pub value: f64,
    pub unit: &'static str,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
    pub target: Option<String>,
    /// `Some(true)` when the target is met.
    pub verdict: Option<bool>,
    /// What else the run saw (rates, counts) that the number depends on.
    pub detail: String,
}

impl ControlRow {
    fn verdict_word(&self) -> &'static str {
        match self.verdict {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "-",
        }
    }
}

pub fn print_control_table(rows: &[ControlRow]) {
    let header = ["scenario", "method", "value", "unit", "target", "verdict", "min..max", "runs", "detail"];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|row| {
            [
                row.scenario.clone(),
                row.method.clone(),
                format!("{:.1}", row.value),
                row.unit.to_string(),
                row.target.clone().unwrap_or_else(|| "-".to_string()),
                row.verdict_word().to_string(),
                format!("{:.1}..{:.1}", row.min, row.max),
                row.runs.to_string(),
                row.detail.clone(),
            ]
        })
        .collect();
    print_grid(header, &cells);
}

pub fn print_control_json(rows: &[ControlRow]) {
    for row in rows {
        let object = json!({
            "scenario": row.scenario,
            "method": row.method,
            "value": row.value,
            "unit": row.unit,
            "min": row.min,
            "max": row.max,
            "runs": row.runs,
            "target": row.target,
            "verdict": row.verdict.map(|met| if met { "pass" } else { "miss" }),
            "detail": row.detail,
        });
        println!("{object}");
    }
}

/// Left-aligned columns as wide as their widest cell, under a header and a rule.
fn print_grid<const N: usize>(header: [&str; N], cells: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for line in cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.len());
        }
    }
    let print = |line: &[String]| {
        let text: Vec<String> = line.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        println!("{}", text.join("  ").trim_end());
    };
    print(&header.map(str::to_string));
    print(&widths.map(|width| "-".repeat(width)));
    for line in cells {
        print(line);
    }
}
