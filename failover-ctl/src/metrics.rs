//! Prometheus text exposition of the daemon's status and the data plane's counters, and the small HTTP endpoint that serves it.
//!
//! The format is Prometheus text format 0.0.4: one `# HELP` and one `# TYPE` line per family,
//! every sample of a family together, label values escaped. The endpoint answers one request
//! per connection (`Connection: close`): a scrape every few seconds pays one connection setup,
//! and without keep-alive there is no idle connection to bound.
//!
//! The HTTP side is written here instead of taken from a server crate: it answers exactly one
//! path with one body, and the limits that matter for an endpoint anybody on the network can
//! reach (a read deadline, a request size, a connection count) are easier to see in a hundred
//! lines than in a framework's configuration.

use std::{collections::BTreeMap, fmt::Display, fmt::Write as _, sync::Arc, time::Duration};

use failover_common::{maps::Counter, stats::REASON_NAMES};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::daemon::status::{BackendStatus, Status, VipStatus};

/// The data plane's counters, summed over CPUs, as read from the maps at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    /// By `vip_id` (`VIP_STATS`). A VIP with no entry gets no traffic samples (rather than a
    /// zero, which would look like a counter reset).
    pub vips: BTreeMap<u32, Counter>,
    /// By backend id (`BACKEND_STATS`); same rule for missing entries.
    pub backends: BTreeMap<u32, Counter>,
    /// Indexed by reason (`REASON_STATS`, see `failover_common::stats`).
    pub reasons: Vec<Counter>,
}

/// The content type of format 0.0.4, as Prometheus' own client libraries send it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric family; the output ends with a newline, as the format requires.
pub fn render(status: &Status, traffic: &Traffic) -> String {
    let mut out = Exposition::default();

    out.family(
        "failover_info",
        "gauge",
        "Always 1; the instance name of this load balancer.",
    );
    out.sample("failover_info", &[("instance", &status.instance)], 1);
    out.family(
        "failover_adopted",
        "gauge",
        "1 when this daemon adopted pinned state left by an earlier one, else 0.",
    );
    out.sample("failover_adopted", &[], u8::from(status.adopted));
    out.family(
        "failover_start_time_seconds",
        "gauge",
        "When the daemon started, seconds since the Unix epoch.",
    );
    out.sample(
        "failover_start_time_seconds",
        &[],
        seconds_from_millis(status.started_at),
    );
    out.family(
        "failover_config_loaded_timestamp_seconds",
        "gauge",
        "When the configuration in force was loaded, seconds since the Unix epoch.",
    );
    out.sample(
        "failover_config_loaded_timestamp_seconds",
        &[],
        seconds_from_millis(status.config_loaded_at),
    );

    out.family(
        "failover_vip_owned",
        "gauge",
        "1 when this node owns the VIP (forwards its traffic), else 0.",
    );
    for vip in &status.vips {
        out.sample(
            "failover_vip_owned",
            &[("vip", &vip.name)],
            u8::from(vip.owned),
        );
    }
    for (name, help, field) in [
        (
            "failover_vip_packets_total",
            "Packets forwarded for the VIP.",
            (|counter: &Counter| counter.packets) as fn(&Counter) -> u64,
        ),
        (
            "failover_vip_bytes_total",
            "Bytes forwarded for the VIP (before encapsulation).",
            |counter: &Counter| counter.bytes,
        ),
    ] {
        out.family(name, "counter", help);
        for vip in &status.vips {
            if let Some(counter) = traffic.vips.get(&vip.vip_id) {
                let port = vip.port.to_string();
                let labels = [
                    ("vip", vip.name.as_str()),
                    ("address", &vip.address),
                    ("port", &port),
                    ("protocol", &vip.protocol),
                ];
                out.sample(name, &labels, field(counter));
            }
        }
    }
    for (name, help, field) in [
        (
            "failover_backend_packets_total",
            "Packets forwarded to the backend.",
            (|counter: &Counter| counter.packets) as fn(&Counter) -> u64,
        ),
        (
            "failover_backend_bytes_total",
            "Bytes forwarded to the backend (before encapsulation).",
            |counter: &Counter| counter.bytes,
        ),
    ] {
        out.family(name, "counter", help);
        for (vip, backend) in backends(status) {
            if let Some(counter) = traffic.backends.get(&backend.id) {
                out.sample(name, &backend_labels(vip, backend), field(counter));
            }
        }
    }

    out.family(
        "failover_backend_info",
        "gauge",
        "Always 1; the backend's id, tier and probe kind.",
    );
    for (vip, backend) in backends(status) {
        let id = backend.id.to_string();
        let [vip_label, backend_label] = backend_labels(vip, backend);
        let labels = [
            vip_label,
            backend_label,
            ("id", &id),
            ("tier", &backend.tier),
            ("probe", &backend.probe),
        ];
        out.sample("failover_backend_info", &labels, 1);
    }
    out.family(
        "failover_backend_up",
        "gauge",
        "1 when the probes' verdict is up, else 0.",
    );
    for (vip, backend) in backends(status) {
        out.sample(
            "failover_backend_up",
            &backend_labels(vip, backend),
            u8::from(backend.health == "up"),
        );
    }
    out.family(
        "failover_backend_serving",
        "gauge",
        "1 when the backend is in the VIP's published table (gets new flows), else 0.",
    );
    for (vip, backend) in backends(status) {
        out.sample(
            "failover_backend_serving",
            &backend_labels(vip, backend),
            u8::from(backend.serving),
        );
    }
    out.family(
        "failover_backend_admin_state",
        "gauge",
        "1 for the backend's administrative state, 0 for the others.",
    );
    for (vip, backend) in backends(status) {
        let [vip_label, backend_label] = backend_labels(vip, backend);
        let mut states = vec!["enabled", "drained", "maintenance"];
        if !states.contains(&backend.admin.as_str()) {
            states.push(&backend.admin);
        }
        for state in states {
            out.sample(
                "failover_backend_admin_state",
                &[vip_label, backend_label, ("state", state)],
                u8::from(backend.admin == state),
            );
        }
    }
    out.family(
        "failover_backend_weight",
        "gauge",
        "The backend's configured Maglev weight.",
    );
    for (vip, backend) in backends(status) {
        out.sample(
            "failover_backend_weight",
            &backend_labels(vip, backend),
            backend.weight,
        );
    }

    out.family(
        "failover_probe_success",
        "gauge",
        "1 when the backend's last probe succeeded, else 0 (absent before the first probe).",
    );
    for (vip, backend) in backends(status) {
        if let Some(last) = &backend.last_probe {
            out.sample(
                "failover_probe_success",
                &backend_labels(vip, backend),
                u8::from(last.success),
            );
        }
    }
    out.family(
        "failover_probe_latency_seconds",
        "gauge",
        "How long the backend's last probe took.",
    );
    for (vip, backend) in backends(status) {
        if let Some(last) = &backend.last_probe {
            out.sample(
                "failover_probe_latency_seconds",
                &backend_labels(vip, backend),
                seconds_from_micros(last.latency_us),
            );
        }
    }
    out.family(
        "failover_probes_total",
        "counter",
        "Probe attempts since the daemon started.",
    );
    for (vip, backend) in backends(status) {
        out.sample(
            "failover_probes_total",
            &backend_labels(vip, backend),
            backend.probes,
        );
    }
    out.family(
        "failover_probe_failures_total",
        "counter",
        "Failed probe attempts since the daemon started.",
    );
    for (vip, backend) in backends(status) {
        out.sample(
            "failover_probe_failures_total",
            &backend_labels(vip, backend),
            backend.probe_failures,
        );
    }

    let failovers = &status.failovers;
    out.family(
        "failover_failovers_total",
        "counter",
        "Backend health transitions applied to the maps.",
    );
    out.sample("failover_failovers_total", &[], failovers.count);
    out.family(
        "failover_failover_latency_seconds",
        "histogram",
        "Time from a probe verdict to the affected VIPs' tables being published.",
    );
    for (bound_us, count) in &failovers.latency_buckets {
        let bound = seconds_from_micros(*bound_us).to_string();
        out.sample(
            "failover_failover_latency_seconds_bucket",
            &[("le", &bound)],
            count,
        );
    }
    out.sample(
        "failover_failover_latency_seconds_bucket",
        &[("le", "+Inf")],
        failovers.count,
    );
    out.sample(
        "failover_failover_latency_seconds_sum",
        &[],
        seconds_from_micros(failovers.latency_sum_us),
    );
    out.sample(
        "failover_failover_latency_seconds_count",
        &[],
        failovers.count,
    );

    out.family(
        "failover_packets_total",
        "counter",
        "Packets by the data plane's verdict reason (events included), all CPUs.",
    );
    for (reason, counter) in traffic.reasons.iter().enumerate() {
        let number;
        let name = match REASON_NAMES.get(reason) {
            Some(name) => *name,
            None => {
                number = reason.to_string();
                &number
            }
        };
        out.sample(
            "failover_packets_total",
            &[("reason", name)],
            counter.packets,
        );
    }

    out.text
}

/// Every backend with its VIP, in status order.
fn backends(status: &Status) -> impl Iterator<Item = (&VipStatus, &BackendStatus)> {
    status
        .vips
        .iter()
        .flat_map(|vip| vip.backends.iter().map(move |backend| (vip, backend)))
}

fn backend_labels<'a>(
    vip: &'a VipStatus,
    backend: &'a BackendStatus,
) -> [(&'static str, &'a str); 2] {
    [("vip", &vip.name), ("backend", &backend.address)]
}

fn seconds_from_micros(micros: u64) -> f64 {
    micros as f64 / 1e6
}

fn seconds_from_millis(millis: u64) -> f64 {
    millis as f64 / 1e3
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// `help` is one of the constant texts above: no backslash, no newline, nothing to escape.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                escape_into(&mut self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// The three escapes the text format defines for label values.
fn escape_into(out: &mut String, value: &str) {
    for character in value.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

/// Bounds of one connection of the endpoint.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// From accept to the end of the request head, and separately for writing the answer.
    timeout: Duration,
    /// Largest request head (request line and headers).
    request_bytes: usize,
    /// Connections served at once; beyond it, accepting waits.
    connections: usize,
}

const LIMITS: Limits = Limits {
    timeout: Duration::from_secs(5),
    request_bytes: 8 * 1024,
    connections: 256,
};

/// Serves `GET /metrics` (and `HEAD`) with the text `render` returns, one task per connection.
///
/// Other paths get 404, other methods 405, requests that are not HTTP/1.x 400, heads over
/// 8 KiB 431; a connection that has not sent its request head within 5 s is closed. Runs until
/// the task is aborted; accept errors (such as running out of descriptors) are logged and
/// retried after a pause.
pub async fn serve(listener: TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    serve_with(listener, render, LIMITS).await;
}

async fn serve_with(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            // The semaphore is never closed; this only keeps the loop free of panics.
            return;
        };
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let render = Arc::clone(&render);
                tokio::spawn(async move {
                    answer(stream, render.as_ref(), limits).await;
                    drop(slot);
                });
            }
            Err(error) => {
                tracing::warn!("metrics endpoint: accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head and writes one answer; every failure just ends the connection.
async fn answer(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
    limits: Limits,
) {
    let head =
        match tokio::time::timeout(limits.timeout, read_head(&mut stream, limits.request_bytes))
            .await
        {
            Ok(Ok(head)) => head,
            Ok(Err(Incomplete::TooLarge)) => Head::TooLarge,
            // The peer closed or reset before finishing its request: nobody to answer.
            Ok(Err(Incomplete::Closed)) => return,
            Err(_elapsed) => Head::TimedOut,
        };
    let (status, extra_headers, body, send_body) = match head {
        Head::Request { method, path } => match (method.as_str(), path.as_str()) {
            ("GET" | "HEAD", "/metrics") => (
                "200 OK",
                format!("Content-Type: {CONTENT_TYPE}\r\n"),
                render(),
                method == "GET",
            ),
            (_, "/metrics") => (
                "405 Method Not Allowed",
                "Allow: GET, HEAD\r\n".to_string(),
                "method not allowed\n".to_string(),
                method != "HEAD",
            ),
            _ => (
                "404 Not Found",
                String::new(),
                "not found; metrics are at /metrics\n".to_string(),
                method != "HEAD",
            ),
        },
        Head::Bad => (
            "400 Bad Request",
            String::new(),
            "bad request\n".to_string(),
            true,
        ),
        Head::TooLarge => (
            "431 Request Header Fields Too Large",
            String::new(),
            "request head too large\n".to_string(),
            true,
        ),
        Head::TimedOut => (
            "408 Request Timeout",
            String::new(),
            "request timeout\n".to_string(),
            true,
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\n{extra_headers}{}Content-Length: {}\r\nConnection: close\r\n\r\n",
        if extra_headers.is_empty() {
            "Content-Type: text/plain; charset=utf-8\r\n"
        } else {
            ""
        },
        body.len()
    )
    .into_bytes();
    if send_body {
        response.extend_from_slice(body.as_bytes());
    }
    // A client that does not read is cut off at the same bound as one that does not write.
    let _ = tokio::time::timeout(limits.timeout, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

enum Head {
    Request { method: String, path: String },
    Bad,
    TooLarge,
    TimedOut,
}

enum Incomplete {
    Closed,
    TooLarge,
}

/// Reads until the blank line that ends the head (RFC 9112 §2.1) and parses it; a body, if
/// any, is never read.
async fn read_head(stream: &mut TcpStream, limit: usize) -> Result<Head, Incomplete> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|_| Incomplete::Closed)?;
        if read == 0 {
            return Err(Incomplete::Closed);
        }
        let searched_from = buffer.len().saturating_sub(3);
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = buffer[searched_from..]
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
        {
            let end = searched_from + end;
            if end > limit {
                return Err(Incomplete::TooLarge);
            }
            return Ok(parse_head(&buffer[..end]));
        }
        if buffer.len() > limit {
            return Err(Incomplete::TooLarge);
        }
    }
}

/// Request line `method SP target SP HTTP/1.x` (RFC 9112 §3), then `name: value` header lines.
fn parse_head(head: &[u8]) -> Head {
    let Ok(text) = std::str::from_utf8(head) else {
        return Head::Bad;
    };
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Head::Bad;
    };
    let method_ok = !method.is_empty() && method.bytes().all(|byte| byte.is_ascii_uppercase());
    let version_ok = matches!(version, "HTTP/1.0" | "HTTP/1.1");
    let target_ok = target.starts_with('/') && target.bytes().all(|byte| byte.is_ascii_graphic());
    let headers_ok = lines.all(|line| matches!(line.split_once(':'), Some((name, _)) if !name.is_empty() && !name.contains([' ', '\t'])));
    if !(method_ok && version_ok && target_ok && headers_ok) {
        return Head::Bad;
    }
    let path = target.split_once('?').map_or(target, |(path, _query)| path);
    Head::Request {
        method: method.to_string(),
        path: path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::net::TcpStream;

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
        let text = render(&status(), &traffic());
        assert!(text.ends_with('\n'));
        assert_eq!(
            lines_of(&text, "failover_info"),
            ["failover_info{instance=\"edge-1\"} 1"]
        );
        assert_eq!(lines_of(&text, "failover_adopted"), ["failover_adopted 1"]);
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
        assert!(
            text.contains("\nfailover_probe_failures_total{vip=\"web\",backend=\"10.0.0.1\"} 2\n")
        );
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
        let text = render(&status(), &traffic());
        // Backend 9 has no entry in the backend counters.
        assert_eq!(
            lines_of(&text, "failover_backend_packets_total"),
            [
                "failover_backend_packets_total{vip=\"web\",backend=\"10.0.0.1\"} 6",
                "failover_backend_packets_total{vip=\"web\",backend=\"10.0.0.2\"} 4",
            ]
        );
        let text = render(&status(), &Traffic::default());
        assert!(lines_of(&text, "failover_vip_packets_total{").is_empty());
        assert!(lines_of(&text, "failover_packets_total{").is_empty());
        // The family headers stay, so the metric names are always known.
        assert!(text.contains("# TYPE failover_vip_packets_total counter\n"));
    }

    #[test]
    fn every_family_is_declared_once_and_kept_together() {
        let text = render(&status(), &traffic());
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
        let text = render(&status(), &traffic());
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
    fn parse_head_accepts_http1_and_refuses_the_rest() {
        let parse = |text: &str| match parse_head(text.as_bytes()) {
            Head::Request { method, path } => format!("{method} {path}"),
            Head::Bad => "bad".into(),
            Head::TooLarge | Head::TimedOut => unreachable!(),
        };
        assert_eq!(
            parse("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*"),
            "GET /metrics"
        );
        assert_eq!(parse("GET /metrics?name[]=x HTTP/1.0"), "GET /metrics");
        assert_eq!(parse("PRI * HTTP/2.0"), "bad");
        assert_eq!(parse("GET /metrics"), "bad");
        assert_eq!(parse("GET  /metrics HTTP/1.1"), "bad");
        assert_eq!(parse("get /metrics HTTP/1.1"), "bad");
        assert_eq!(parse("GET /metrics HTTP/1.1\r\nno colon"), "bad");
        assert_eq!(parse("\u{fffd}"), "bad");
    }

    const WAIT: Duration = Duration::from_secs(5);

    async fn start(limits: Limits) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let render: Arc<dyn Fn() -> String + Send + Sync> =
            Arc::new(|| render(&status(), &traffic()));
        (address, tokio::spawn(serve_with(listener, render, limits)))
    }

    /// Sends `request` and reads until the server closes.
    async fn exchange(address: std::net::SocketAddr, request: &[u8]) -> String {
        tokio::time::timeout(WAIT, async {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(request).await.unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            String::from_utf8(answer).unwrap()
        })
        .await
        .expect("no answer in time")
    }

    fn status_line(answer: &str) -> &str {
        answer.split("\r\n").next().unwrap()
    }

    #[tokio::test]
    async fn serves_the_rendered_text() {
        let (address, server) = start(LIMITS).await;
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert_eq!(status_line(head), "HTTP/1.1 200 OK");
        assert!(
            head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", body.len())),
            "{head}"
        );
        assert_eq!(body, render(&status(), &traffic()));

        let answer = exchange(address, b"HEAD /metrics HTTP/1.0\r\n\r\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        assert!(answer.ends_with("\r\n\r\n"), "HEAD answered with a body");
        server.abort();
    }

    #[tokio::test]
    async fn answers_errors() {
        let (address, server) = start(LIMITS).await;
        let not_found = exchange(address, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert_eq!(status_line(&not_found), "HTTP/1.1 404 Not Found");
        let garbage = exchange(
            address,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        )
        .await;
        assert_eq!(status_line(&garbage), "HTTP/1.1 400 Bad Request");
        let method = exchange(
            address,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(status_line(&method), "HTTP/1.1 405 Method Not Allowed");
        // A head that never ends is cut at the size limit, not buffered forever.
        let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b"X-Filler: yes\r\n".as_slice(), 1_000).flatten());
        let too_large = exchange(address, &huge).await;
        assert_eq!(
            status_line(&too_large),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        // Still serving after all that.
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        server.abort();
    }

    #[tokio::test]
    async fn a_silent_client_does_not_block_others_and_is_cut_off() {
        let limits = Limits {
            timeout: Duration::from_millis(500),
            ..LIMITS
        };
        let (address, server) = start(limits).await;
        let mut silent = TcpStream::connect(address).await.unwrap();
        let mut half = TcpStream::connect(address).await.unwrap();
        half.write_all(b"GET /metr").await.unwrap();

        let started = Instant::now();
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        assert!(
            started.elapsed() < limits.timeout,
            "served only after the silent clients timed out"
        );

        for stream in [&mut silent, &mut half] {
            let mut answer = Vec::new();
            tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
                .await
                .expect("idle connection kept open")
                .unwrap();
            assert!(String::from_utf8(answer)
                .unwrap()
                .starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        }
        server.abort();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let limits = Limits {
            timeout: Duration::from_millis(300),
            connections: 1,
            ..LIMITS
        };
        let (address, server) = start(limits).await;
        let _silent = TcpStream::connect(address).await.unwrap();
        // The only slot is taken until the silent connection times out; then this one is served.
        let started = Instant::now();
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        assert!(
            started.elapsed() >= limits.timeout / 2,
            "{:?}",
            started.elapsed()
        );
        server.abort();
    }
}
