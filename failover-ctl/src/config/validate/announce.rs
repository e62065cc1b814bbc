//! Validation of `[announce]`: a table the kernel does not reserve and a route protocol number
//! above the kernel's own, so the controller's routes are told apart from every other.

use super::super::schema::RawAnnounce;
use super::*;

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
        Announce { enabled: raw.enabled.unwrap_or(false), table, protocol, withdraw_grace }
    }
}
