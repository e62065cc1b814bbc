//! The value parsers: durations (humantime), jitter, addresses, prefixes and MAC addresses,
//! each returning the message a problem carries.

use std::net::IpAddr;
use std::time::Duration;

use super::Prefix;

/// Parses a duration through humantime: "500ms", "30s", "2m", and also "1h", "1.5s" or
/// "2m 30s". At most `u64::MAX` milliseconds, the longest the daemon's arithmetic is safe with.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid =
        || format!("expected a duration such as \"500ms\", \"30s\" or \"2m\", got {text:?}");
    match humantime::parse_duration(text) {
        Ok(duration) if duration <= Duration::from_millis(u64::MAX) => Ok(duration),
        _ => Err(invalid()),
    }
}

pub(super) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("must be longer than zero, got {text:?}"));
    }
    Ok(duration)
}

pub(super) fn parse_jitter(text: &str) -> Result<Jitter, String> {
    match text.strip_suffix('%') {
        Some(percent) => match percent.parse::<u32>() {
            Ok(percent) if percent <= 100 => Ok(Jitter::Percent(percent)),
            _ => Err(format!(
                "expected a percentage from \"0%\" to \"100%\" or a duration, got {text:?}"
            )),
        },
        None => parse_duration(text).map(Jitter::Fixed),
    }
}

pub(super) fn parse_address(text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("expected an IPv4 or IPv6 address, got {text:?}"))
}

/// Parses "192.0.2.0/24" or "2001:db8::/64"; host bits must be zero.
pub fn parse_prefix(text: &str) -> Result<Prefix, String> {
    let invalid =
        || format!("expected a prefix such as \"192.0.2.0/24\" or \"2001:db8::/64\", got {text:?}");
    let (address, length) = text.split_once('/').ok_or_else(invalid)?;
    let address: IpAddr = address.parse().map_err(|_| invalid())?;
    let length: u8 = length.parse().map_err(|_| invalid())?;
    let host_bits_set = match address {
        IpAddr::V4(address) => {
            if length > 32 {
                return Err(invalid());
            }
            u32::from(address)
                .checked_shl(u32::from(length))
                .unwrap_or(0)
                != 0
        }
        IpAddr::V6(address) => {
            if length > 128 {
                return Err(invalid());
            }
            u128::from(address)
                .checked_shl(u32::from(length))
                .unwrap_or(0)
                != 0
        }
    };
    if host_bits_set {
        return Err(format!(
            "host bits are set in {text:?}; give the network address"
        ));
    }
    Ok(Prefix { address, length })
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let invalid = || format!("expected a MAC address such as \"02:00:00:00:00:01\", got {text:?}");
    let mut mac = [0; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(invalid)?;
        if part.len() != 2 {
            return Err(invalid());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(mac)
}

/// `jitter` as written: a share of the interval or a fixed duration.
#[derive(Debug, Clone, Copy)]
pub(super) enum Jitter {
    Percent(u32),
    Fixed(Duration),
}

impl Jitter {
    pub(super) fn resolve(self, interval: Duration) -> Duration {
        match self {
            Self::Percent(percent) => interval * percent / 100,
            Self::Fixed(duration) => duration,
        }
    }
}
