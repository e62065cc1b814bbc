//! Tests of the rendered families: names, labels, escaping, the histogram, missing counters.

use super::*;
use crate::daemon::status::{FailoverStats, ProbeStatus};
use failover_common::stats;

fn backend(id: u32, address: &str, health: &str, admin: &str, serving: bool) -> BackendStatus {
    BackendStatus {
        id,
        address: address.into(),
        weight: 100,
        tier: "primary".into(),
        admin: admin.into(),
        health: health.into(),
        serving,
        probe: "tcp".into(),
        last_probe: None,
        probes: 0,
        probe_failures: 0,
    }
}

fn status() -> Status {
    let mut web_a = backend(3, "10.0.0.1", "up", "enabled", true);
    web_a.last_probe = Some(ProbeStatus {
        at: 1,
        success: true,
        latency_us: 1_500,
        detail: String::new(),
    });
    web_a.probes = 42;
    web_a.probe_failures = 2;
    let mut web_b = backend(4, "10.0.0.2", "down", "drained", false);
    web_b.weight = 50;
    web_b.tier = "backup".into();
    web_b.last_probe = Some(ProbeStatus {
        at: 1,
        success: false,
        latency_us: 250_000,
        detail: "refused".into(),
    });
    Status {
        instance: "edge-1".into(),
        adopted: true,
        started_at: 1_700_000_000_000,
        config_loaded_at: 1_700_000_000_500,
        vips: vec![
            VipStatus {
                name: "web".into(),
                address: "192.0.2.10".into(),
                port: 443,
                protocol: "tcp".into(),
                vip_id: 0,
                owned: true,
                table_digest: "0123456789abcdef".into(),
                backends: vec![web_a, web_b],
                ..VipStatus::default()
            },
            VipStatus {
                name: "we\"ird\\na\nme".into(),
                address: "2001:db8::10".into(),
                port: 53,
                protocol: "udp".into(),
                vip_id: 7,
                backends: vec![backend(9, "2001:db8:1::9", "up", "maintenance", false)],
                ..VipStatus::default()
            },
        ],
        failovers: FailoverStats {
            count: 5,
            latency_sum_us: 12_345,
            latency_buckets: vec![
                (100, 0),
                (250, 1),
                (500, 1),
                (1_000, 3),
                (2_500, 4),
                (5_000, 4),
            ],
        },
        ..Status::default()
    }
}

fn traffic() -> Traffic {
    let mut reasons = vec![Counter::default(); stats::REASON_COUNT as usize + 1];
    reasons[stats::TX_FORWARD as usize].packets = 1_000;
    reasons[stats::PASS_NOT_VIP as usize].packets = 77;
    reasons[stats::REASON_COUNT as usize].packets = 3;
    Traffic {
        vips: BTreeMap::from([
            (
                0,
                Counter {
                    packets: 10,
                    bytes: 1_500,
                },
            ),
            (
                7,
                Counter {
                    packets: 2,
                    bytes: 120,
                },
            ),
        ]),
        // Backend 9 was not read: it gets no traffic samples.
        backends: BTreeMap::from([
            (
                3,
                Counter {
                    packets: 6,
                    bytes: 900,
                },
            ),
            (
                4,
                Counter {
                    packets: 4,
                    bytes: 600,
                },
            ),
        ]),
        reasons,
    }
}

fn lines_of(text: &str, prefix: &str) -> Vec<String> {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn families_have_the_expected_samples() {
    let text = render(status(), traffic());
    assert!(text.ends_with('\n'));
    assert_eq!(
        lines_of(&text, "failover_info"),
        ["failover_info{instance=\"edge-1\"} 1"]
    );
    assert_eq!(lines_of(&text, "failover_adopted"), ["failover_adopted 1"]);
    // Only the VIP with a digest has a table info sample.
    assert_eq!(
        lines_of(&text, "failover_vip_table_info"),
        ["failover_vip_table_info{vip=\"web\",digest=\"0123456789abcdef\"} 1"]
    );
    assert_eq!(
        lines_of(&text, "failover_vip_packets_total"),
        [
            "failover_vip_packets_total{vip=\"web\",address=\"192.0.2.10\",port=\"443\",protocol=\"tcp\"} 10",
            "failover_vip_packets_total{vip=\"we\\\"ird\\\\na\\nme\",address=\"2001:db8::10\",port=\"53\",protocol=\"udp\"} 2",
        ]
    );
    assert_eq!(
        lines_of(&text, "failover_backend_bytes_total"),
        [
            "failover_backend_bytes_total{vip=\"web\",backend=\"10.0.0.1\"} 900",
            "failover_backend_bytes_total{vip=\"web\",backend=\"10.0.0.2\"} 600",
        ]
    );
    assert_eq!(
        lines_of(&text, "failover_backend_up"),
        [
            "failover_backend_up{vip=\"web\",backend=\"10.0.0.1\"} 1",
            "failover_backend_up{vip=\"web\",backend=\"10.0.0.2\"} 0",
            "failover_backend_up{vip=\"we\\\"ird\\\\na\\nme\",backend=\"2001:db8:1::9\"} 1",
        ]
    );
    assert_eq!(
        lines_of(&text, "failover_backend_admin_state{vip=\"web\",backend=\"10.0.0.2\""),
        [
            "failover_backend_admin_state{vip=\"web\",backend=\"10.0.0.2\",state=\"enabled\"} 0",
            "failover_backend_admin_state{vip=\"web\",backend=\"10.0.0.2\",state=\"drained\"} 1",
            "failover_backend_admin_state{vip=\"web\",backend=\"10.0.0.2\",state=\"maintenance\"} 0",
        ]
    );
    assert_eq!(
        lines_of(&text, "failover_backend_info{vip=\"web\""),
        [
            "failover_backend_info{vip=\"web\",backend=\"10.0.0.1\",id=\"3\",tier=\"primary\",probe=\"tcp\"} 1",
            "failover_backend_info{vip=\"web\",backend=\"10.0.0.2\",id=\"4\",tier=\"backup\",probe=\"tcp\"} 1",
        ]
    );
    assert!(text.contains("\nfailover_backend_serving{vip=\"web\",backend=\"10.0.0.2\"} 0\n"));
    assert!(text.contains("\nfailover_backend_weight{vip=\"web\",backend=\"10.0.0.2\"} 50\n"));
    // Backends never probed have no last-probe samples.
    assert_eq!(
        lines_of(&text, "failover_probe_success"),
        [
            "failover_probe_success{vip=\"web\",backend=\"10.0.0.1\"} 1",
            "failover_probe_success{vip=\"web\",backend=\"10.0.0.2\"} 0",
        ]
    );
    assert_eq!(
        lines_of(&text, "failover_probe_latency_seconds"),
        [
            "failover_probe_latency_seconds{vip=\"web\",backend=\"10.0.0.1\"} 0.0015",
            "failover_probe_latency_seconds{vip=\"web\",backend=\"10.0.0.2\"} 0.25",
        ]
    );
    assert!(text.contains("\nfailover_probes_total{vip=\"web\",backend=\"10.0.0.1\"} 42\n"));
    assert!(text.contains("\nfailover_probe_failures_total{vip=\"web\",backend=\"10.0.0.1\"} 2\n"));
    assert_eq!(
        lines_of(&text, "failover_failovers_total"),
        ["failover_failovers_total 5"]
    );
    assert!(text.contains("# TYPE failover_failover_latency_seconds histogram\n"));
    assert!(text.contains("# TYPE failover_packets_total counter\n"));
    assert!(text.contains("\nfailover_packets_total{reason=\"tx_forward\"} 1000\n"));
    assert!(text.contains("\nfailover_packets_total{reason=\"pass_not_vip\"} 77\n"));
    // A reason past the known names is labelled with its number.
    assert!(text.contains(&format!(
        "\nfailover_packets_total{{reason=\"{}\"}} 3\n",
        stats::REASON_COUNT
    )));
}

#[test]
fn missing_counters_give_no_samples() {
    let text = render(status(), traffic());
    // Backend 9 has no entry in the backend counters.
    assert_eq!(
        lines_of(&text, "failover_backend_packets_total"),
        [
            "failover_backend_packets_total{vip=\"web\",backend=\"10.0.0.1\"} 6",
            "failover_backend_packets_total{vip=\"web\",backend=\"10.0.0.2\"} 4",
        ]
    );
    let text = render(status(), Traffic::default());
    assert!(lines_of(&text, "failover_vip_packets_total{").is_empty());
    assert!(lines_of(&text, "failover_packets_total{").is_empty());
    // The family headers stay, so the metric names are always known.
    assert!(text.contains("# TYPE failover_vip_packets_total counter\n"));
}

#[test]
fn every_family_is_declared_once_and_kept_together() {
    let text = render(status(), traffic());
    let mut declared: Vec<&str> = Vec::new();
    let mut current = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(!declared.contains(&name), "{name} declared twice");
            declared.push(name);
            current = name;
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(!declared.contains(&name), "HELP of {name} after its TYPE");
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| *base == current);
            assert!(
                name == current || base.is_some(),
                "sample {line} outside its family {current}"
            );
        }
    }
}

#[test]
fn histogram_is_cumulative_and_ends_with_the_count() {
    let text = render(status(), traffic());
    let buckets = lines_of(&text, "failover_failover_latency_seconds_bucket");
    assert_eq!(
        buckets,
        [
            "failover_failover_latency_seconds_bucket{le=\"0.0001\"} 0",
            "failover_failover_latency_seconds_bucket{le=\"0.00025\"} 1",
            "failover_failover_latency_seconds_bucket{le=\"0.0005\"} 1",
            "failover_failover_latency_seconds_bucket{le=\"0.001\"} 3",
            "failover_failover_latency_seconds_bucket{le=\"0.0025\"} 4",
            "failover_failover_latency_seconds_bucket{le=\"0.005\"} 4",
            "failover_failover_latency_seconds_bucket{le=\"+Inf\"} 5",
        ]
    );
    let counts: Vec<u64> = buckets
        .iter()
        .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        counts.windows(2).all(|pair| pair[0] <= pair[1]),
        "{counts:?}"
    );
    assert_eq!(
        lines_of(&text, "failover_failover_latency_seconds_sum"),
        ["failover_failover_latency_seconds_sum 0.012345"]
    );
    assert_eq!(
        lines_of(&text, "failover_failover_latency_seconds_count"),
        ["failover_failover_latency_seconds_count 5"]
    );
}

#[test]
fn elections_have_their_state_set_and_counters() {
    use crate::daemon::status::ElectionStatus;
    let mut status = status();
    let mut election = ElectionStatus {
        name: "edge".into(),
        state: "master".into(),
        priority: 150,
        effective_priority: 100,
        owned: true,
        ..ElectionStatus::default()
    };
    election.counters.adverts_received = 7;
    election.counters.adverts_sent = 30;
    election.counters.master_transitions = 2;
    election.counters.discarded.insert("ip_ttl_errors".into(), 3);
    status.elections = vec![election];
    let text = render(status, traffic());
    for expected in [
        "failover_election_state{group=\"edge\",state=\"master\"} 1",
        "failover_election_state{group=\"edge\",state=\"backup\"} 0",
        "failover_election_priority{group=\"edge\"} 100",
        "failover_election_owned{group=\"edge\"} 1",
        "failover_election_master_transitions_total{group=\"edge\"} 2",
        "failover_election_adverts_received_total{group=\"edge\"} 7",
        "failover_election_adverts_sent_total{group=\"edge\"} 30",
        "failover_election_rx_errors_total{group=\"edge\",reason=\"ip_ttl_errors\"} 3",
        "failover_election_rx_errors_total{group=\"edge\",reason=\"checksum_form_mismatch\"} 0",
    ] {
        assert!(text.lines().any(|line| line == expected), "missing {expected:?} in\n{text}");
    }
}
