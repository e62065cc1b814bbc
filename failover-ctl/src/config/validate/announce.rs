//! Validation of `[announce]`: a table the kernel does not reserve and a route protocol number
//! above the kernel's own, so the controller's routes are told apart from every other.

use super::super::schema::RawAnnounce;
use super::*;

/// A longer hold-down keeps a healthy node out of the router's set for no benefit.
const MAX_REJOIN_DELAY: Duration = Duration::from_secs(600);

impl Validator {
    pub(super) fn announce(&mut self, raw: RawAnnounce) -> Announce {
        let defaults = Announce::default();
        let table = match raw.table {
            None => defaults.table,
            // 0 unspec, 253 default, 254 main, 255 local.
            Some(table) => u32::try_from(table).ok().filter(|table| !matches!(table, 0 | 253..=255)).unwrap_or_else(|| {
                self.problem("announce.table", format!("must be a table of its own: 1 to 4294967295 except 253, 254 and 255, got {table}"));
                defaults.table
            }),
        };
        let protocol = match raw.protocol {
            None => defaults.protocol,
            Some(protocol) => u8::try_from(protocol).ok().filter(|protocol| (5..=254).contains(protocol)).unwrap_or_else(|| {
                self.problem("announce.protocol", format!("must be a route protocol number from 5 to 254 (0-4 are the kernel's), got {protocol}"));
                defaults.protocol
            }),
        };
        let withdraw_grace = self.field("announce.withdraw_grace", raw.withdraw_grace.as_deref(), defaults.withdraw_grace, parse_duration);
        let rejoin_delay = raw.rejoin_delay.as_deref().map(|text| {
            let delay = self.field("announce.rejoin_delay", Some(text), Duration::ZERO, parse_duration);
            if delay > MAX_REJOIN_DELAY {
                self.problem("announce.rejoin_delay", format!("at most {}, got {text}", humantime::format_duration(MAX_REJOIN_DELAY)));
            }
            delay
        });
        Announce { enabled: raw.enabled.unwrap_or(false), table, protocol, withdraw_grace, rejoin_delay }
    }
}
