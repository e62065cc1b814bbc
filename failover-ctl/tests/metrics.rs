//! The metrics endpoint of a real daemon and what operators plug into it: a scrape of
//! `failover-ctl run` in the lab (namespaces, two HTTP backends, traffic, one failover) passes
//! `promtool check metrics` and shows the configured VIP and backends with sane values; the
//! alert rules in contrib/ pass `promtool check rules` and their unit tests; every expression
//! of the Grafana dashboard parses, and every metric the dashboard and the rules use is in a
//! real scrape.
//!
//! Run as root: `cargo test -p failover-ctl --test metrics`. promtool comes from the Debian
//! package prometheus (`cargo xtask test` installs it).

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use support::*;

/// Short connections through the VIP before the scrape.
const REQUESTS: usize = 60;

fn contrib(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib")
        .join(file)
}

fn have_promtool() -> bool {
    netlab::prerequisite::require_program("promtool", "prometheus")
}

/// Runs `promtool args`, feeding it `input`, and panics with its output unless it succeeds.
fn promtool(args: &[&str], input: &str) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

// ---------------------------------------------------------------------------------------------
// The text format, as far as these tests read it.

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape's samples and the type of each family (`# TYPE` lines).
#[derive(Debug)]
struct Exposition {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                samples.push(parse_sample(line));
            }
        }
        Self { samples, types }
    }

    /// The samples of `name` whose labels include every pair of `labels`.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|sample| {
                sample.name == name
                    && labels.iter().all(|(key, value)| {
                        sample.labels.get(*key).map(String::as_str) == Some(value)
                    })
            })
            .collect()
    }

    /// The value of the one sample of `name` with `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(name, labels).as_slice() {
            [sample] => sample.value,
            other => panic!(
                "{name}{labels:?}: {} samples, expected one: {other:?}",
                other.len()
            ),
        }
    }

    /// Whether a query naming `name` finds samples: a sample name (`_bucket`, `_sum` and `_count`
    /// of a histogram included), or a histogram's own name.
    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|sample| sample.name == name)
            || (self.types.get(name).map(String::as_str) == Some("histogram")
                && self.samples.iter().any(|sample| {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| sample.name.strip_suffix(suffix) == Some(name))
                }))
    }
}

/// `name{label="value",...} value`, label values with the format's three escapes.
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut characters = inner.char_indices();
        let mut key = String::new();
        loop {
            let (index, character) = characters.next().unwrap_or_else(|| panic!("{line}"));
            match character {
                '}' => {
                    rest = &inner[index + 1..];
                    break;
                }
                ',' => {}
                '=' => {
                    assert_eq!(characters.next().map(|(_, c)| c), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        match characters.next().unwrap_or_else(|| panic!("{line}")).1 {
                            '"' => break,
                            '\\' => match characters.next().unwrap().1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.trim();
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    Sample {
        name,
        labels,
        value,
    }
}

// ---------------------------------------------------------------------------------------------
// The lab.

/// A lab with two HTTP backends (weights 1 and 2), [`REQUESTS`] short connections through the
/// VIP, then backend 0 killed and failed over; and the daemon's metrics address.
fn exercised_lab() -> (Lab, SocketAddr) {
    let mut lab = Lab::http(&[(1, "primary"), (2, "primary")]);
    let config = failover_ctl::config::load(&lab.daemon.config).unwrap();
    let address = config.metrics_address;
    assert!(address.ip().is_loopback(), "{address}");
    let tally = short_requests(&lab.topology.client, 80, REQUESTS);
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);
    lab.kill_server(0);
    lab.daemon
        .wait_serving(&[backend_address(1)], Duration::from_secs(10));
    (lab, address)
}

/// `GET /metrics` from inside the load balancer's namespace: the response head and body.
fn scrape(lab: &Lab, address: SocketAddr) -> (String, String) {
    let answer = lab
        .topology
        .lb
        .enter(move || {
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            write!(
                stream,
                "GET /metrics HTTP/1.1\r\nHost: {address}\r\nAccept: text/plain\r\n\r\n"
            )
            .unwrap();
            let mut answer = Vec::new();
            // The endpoint closes after one answer.
            stream.read_to_end(&mut answer).unwrap();
            String::from_utf8(answer).unwrap()
        })
        .unwrap();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{answer}"));
    (head.to_string(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[test]
fn a_scrape_of_the_daemon_passes_promtool_and_shows_the_lab() {
    if !root() || !have_promtool() {
        return;
    }
    let started = millis_now() as f64 / 1e3;
    let (lab, address) = exercised_lab();
    let (head, body) = scrape(&lab, address);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );

    // Exit 0 and not a word: a lint finding (say, a counter without _total) is printed.
    let output = promtool(&["check", "metrics"], &body);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.trim().is_empty(), "promtool check metrics: {said}");

    let metrics = Exposition::parse(&body);
    let instance = lab.daemon.instance.as_str();
    let vip = [("vip", "web")];
    let vip_address = VIP.to_string();
    let vip_labels = [
        ("vip", "web"),
        ("address", vip_address.as_str()),
        ("port", "80"),
        ("protocol", "tcp"),
    ];
    let up = backend_address(1).to_string();
    let down = backend_address(0).to_string();
    let live = [("vip", "web"), ("backend", up.as_str())];
    let killed = [("vip", "web"), ("backend", down.as_str())];

    assert_eq!(
        metrics.value("failover_info", &[("instance", instance)]),
        1.0
    );
    assert_eq!(metrics.value("failover_adopted", &[]), 0.0);
    let now = millis_now() as f64 / 1e3;
    let start_time = metrics.value("failover_start_time_seconds", &[]);
    assert!(
        (started - 1.0..=now).contains(&start_time),
        "{start_time} not in {started}..{now}"
    );
    let loaded = metrics.value("failover_config_loaded_timestamp_seconds", &[]);
    assert!((start_time - 1.0..=now).contains(&loaded), "{loaded}");
    assert_eq!(metrics.value("failover_vip_owned", &vip), 1.0);
    // The published table's digest: one sample, 16 hex digits, value 1.
    let table_info = metrics.find("failover_vip_table_info", &vip);
    assert_eq!(table_info.len(), 1, "{table_info:?}");
    let digest = &table_info[0].labels["digest"];
    assert!(digest.len() == 16 && digest.chars().all(|c| c.is_ascii_hexdigit()), "{digest}");
    assert_eq!(table_info[0].value, 1.0);

    // Traffic: every connection is several packets each way from the client; the VIP's
    // counters are the backends' summed (the data plane adds to both per forwarded packet).
    let vip_packets = metrics.value("failover_vip_packets_total", &vip_labels);
    let vip_bytes = metrics.value("failover_vip_bytes_total", &vip_labels);
    assert!(vip_packets >= (3 * REQUESTS) as f64, "{vip_packets}");
    assert!(
        vip_bytes >= 40.0 * vip_packets,
        "{vip_bytes} bytes in {vip_packets} packets"
    );
    let per_backend = |name: &str| -> Vec<f64> {
        [&killed, &live]
            .iter()
            .map(|labels| metrics.value(name, labels.as_slice()))
            .collect()
    };
    let backend_packets = per_backend("failover_backend_packets_total");
    assert!(
        backend_packets.iter().all(|packets| *packets > 0.0),
        "{backend_packets:?}"
    );
    assert_eq!(backend_packets.iter().sum::<f64>(), vip_packets);
    assert_eq!(
        per_backend("failover_backend_bytes_total")
            .iter()
            .sum::<f64>(),
        vip_bytes
    );
    assert!(
        metrics.value("failover_packets_total", &[("reason", "tx_forward")]) >= vip_packets,
        "every forwarded packet is a tx_forward verdict"
    );
    let reasons = metrics.find("failover_packets_total", &[]);
    assert!(reasons.len() >= 20, "{} reasons", reasons.len());

    // The backends: the killed one down and out of the table, the other serving.
    for (labels, expected_up, weight) in [(&killed, 0.0, 1.0), (&live, 1.0, 2.0)] {
        assert_eq!(
            metrics.value("failover_backend_up", labels),
            expected_up,
            "{labels:?}"
        );
        assert_eq!(
            metrics.value("failover_backend_serving", labels),
            expected_up,
            "{labels:?}"
        );
        assert_eq!(
            metrics.value("failover_backend_weight", labels),
            weight,
            "{labels:?}"
        );
        let enabled = [labels[0], labels[1], ("state", "enabled")];
        assert_eq!(metrics.value("failover_backend_admin_state", &enabled), 1.0);
        for state in ["drained", "maintenance"] {
            let other = [labels[0], labels[1], ("state", state)];
            assert_eq!(metrics.value("failover_backend_admin_state", &other), 0.0);
        }
        let info = [labels[0], labels[1], ("tier", "primary"), ("probe", "http")];
        assert_eq!(metrics.value("failover_backend_info", &info), 1.0);
        assert_eq!(
            metrics.value("failover_probe_success", labels),
            expected_up,
            "{labels:?}"
        );
        let latency = metrics.value("failover_probe_latency_seconds", labels);
        assert!((0.0..=1.0).contains(&latency), "{labels:?}: {latency} s");
        let probes = metrics.value("failover_probes_total", labels);
        let failures = metrics.value("failover_probe_failures_total", labels);
        assert!(
            probes >= 2.0 && failures <= probes,
            "{probes} probes, {failures} failed"
        );
    }
    assert!(metrics.value("failover_probe_failures_total", &killed) >= f64::from(FALL));

    // The failover of backend 0 is in the count and in the histogram.
    let failovers = metrics.value("failover_failovers_total", &[]);
    assert!(failovers >= 1.0, "{failovers}");
    let latency = "failover_failover_latency_seconds";
    assert_eq!(
        metrics.types.get(latency).map(String::as_str),
        Some("histogram")
    );
    assert_eq!(metrics.value(&format!("{latency}_count"), &[]), failovers);
    let buckets = metrics.find(&format!("{latency}_bucket"), &[]);
    let counts: Vec<f64> = buckets.iter().map(|bucket| bucket.value).collect();
    assert!(
        counts.windows(2).all(|pair| pair[0] <= pair[1]),
        "{counts:?}"
    );
    assert_eq!(buckets.last().unwrap().labels["le"], "+Inf");
    assert_eq!(counts.last(), Some(&failovers));
    let sum = metrics.value(&format!("{latency}_sum"), &[]);
    assert!(
        sum > 0.0 && sum < failovers * 10.0,
        "{sum} s over {failovers} failovers"
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    if !have_promtool() {
        return;
    }
    let rules = contrib("prometheus-alerts.yml");
    let output = promtool(&["check", "rules", rules.to_str().unwrap()], "");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("SUCCESS: 6 rules found"), "{said}");
    let tests = contrib("prometheus-alerts.test.yml");
    promtool(&["test", "rules", tests.to_str().unwrap()], "");
}

/// The Grafana variables in the dashboard's expressions, replaced by what makes them PromQL.
const VARIABLES: [(&str, &str); 4] = [
    ("$__rate_interval", "5m"),
    ("$job", ".*"),
    ("$instance", ".*"),
    ("$vip", ".*"),
];

/// Every `expr` of the dashboard's panels, and the template variables' queries.
fn dashboard_queries(dashboard: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    let exprs = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|variable| variable["query"]["query"].as_str().unwrap().to_string())
        .collect();
    (exprs, variables)
}

/// The `expr:` values of a rules file (inline, or a `|` block of more-indented lines).
fn rule_expressions(text: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest != "|" {
            exprs.push(rest.to_string());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            if !next.trim().is_empty() && next.len() - next.trim_start().len() <= indent {
                break;
            }
            block.push_str(next.trim());
            block.push('\n');
            lines.next();
        }
        exprs.push(block);
    }
    exprs
}

/// The `failover_*` metric names in an expression (a label value such as `job="failover"` is
/// not one: it does not continue with `_`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let word = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b':';
    let mut index = 0;
    while let Some(found) = expr[index..].find("failover_") {
        let start = index + found;
        let mut end = start;
        while end < bytes.len() && word(bytes[end]) {
            end += 1;
        }
        if start == 0 || !word(bytes[start - 1]) {
            names.insert(expr[start..end].to_string());
        }
        index = end;
    }
    names
}

#[test]
fn the_dashboard_imports_with_a_prometheus_input_and_its_queries_parse() {
    if !have_promtool() {
        return;
    }
    let text = std::fs::read_to_string(contrib("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let inputs = dashboard["__inputs"].as_array().unwrap();
    assert!(
        inputs.iter().any(|input| input["name"] == "DS_PROMETHEUS"
            && input["type"] == "datasource"
            && input["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel id twice: {panel}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{}",
                panel["title"]
            );
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        assert_eq!(
            variable["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{variable}"
        );
    }

    // promtool parses every expression when they are recording rules of a scratch file.
    let (exprs, _) = dashboard_queries(&dashboard);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, expr) in exprs.iter().enumerate() {
        let expr = VARIABLES
            .iter()
            .fold(expr.clone(), |expr, (variable, value)| {
                expr.replace(variable, value)
            });
        assert!(!expr.contains('$'), "an unknown variable in {expr}");
        // A JSON string is a YAML double-quoted scalar.
        let quoted = serde_json::to_string(&expr).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{index}\n        expr: {quoted}\n"
        ));
    }
    let scratch = std::env::temp_dir().join(format!(
        "failover-dashboard-queries-{}.yml",
        std::process::id()
    ));
    std::fs::write(&scratch, &rules).unwrap();
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&scratch)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&scratch);
    assert!(
        output.status.success(),
        "a dashboard query does not parse:\n{}{}\n{rules}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_metric_the_dashboard_and_the_rules_use_is_in_a_real_scrape() {
    if !root() || !have_promtool() {
        return;
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(contrib("grafana-dashboard.json")).unwrap())
            .unwrap();
    let (exprs, variables) = dashboard_queries(&dashboard);
    let rules = std::fs::read_to_string(contrib("prometheus-alerts.yml")).unwrap();
    let rule_exprs = rule_expressions(&rules);
    assert_eq!(rule_exprs.len(), 6, "{rule_exprs:?}");

    let mut used: BTreeMap<String, &str> = BTreeMap::new();
    for (source, list) in [
        ("dashboard", &exprs),
        ("dashboard variables", &variables),
        ("rules", &rule_exprs),
    ] {
        for expr in list {
            for name in metric_names(expr) {
                used.entry(name).or_insert(source);
            }
        }
    }
    // A guard against an extraction that finds (almost) nothing.
    assert!(used.len() >= 18, "{used:?}");

    let (lab, address) = exercised_lab();
    let (_, body) = scrape(&lab, address);
    let metrics = Exposition::parse(&body);
    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !metrics.has(name))
        .map(|(name, source)| format!("{name} (in the {source})"))
        .collect();
    assert!(
        missing.is_empty(),
        "not in a real scrape: {missing:?}\n{body}"
    );
}

#[test]
fn names_are_found_in_expressions() {
    let names = metric_names(
        "sum by (le) (rate(failover_failover_latency_seconds_bucket{job=\"failover\"}[5m])) / failover_info",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["failover_failover_latency_seconds_bucket", "failover_info"]
    );
    let rules = "      - alert: A\n        expr: up{job=\"failover\"} == 0\n        for: 1m\n      - alert: B\n        expr: |\n          sum(failover_backend_serving)\n            and failover_vip_owned\n        labels: {}\n";
    assert_eq!(
        rule_expressions(rules),
        [
            "up{job=\"failover\"} == 0",
            "sum(failover_backend_serving)\nand failover_vip_owned\n"
        ]
    );
    let sample = parse_sample(r#"failover_vip_owned{vip="we\"ird\\na\nme",port="53"} 1"#);
    assert_eq!(sample.labels["vip"], "we\"ird\\na\nme");
    assert_eq!(sample.labels["port"], "53");
    assert_eq!(sample.value, 1.0);
}
