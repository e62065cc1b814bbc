//! Conversions between `std::net` addresses and the data plane's network-order words.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use failover_common::maps::{FAMILY_IPV4, FAMILY_IPV6};

/// The address as four words of network-order bytes (IPv4 in word 0), and its family.
pub fn to_words(address: IpAddr) -> ([u32; 4], u8) {
    match address {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_IPV4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([word(0), word(4), word(8), word(12)], FAMILY_IPV6)
        }
    }
}

/// The inverse of `to_words`; `None` for an unknown family.
pub fn from_words(words: &[u32; 4], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_IPV4 => Some(IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))),
        FAMILY_IPV6 => {
            let mut octets = [0u8; 16];
            for (i, word) in words.iter().enumerate() {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

/// A MAC address as `02:00:5e:00:00:01`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|byte| format!("{byte:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for text in ["10.1.2.3", "fd00::1:2", "255.255.255.255", "::"] {
            let address: IpAddr = text.parse().unwrap();
            let (words, family) = to_words(address);
            assert_eq!(from_words(&words, family), Some(address));
        }
        assert_eq!(to_words("1.2.3.4".parse().unwrap()).0[0].to_ne_bytes(), [1, 2, 3, 4]);
        assert_eq!(from_words(&[0; 4], 9), None);
    }
}
