//! From samples to rows: medians over rounds, the same minus the floor, the targets and verdicts, the two-CPU scaling and, with `--against`, the ratio of the two programs round by round.

use anyhow::{Context as _, Result};

use super::{
    measure::{Method, Sample},
    report::Row,
    statistics::median,
};

/// The targets (issue 11): new flow and non-VIP pass judged above the floor.
pub const ESTABLISHED_SHARE_OF_FLOOR: f64 = 0.7;
pub const NEW_FLOW_MAX_NS: f64 = 300.0;
pub const NON_VIP_MAX_NS: f64 = 10.0;
/// A program's two-CPU scaling must be at least this share of the floor's.
pub const SCALING_SHARE_OF_FLOOR: f64 = 0.9;
/// The suffix of the two-CPU scenarios; the rest of the name is the one-CPU scenario.
pub const TWO_CPU_SUFFIX: &str = "_2cpu";

/// Every sample of one (scenario, method, program), in round order.
pub struct Series {
    pub name: &'static str,
    pub method: Method,
    /// `None` for the floor.
    pub program: Option<&'static str>,
    pub cpus: usize,
    /// Packets per round (all CPUs).
    pub packets: u32,
    pub samples: Vec<Sample>,
}

fn row(series: &Series, method: &'static str, mut kernel: Vec<f64>, mut wall: Vec<f64>) -> Row {
    let min_ns = kernel.iter().copied().fold(f64::INFINITY, f64::min);
    let max_ns = kernel.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Row {
        scenario: series.name,
        method,
        program: series.program,
        cpus: series.cpus,
        ns_per_packet: median(&mut kernel),
        wall_ns_per_packet: median(&mut wall),
        min_ns,
        max_ns,
        rounds: kernel.len(),
        packets: series.packets,
        target: None,
        verdict: None,
        ratio: None,
        scaling: None,
    }
}

/// The median over rounds of `own[r] / other[r]`: each round's two numbers were taken moments
/// apart, so slow drift cancels in the quotient.
pub fn paired_ratio(own: &[f64], other: &[f64]) -> Option<f64> {
    let mut ratios: Vec<f64> = own.iter().zip(other).filter(|(_, other)| **other != 0.0).map(|(own, other)| own / other).collect();
    (!ratios.is_empty()).then(|| median(&mut ratios))
}

/// Two-CPU Mpps over one-CPU Mpps.
pub fn scaling(two_cpu_mpps: f64, one_cpu_mpps: f64) -> f64 {
    two_cpu_mpps / one_cpu_mpps
}

/// The two-CPU check: a program scales at least 0.9 x as well as the floor.
pub fn scales_like_the_floor(program: f64, floor: f64) -> bool {
    program >= SCALING_SHARE_OF_FLOOR * floor
}

fn kernel(series: &Series) -> Vec<f64> {
    series.samples.iter().map(|sample| sample.kernel_ns).collect()
}

fn wall(series: &Series) -> Vec<f64> {
    series.samples.iter().map(|sample| sample.wall_ns).collect()
}

/// Per round: the series minus the floor measured the same way moments before it.
fn minus(series: &Series, floor: &Series, value: fn(&Sample) -> f64) -> Vec<f64> {
    series.samples.iter().zip(&floor.samples).map(|(own, floor)| value(own) - value(floor)).collect()
}

fn median_mpps(series: &Series) -> f64 {
    1000.0 / median(&mut kernel(series))
}

/// The rows in scenario order (`order`), for each method: the raw rows of every program, then
/// their minus-floor rows (one-CPU scenarios only).
pub fn rows(order: &[&'static str], series: &[Series], live_method: Method) -> Result<Vec<Row>> {
    let find = |name: &str, method: Method, program: Option<&str>| {
        series.iter().find(|series| series.name == name && series.method == method && series.program == program)
    };
    let floor_live = find("floor", live_method, None).context("the live floor was not measured")?;
    let floor_live_mpps = median_mpps(floor_live);
    let floor_scaling = find(&format!("floor{TWO_CPU_SUFFIX}"), Method::Live, None).map(|two| scaling(median_mpps(two), median_mpps(floor_live)));
    let mut rows = Vec::new();
    for &name in order {
        let mut methods: Vec<Method> = series.iter().filter(|series| series.name == name).map(|series| series.method).collect();
        methods.sort();
        methods.dedup();
        for method in methods {
            let of_method: Vec<&Series> = series.iter().filter(|series| series.name == name && series.method == method).collect();
            let other_program = |series: &Series| {
                let other = match series.program {
                    Some("current") => Some("against"),
                    Some("against") => Some("current"),
                    _ => None,
                }?;
                find(name, method, Some(other))
            };
            // This tree over REV, whichever row it is printed on.
            let ratio_of = |series: &Series, value: &dyn Fn(&Series) -> Vec<f64>| {
                let other = other_program(series)?;
                let (current, against) = if series.program == Some("current") { (series, other) } else { (other, series) };
                paired_ratio(&value(current), &value(against))
            };
            for &series in &of_method {
                let mut raw = row(series, series.method.name(), kernel(series), wall(series));
                raw.ratio = ratio_of(series, &kernel);
                if name.ends_with("_established") {
                    let needed = ESTABLISHED_SHARE_OF_FLOOR * floor_live_mpps;
                    raw.target = Some(format!(">= {ESTABLISHED_SHARE_OF_FLOOR} x floor = {needed:.2} Mpps"));
                    raw.verdict = Some(raw.mpps() >= needed);
                }
                if let Some(single) = name.strip_suffix(TWO_CPU_SUFFIX) {
                    let one = find(single, Method::Live, series.program).with_context(|| format!("{name}: no one-CPU {single} to scale from"))?;
                    let own = scaling(raw.mpps(), median_mpps(one));
                    raw.scaling = Some(own);
                    if let (Some(floor), Some(_)) = (floor_scaling, series.program) {
                        raw.target = Some(format!("scaling >= {SCALING_SHARE_OF_FLOOR} x floor's {floor:.2} = {:.2}", SCALING_SHARE_OF_FLOOR * floor));
                        raw.verdict = Some(scales_like_the_floor(own, floor));
                    }
                }
                rows.push(raw);
            }
            if name == "floor" || name.ends_with(TWO_CPU_SUFFIX) {
                continue;
            }
            let floor = find("floor", method, None).context("no floor for this method")?;
            for &series in &of_method {
                let mut net = row(series, method.minus_floor_name(), minus(series, floor, |s| s.kernel_ns), minus(series, floor, |s| s.wall_ns));
                net.ratio = ratio_of(series, &|series| minus(series, floor, |s| s.kernel_ns));
                if name.ends_with("_new_flow") {
                    net.target = Some(format!("<= {NEW_FLOW_MAX_NS} ns above the floor"));
                    net.verdict = Some(net.ns_per_packet <= NEW_FLOW_MAX_NS);
                }
                if name.ends_with("_non_vip") {
                    net.target = Some(format!("<= {NON_VIP_MAX_NS} ns above the floor"));
                    net.verdict = Some(net.ns_per_packet <= NON_VIP_MAX_NS);
                }
                rows.push(net);
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &'static str, program: Option<&'static str>, cpus: usize, kernel: &[f64]) -> Series {
        Series {
            name,
            method: Method::Live,
            program,
            cpus,
            packets: 1000,
            samples: kernel.iter().map(|&kernel_ns| Sample { kernel_ns, wall_ns: kernel_ns + 10.0 }).collect(),
        }
    }

    #[test]
    fn the_ratio_pairs_rounds() {
        // Drift that doubles both programs' times keeps the ratio.
        assert_eq!(paired_ratio(&[100.0, 200.0, 400.0], &[200.0, 400.0, 800.0]), Some(0.5));
        assert_eq!(paired_ratio(&[1.0], &[0.0]), None);
    }

    #[test]
    fn scaling_is_judged_against_the_floor() {
        assert_eq!(scaling(9.0, 5.0), 1.8);
        assert!(scales_like_the_floor(1.8, 1.9));
        assert!(!scales_like_the_floor(1.5, 1.9));
    }

    #[test]
    fn rows_carry_ratios_scaling_and_verdicts() {
        let series = [
            series("floor", None, 1, &[200.0, 200.0, 200.0]),
            series("floor_2cpu", None, 2, &[100.0, 100.0, 100.0]),
            series("v4_established", Some("current"), 1, &[400.0, 400.0, 400.0]),
            series("v4_established", Some("against"), 1, &[500.0, 500.0, 500.0]),
            series("v4_established_2cpu", Some("current"), 2, &[250.0, 250.0, 250.0]),
            series("v4_established_2cpu", Some("against"), 2, &[250.0, 250.0, 250.0]),
        ];
        let rows = rows(&["floor", "floor_2cpu", "v4_established", "v4_established_2cpu"], &series, Method::Live).unwrap();
        let find = |name: &str, method: &str, program: Option<&str>| rows.iter().find(|row| row.scenario == name && row.method == method && row.program == program).unwrap();
        assert_eq!(find("floor_2cpu", "live_frames", None).scaling, Some(2.0));
        let established = find("v4_established", "live_frames", Some("current"));
        assert_eq!(established.ratio, Some(0.8));
        assert_eq!(find("v4_established", "live_frames", Some("against")).ratio, Some(0.8));
        assert_eq!(established.verdict, Some(false), "2.5 Mpps < 0.7 x 5 Mpps");
        let net = find("v4_established", "live_frames-minus-floor", Some("current"));
        assert_eq!(net.ns_per_packet, 200.0);
        assert_eq!(net.ratio, Some(200.0 / 300.0));
        // 4 Mpps on two CPUs over 2.5 on one: 1.6, under 0.9 x the floor's 2.0.
        let two = find("v4_established_2cpu", "live_frames", Some("current"));
        assert_eq!(two.scaling, Some(1.6));
        assert_eq!(two.verdict, Some(false));
        // REV's 2 Mpps on one CPU scale to 4: 2.0, a pass.
        assert_eq!(find("v4_established_2cpu", "live_frames", Some("against")).verdict, Some(true));
        assert!(!rows.iter().any(|row| row.scenario.ends_with("_2cpu") && row.method.ends_with("minus-floor")));
    }
}
