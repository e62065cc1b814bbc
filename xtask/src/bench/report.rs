//! The results: one row per (scenario, method, program), printed as a table or as one JSON object per line; the JIT counts likewise.

use serde_json::json;

use super::jit::Function;

pub struct Row {
    pub scenario: &'static str,
    pub method: &'static str,
    /// `current` (this tree) or `against` (`--against REV`); `None` for the floor, which is
    /// neither.
    pub program: Option<&'static str>,
    /// CPUs sending frames at once.
    pub cpus: usize,
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
    /// With `--against`: the median over rounds of (this tree's ns/packet / REV's) in the same
    /// round, on both programs' rows; below 1 means this tree is faster.
    pub ratio: Option<f64>,
    /// Two-CPU rows: Mpps on two CPUs / Mpps of the same program and scenario on one.
    pub scaling: Option<f64>,
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

/// The data-plane table; the program and this/REV columns only with `--against`, the scaling
/// column only when there are two-CPU rows.
pub fn print_table(rows: &[Row]) {
    let against = rows.iter().any(|row| row.program == Some("against"));
    let scaling = rows.iter().any(|row| row.scaling.is_some());
    let mut header = vec!["scenario"];
    if against {
        header.push("program");
    }
    header.extend(["method", "ns/packet", "Mpps"]);
    if against {
        header.push("this/REV");
    }
    if scaling {
        header.push("scaling");
    }
    header.extend(["target", "verdict", "wall ns/pkt", "min..max ns", "packets x rounds"]);
    let optional = |value: Option<f64>, digits: usize| value.map_or_else(|| "-".to_string(), |value| format!("{value:.digits$}"));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut line = vec![row.scenario.to_string()];
            if against {
                line.push(row.program.unwrap_or("-").to_string());
            }
            line.extend([row.method.to_string(), format!("{:.1}", row.ns_per_packet), format!("{:.2}", row.mpps())]);
            if against {
                line.push(optional(row.ratio, 3));
            }
            if scaling {
                line.push(optional(row.scaling, 2));
            }
            line.extend([
                row.target.clone().unwrap_or_else(|| "-".to_string()),
                row.verdict_word().to_string(),
                format!("{:.1}", row.wall_ns_per_packet),
                format!("{:.0}..{:.0}", row.min_ns, row.max_ns),
                format!("{} x {}", row.packets, row.rounds),
            ]);
            line
        })
        .collect();
    print_grid(&header, &cells);
}

pub fn print_json(rows: &[Row]) {
    for row in rows {
        let object = json!({
            "scenario": row.scenario,
            "program": row.program,
            "cpus": row.cpus,
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
            "ratio": row.ratio,
            "scaling": row.scaling,
        });
        println!("{object}");
    }
}

/// The JIT counts of one program: `current` or `against`.
pub struct JitRows<'a> {
    pub program: &'static str,
    pub functions: &'a [Function],
    pub total: Function,
    pub verified_instructions: u32,
}

pub fn print_jit_table(programs: &[JitRows<'_>]) {
    let header = ["program", "function", "x86 instructions", "JITed bytes", "BPF instructions (xlated)"];
    let mut cells = Vec::new();
    for program in programs {
        for function in program.functions.iter().chain([&program.total]) {
            cells.push(vec![
                program.program.to_string(),
                function.name.clone(),
                function.machine_instructions.map_or_else(|| "-".to_string(), |count| count.to_string()),
                function.jited_bytes.to_string(),
                function.bpf_instructions.to_string(),
            ]);
        }
    }
    print_grid(&header, &cells);
    for program in programs {
        println!("{}: the verifier walked {} instructions", program.program, program.verified_instructions);
    }
}

pub fn print_jit_json(programs: &[JitRows<'_>]) {
    for program in programs {
        for function in program.functions.iter().chain([&program.total]) {
            let object = json!({
                "scenario": "jited",
                "program": program.program,
                "function": function.name,
                "machine_instructions": function.machine_instructions,
                "jited_bytes": function.jited_bytes,
                "bpf_instructions": function.bpf_instructions,
                "verified_instructions": program.verified_instructions,
            });
            println!("{object}");
        }
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
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
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
    print_grid(&header, &cells);
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
fn print_grid(header: &[&str], cells: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for line in cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.len());
        }
    }
    let print = |line: &[String]| {
        let text: Vec<String> = line.iter().zip(&widths).map(|(cell, &width)| format!("{cell:<width$}")).collect();
        println!("{}", text.join("  ").trim_end());
    };
    print(&header.iter().map(|title| title.to_string()).collect::<Vec<_>>());
    print(&widths.iter().map(|&width| "-".repeat(width)).collect::<Vec<_>>());
    for line in cells {
        print(line);
    }
}
