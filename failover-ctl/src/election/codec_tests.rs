//! Codec fixtures: adverts with checksums computed independently of this code (Python's
//! one's-complement sum over the message and the pseudo-header), every discard reason, and
//! IPv4 headers with options.

use super::*;

fn v4(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// VRID 51, priority 100, interval 100 cs, protecting 192.0.2.100; from 192.0.2.1.
fn advert_v4() -> Advert {
    Advert { vrid: 51, priority: 100, interval_cs: 100, addresses: vec![v4("192.0.2.100")] }
}

const SOURCE: &str = "192.0.2.1";

fn received<'a>(message: &'a [u8], source: &str, ttl: u8) -> Received<'a> {
    let source: IpAddr = source.parse().unwrap();
    let destination = if source.is_ipv4() { IpAddr::V4(MULTICAST_V4) } else { IpAddr::V6(MULTICAST_V6) };
    Received { source, destination, ttl, message }
}

#[test]
fn ipv4_checksum_forms_match_an_independent_computation() {
    let advert = advert_v4();
    let pseudo = advert.encode(v4(SOURCE), IpAddr::V4(MULTICAST_V4), ChecksumForm::PseudoHeader);
    assert_eq!(pseudo, [0x31, 51, 100, 1, 0x00, 0x64, 0x05, 0x72, 192, 0, 2, 100]);
    let plain = advert.encode(v4(SOURCE), IpAddr::V4(MULTICAST_V4), ChecksumForm::Rfc9568);
    assert_eq!(plain[6..8], [0xa8, 0x02]);
    assert_eq!(decode(&received(&pseudo, SOURCE, 255), ChecksumForm::PseudoHeader), Ok(advert.clone()));
    assert_eq!(decode(&received(&plain, SOURCE, 255), ChecksumForm::Rfc9568), Ok(advert));
}

#[test]
fn ipv6_always_sums_the_pseudo_header() {
    let advert = Advert { vrid: 7, priority: 200, interval_cs: 10, addresses: vec!["fe80::1".parse().unwrap()] };
    let source: IpAddr = "fe80::2".parse().unwrap();
    for form in [ChecksumForm::PseudoHeader, ChecksumForm::Rfc9568] {
        let message = advert.encode(source, IpAddr::V6(MULTICAST_V6), form);
        assert_eq!(message[6..8], [0x0a, 0x4b], "{form:?}");
        assert_eq!(decode(&received(&message, "fe80::2", 255), form), Ok(advert.clone()));
    }
}

#[test]
fn the_other_checksum_form_is_named_as_such() {
    let advert = advert_v4();
    let pseudo = advert.encode(v4(SOURCE), IpAddr::V4(MULTICAST_V4), ChecksumForm::PseudoHeader);
    let plain = advert.encode(v4(SOURCE), IpAddr::V4(MULTICAST_V4), ChecksumForm::Rfc9568);
    assert_eq!(decode(&received(&pseudo, SOURCE, 255), ChecksumForm::Rfc9568), Err(Discard::ChecksumFormMismatch));
    assert_eq!(decode(&received(&plain, SOURCE, 255), ChecksumForm::PseudoHeader), Err(Discard::ChecksumFormMismatch));
    let mut broken = pseudo.clone();
    broken[7] ^= 1;
    assert_eq!(decode(&received(&broken, SOURCE, 255), ChecksumForm::PseudoHeader), Err(Discard::Checksum));
    // The pseudo-header form depends on the addresses: another source breaks it.
    assert_eq!(decode(&received(&pseudo, "192.0.2.9", 255), ChecksumForm::PseudoHeader), Err(Discard::Checksum));
}

#[test]
fn every_discard_reason_in_rfc_order() {
    let good = advert_v4().encode(v4(SOURCE), IpAddr::V4(MULTICAST_V4), ChecksumForm::PseudoHeader);
    let form = ChecksumForm::PseudoHeader;
    assert_eq!(decode(&received(&good, SOURCE, 254), form), Err(Discard::IpTtl));
    // TTL is checked before anything in the message.
    assert_eq!(decode(&received(&[0x21], SOURCE, 1), form), Err(Discard::IpTtl));
    let mut version2 = good.clone();
    version2[0] = 0x21;
    assert_eq!(decode(&received(&version2, SOURCE, 255), form), Err(Discard::Version));
    let mut other_type = good.clone();
    other_type[0] = 0x32;
    assert_eq!(decode(&received(&other_type, SOURCE, 255), form), Err(Discard::InvalidType));
    assert_eq!(decode(&received(&[], SOURCE, 255), form), Err(Discard::PacketLength));
    for cut in 1..good.len() {
        assert_eq!(decode(&received(&good[..cut], SOURCE, 255), form), Err(Discard::PacketLength), "cut at {cut}");
    }
    let mut longer = good.clone();
    longer.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(decode(&received(&longer, SOURCE, 255), form), Err(Discard::PacketLength));
    let mut count_lies = good.clone();
    count_lies[3] = 2;
    assert_eq!(decode(&received(&count_lies, SOURCE, 255), form), Err(Discard::PacketLength));
    let mixed = Received { source: v4(SOURCE), destination: IpAddr::V6(MULTICAST_V6), ttl: 255, message: &good };
    assert_eq!(decode(&mixed, form), Err(Discard::Family));
}

#[test]
fn reserved_bits_and_the_interval_field() {
    let advert = Advert { vrid: 1, priority: 255, interval_cs: MAX_INTERVAL_CS, addresses: vec![v4("10.0.0.1"), v4("10.0.0.2")] };
    let message = advert.encode(v4("10.0.0.3"), v4("10.0.0.4"), ChecksumForm::Rfc9568);
    assert_eq!(message.len(), HEADER_LEN + 8);
    assert_eq!(message[4..6], [0x0f, 0xff]);
    assert_eq!(decode(&received(&message, "10.0.0.3", 255).with_destination("10.0.0.4"), ChecksumForm::Rfc9568), Ok(advert));
}

impl Received<'_> {
    fn with_destination(mut self, destination: &str) -> Self {
        self.destination = destination.parse().unwrap();
        self
    }
}

/// An IPv4 header (IHL from `options`) around `message`, protocol 112, TTL 255.
fn ipv4_packet(options: &[u8], message: &[u8]) -> Vec<u8> {
    let header_len = 20 + options.len();
    let total = (header_len + message.len()) as u16;
    let mut packet = vec![0x40 | (header_len / 4) as u8, 0xc0];
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0, 255, PROTOCOL, 0, 0, 192, 0, 2, 1, 224, 0, 0, 18]);
    packet.extend_from_slice(options);
    packet.extend_from_slice(message);
    packet
}

#[test]
fn ipv4_header_length_comes_from_ihl() {
    let message = advert_v4().encode(v4(SOURCE), IpAddr::V4(MULTICAST_V4), ChecksumForm::PseudoHeader);
    for options in [&[][..], &[1, 1, 1, 0], &[0x94, 4, 0, 0, 1, 1, 1, 0]] {
        let packet = ipv4_packet(options, &message);
        let (header, payload) = split_ipv4(&packet).unwrap();
        assert_eq!(header, Ipv4Header { source: "192.0.2.1".parse().unwrap(), destination: MULTICAST_V4, ttl: 255 });
        assert_eq!(payload, &message[..], "options of {} bytes", options.len());
        let received = Received { source: header.source.into(), destination: header.destination.into(), ttl: header.ttl, message: payload };
        assert_eq!(decode(&received, ChecksumForm::PseudoHeader), Ok(advert_v4()));
    }
    let mut padded = ipv4_packet(&[], &message);
    padded.extend_from_slice(&[0; 6]);
    assert_eq!(split_ipv4(&padded).unwrap().1, &message[..], "bytes after the total length are not the message");
    let mut short_ihl = ipv4_packet(&[], &message);
    short_ihl[0] = 0x44;
    assert_eq!(split_ipv4(&short_ihl), Err(Discard::PacketLength));
    let mut long_ihl = ipv4_packet(&[], &message);
    long_ihl[0] = 0x4f;
    assert_eq!(split_ipv4(&long_ihl), Err(Discard::PacketLength));
    let mut total_lies = ipv4_packet(&[], &message);
    total_lies[3] = 200;
    assert_eq!(split_ipv4(&total_lies), Err(Discard::PacketLength));
    let mut other_protocol = ipv4_packet(&[], &message);
    other_protocol[9] = 6;
    assert_eq!(split_ipv4(&other_protocol), Err(Discard::PacketLength));
    for cut in 0..20 {
        assert_eq!(split_ipv4(&ipv4_packet(&[], &message)[..cut]), Err(Discard::PacketLength));
    }
}

#[test]
fn discard_names_are_unique() {
    let mut names: Vec<&str> = Discard::ALL.iter().map(|reason| reason.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), Discard::ALL.len());
}

/// An advert from keepalived 2.2.7 (Debian's; `vrrp_version 3`, VRID 51, priority 100,
/// `advert_int 1`, virtual address 192.0.2.100), captured with tcpdump in a namespace: the IPv4
/// packet as it left the interface.
const KEEPALIVED_ADVERT: [u8; 32] = [
    0x45, 0xc0, 0x00, 0x20, 0x00, 0x01, 0x00, 0x00, 0xff, 0x70, 0x18, 0x99, 0xc0, 0x00, 0x02, 0x01, //
    0xe0, 0x00, 0x00, 0x12, 0x31, 0x33, 0x64, 0x01, 0x00, 0x64, 0x05, 0x72, 0xc0, 0x00, 0x02, 0x64,
];

#[test]
fn an_advert_captured_from_keepalived() {
    let (header, message) = split_ipv4(&KEEPALIVED_ADVERT).unwrap();
    assert_eq!(header.ttl, TTL);
    let received = Received { source: header.source.into(), destination: header.destination.into(), ttl: header.ttl, message };
    // keepalived sums the IPv4 pseudo-header.
    assert_eq!(decode(&received, ChecksumForm::PseudoHeader), Ok(advert_v4()));
    assert_eq!(decode(&received, ChecksumForm::Rfc9568), Err(Discard::ChecksumFormMismatch));
    // What we send for the same group is byte-identical.
    assert_eq!(advert_v4().encode(v4(SOURCE), IpAddr::V4(MULTICAST_V4), ChecksumForm::PseudoHeader), message);
}

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn address_v4() -> impl Strategy<Value = IpAddr> {
        any::<[u8; 4]>().prop_map(|octets| IpAddr::V4(Ipv4Addr::from(octets)))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any bytes, any header facts: an answer, never a panic; an accepted advert re-encodes
        /// to the same bytes.
        #[test]
        fn decoding_any_bytes_never_panics(message in prop::collection::vec(any::<u8>(), 0..80), ttl in any::<u8>(), source in address_v4(), pseudo in any::<bool>()) {
            let form = if pseudo { ChecksumForm::PseudoHeader } else { ChecksumForm::Rfc9568 };
            let received = Received { source, destination: IpAddr::V4(MULTICAST_V4), ttl, message: &message };
            if let Ok(advert) = decode(&received, form) {
                // The reserved nibble and bits 12-15 of the interval are not kept.
                let mut again = advert.encode(source, IpAddr::V4(MULTICAST_V4), form);
                again[6..8].copy_from_slice(&message[6..8]);
                prop_assert_eq!(&again[..1], &message[..1]);
                prop_assert_eq!(&again[1..4], &message[1..4]);
                prop_assert_eq!(&again[8..], &message[8..]);
            }
        }

        #[test]
        fn splitting_any_ipv4_packet_never_panics(packet in prop::collection::vec(any::<u8>(), 0..120)) {
            if let Ok((_, message)) = split_ipv4(&packet) {
                prop_assert!(message.len() <= packet.len());
            }
        }

        /// Mutating one byte of a valid advert is either refused or still a consistent advert.
        #[test]
        fn one_changed_byte_is_refused_or_consistent(position in 0usize..12, value in any::<u8>()) {
            let mut message = advert_v4().encode(v4(SOURCE), IpAddr::V4(MULTICAST_V4), ChecksumForm::PseudoHeader);
            let changed = message[position] != value;
            message[position] = value;
            let result = decode(&received(&message, SOURCE, 255), ChecksumForm::PseudoHeader);
            if changed {
                prop_assert!(result.is_err(), "a changed byte at {} passed the checksum", position);
            }
        }

        #[test]
        fn every_encoded_advert_decodes_to_itself(vrid in any::<u8>(), priority in any::<u8>(), interval in 1u16..=MAX_INTERVAL_CS, addresses in prop::collection::vec(address_v4(), 0..20), source in address_v4(), pseudo in any::<bool>()) {
            let form = if pseudo { ChecksumForm::PseudoHeader } else { ChecksumForm::Rfc9568 };
            let advert = Advert { vrid, priority, interval_cs: interval, addresses };
            let message = advert.encode(source, IpAddr::V4(MULTICAST_V4), form);
            let received = Received { source, destination: IpAddr::V4(MULTICAST_V4), ttl: 255, message: &message };
            prop_assert_eq!(decode(&received, form), Ok(advert));
        }
    }
}
