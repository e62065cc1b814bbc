//! How the views print: names of wire values, aligned tables (comfy-table), byte sizes
//! (bytesize), short durations, UTC timestamps (jiff), and writing to stdout.

use std::io::Write as _;

use anyhow::Context;
use comfy_table::{presets::NOTHING, CellAlignment};
use failover_common::maps::{VipKey, FAMILY_IPV4, HEALTH_DOWN, HEALTH_DRAINING, HEALTH_UP, PROTOCOL_TCP, PROTOCOL_UDP};
use serde::Serialize;

use crate::address;

pub(super) fn protocol_name(protocol: u8) -> String {
    match protocol {
        PROTOCOL_TCP => "tcp".into(),
        PROTOCOL_UDP => "udp".into(),
        other => other.to_string(),
    }
}

pub(super) fn ip(words: &[u32; 4], family: u8) -> String {
    address::from_words(words, family).map_or_else(|| "?".into(), |address| address.to_string())
}

/// `address:port` with IPv6 in brackets; port 0 (every port) as `*`.
pub(super) fn endpoint(words: &[u32; 4], family: u8, port_be: u16) -> String {
    let address = ip(words, family);
    let port = match u16::from_be(port_be) {
        0 => "*".to_string(),
        port => port.to_string(),
    };
    if family == FAMILY_IPV4 {
        format!("{address}:{port}")
    } else {
        format!("[{address}]:{port}")
    }
}

/// `203.0.113.10:443/tcp`.
pub(super) fn vip_label(key: &VipKey) -> String {
    format!("{}/{}", endpoint(&key.address, key.family, key.port), protocol_name(key.protocol))
}

pub(super) fn health_name(health: u32) -> String {
    match health {
        HEALTH_UP => "up".into(),
        HEALTH_DOWN => "down".into(),
        HEALTH_DRAINING => "draining".into(),
        other => format!("unknown({other})"),
    }
}

pub(super) fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.into()
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly.
pub(super) fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error).context("writing to stdout"),
        _ => Ok(()),
    }
}

pub(super) fn emit_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    emit(&text)
}

/// An aligned text table as the views have always printed it: no borders and no header rule,
/// columns two spaces apart, numbers right-aligned, no trailing blanks.
pub(super) struct Table {
    table: comfy_table::Table,
}

impl Table {
    /// Column names; a leading `>` right-aligns the column (its header too).
    pub(super) fn new(columns: &[&str]) -> Self {
        let mut table = Self::bare();
        table.table.set_header(columns.iter().map(|column| column.trim_start_matches('>')));
        for (column, name) in table.table.column_iter_mut().zip(columns) {
            if name.starts_with('>') {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        table
    }

    /// A table without a header row, all columns left-aligned.
    fn bare() -> Self {
        let mut table = comfy_table::Table::new();
        table.load_style(NOTHING);
        Self { table }
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        self.table.add_row(cells);
    }

    pub(super) fn render(mut self) -> String {
        // The gap between columns is each column's right padding; the last one's is trimmed.
        for column in self.table.column_iter_mut() {
            column.set_padding((0, 2));
        }
        let mut text = self.table.trim_fmt();
        text.push('\n');
        text
    }
}

/// `name  value` lines with the values aligned, as `status` and `which` print them.
pub(super) fn fields(lines: &[(&str, String)]) -> String {
    let mut table = Table::bare();
    for (name, value) in lines {
        table.row(vec![name.to_string(), value.clone()]);
    }
    table.render()
}

/// `1.5 KiB`; bytes below 1 KiB exactly (a rate is rounded to whole bytes first).
pub(super) fn human_bytes(bytes: f64) -> String {
    bytesize::ByteSize(bytes.round() as u64).display().iec().to_string()
}

/// A short duration: `850ms`, `12s`, `3m04s`, `2h05m`, `3d04h`.
pub(super) fn short_duration(millis: u64) -> String {
    let seconds = millis / 1000;
    match seconds {
        0 => format!("{millis}ms"),
        1..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..=86399 => format!("{}h{:02}m", seconds / 3600, seconds / 60 % 60),
        _ => format!("{}d{:02}h", seconds / 86400, seconds / 3600 % 24),
    }
}

/// `85us`, `1.2ms`, `1.50s`.
pub(super) fn micros(value: u64) -> String {
    match value {
        0..=999 => format!("{value}us"),
        1_000..=999_999 => format!("{:.1}ms", value as f64 / 1e3),
        _ => format!("{:.2}s", value as f64 / 1e6),
    }
}

/// Unix milliseconds as UTC, `2026-11-22T06:12:03.123Z`; a value past the year 9999 (a
/// corrupt file) as the raw number.
pub fn utc(millis: u64) -> String {
    match i64::try_from(millis).ok().and_then(|millis| jiff::Timestamp::from_millisecond(millis).ok()) {
        Some(timestamp) => format!("{timestamp:.3}"),
        None => format!("{millis} ms after 1970-01-01T00:00:00Z"),
    }
}

pub(super) fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_unix_milliseconds() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_795_328_523_123), "2026-11-22T06:22:03.123Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(utc(u64::MAX), "18446744073709551615 ms after 1970-01-01T00:00:00Z");
    }

    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(&["NAME", ">N"]);
        table.row(vec!["a".into(), "1".into()]);
        table.row(vec!["long".into(), "100".into()]);
        assert_eq!(table.render(), "NAME    N\na       1\nlong  100\n");
    }

    #[test]
    fn table_trims_trailing_blanks_and_right_aligns_headers() {
        let mut table = Table::new(&[">ID", "ADDRESS", "DETAIL"]);
        table.row(vec!["7".into(), "192.0.2.1".into(), "-".into()]);
        table.row(vec!["12".into(), "2001:db8::1".into(), "a longer detail".into()]);
        assert_eq!(
            table.render(),
            "ID  ADDRESS      DETAIL\n 7  192.0.2.1    -\n12  2001:db8::1  a longer detail\n"
        );
    }

    #[test]
    fn fields_align_their_values() {
        let text = fields(&[("vip", "web".into()), ("new flow", "slot 3 of 13".into())]);
        assert_eq!(text, "vip       web\nnew flow  slot 3 of 13\n");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(human_bytes(0.0), "0 B");
        assert_eq!(human_bytes(1023.0), "1023 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }

    #[test]
    fn short_durations() {
        assert_eq!(short_duration(850), "850ms");
        assert_eq!(short_duration(12_000), "12s");
        assert_eq!(short_duration(184_000), "3m04s");
        assert_eq!(short_duration(7_500_000), "2h05m");
        assert_eq!(short_duration(273_600_000), "3d04h");
    }
}
