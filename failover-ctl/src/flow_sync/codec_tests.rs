//! The flow-sync datagram: round trips, the exact layout, and every way a hostile or broken
//! datagram is refused (whole, with its reason).

use proptest::prelude::*;

use super::*;

fn v4_flow(port: u16) -> SyncedFlow {
    SyncedFlow {
        client: SocketAddr::new("192.0.2.7".parse().unwrap(), port),
        vip: "198.51.100.1:80".parse().unwrap(),
        protocol: PROTOCOL_TCP,
        backend: "10.0.0.2".parse().unwrap(),
    }
}

fn v6_flow() -> SyncedFlow {
    SyncedFlow {
        client: "[2001:db8::7]:5353".parse().unwrap(),
        vip: "[2001:db8:100::1]:53".parse().unwrap(),
        protocol: PROTOCOL_UDP,
        // A 6in4 backend: the backend's family is its own.
        backend: "10.0.0.3".parse().unwrap(),
    }
}

#[test]
fn flows_round_trip_in_full_datagrams() {
    let flows: Vec<SyncedFlow> = (0..RECORDS_PER_DATAGRAM as u16 * 2 + 3).map(|port| v4_flow(30_000 + port)).chain([v6_flow()]).collect();
    let datagrams = encode(7, &flows);
    assert_eq!(datagrams.len(), 3);
    assert!(datagrams.iter().all(|datagram| datagram.len() <= MAX_DATAGRAM));
    assert_eq!(datagrams[0].len(), HEADER_LEN + RECORDS_PER_DATAGRAM * RECORD_LEN);
    let parts: Vec<Datagram> = datagrams.iter().map(|datagram| decode(datagram).unwrap()).collect();
    assert!(parts.iter().all(|part| part.sequence == 7 && part.total as usize == flows.len()));
    let decoded: Vec<SyncedFlow> = parts.into_iter().flat_map(|part| part.flows).collect();
    assert_eq!(decoded, flows);
    // An empty set is one datagram: it tells the receiver the sender keeps nothing now.
    let empty = encode(8, &[]);
    assert_eq!(empty.len(), 1);
    assert_eq!(decode(&empty[0]), Ok(Datagram { sequence: 8, total: 0, flows: Vec::new() }));
}

#[test]
fn a_set_larger_than_the_limit_is_cut_at_it() {
    let flows = vec![v4_flow(1); MAX_SET + 5];
    let datagrams = encode(1, &flows);
    let parts: Vec<Datagram> = datagrams.iter().map(|datagram| decode(datagram).unwrap()).collect();
    assert_eq!(parts[0].total as usize, MAX_SET);
    assert_eq!(parts.iter().map(|part| part.flows.len()).sum::<usize>(), MAX_SET);
}

#[test]
fn the_layout_is_the_documented_one() {
    let datagram = &encode(0x0102_0304, &[v4_flow(40_000)])[0];
    let mut expected = b"FOFS\x01\x01\x00\x01\x01\x02\x03\x04\x00\x00\x00\x01".to_vec();
    expected.extend_from_slice(&[4, 6, 4, 0, 0x9c, 0x40, 0, 80]);
    for address in [[192, 0, 2, 7], [198, 51, 100, 1], [10, 0, 0, 2]] {
        expected.extend_from_slice(&address);
        expected.extend_from_slice(&[0; 12]);
    }
    assert_eq!(datagram, &expected);
}

#[test]
fn broken_datagrams_are_refused_whole_with_their_reason() {
    let good = encode(3, &[v4_flow(1), v6_flow()]).remove(0);
    let with = |index: usize, byte: u8| {
        let mut datagram = good.clone();
        datagram[index] = byte;
        datagram
    };
    assert_eq!(decode(&good[..HEADER_LEN - 1]), Err(Discard::Short));
    assert_eq!(decode(&with(0, b'X')), Err(Discard::Magic));
    assert_eq!(decode(&with(4, 2)), Err(Discard::Version));
    assert_eq!(decode(&with(5, 9)), Err(Discard::Kind));
    assert_eq!(decode(&with(7, 3)), Err(Discard::Length), "a count past the end");
    assert_eq!(decode(&good[..good.len() - 1]), Err(Discard::Length));
    let mut longer = good.clone();
    longer.push(0);
    assert_eq!(decode(&longer), Err(Discard::Length));
    assert_eq!(decode(&with(15, 1)), Err(Discard::Total), "a total below the records carried");
    assert_eq!(decode(&with(12, 1)), Err(Discard::Total), "a total past the limit");
    // The second record is bad: the first, good one is not taken either.
    let second = HEADER_LEN + RECORD_LEN;
    assert_eq!(decode(&with(second, 5)), Err(Discard::Family));
    assert_eq!(decode(&with(second + 1, 1)), Err(Discard::Protocol));
    assert_eq!(decode(&with(second + 2, 0)), Err(Discard::Family), "backend family");
    assert_eq!(decode(&with(second + 3, 1)), Err(Discard::Reserved));
    // An IPv4 address with bytes past its four.
    assert_eq!(decode(&with(HEADER_LEN + 8 + 4, 1)), Err(Discard::Family));
    assert_eq!(decode(&with(second + 40 + 15, 1)), Err(Discard::Family), "the IPv4 backend of the IPv6 record");
    assert_eq!(
        decode(b"FOFS\x01\x01\x00\x00\x00\x00\x00\x09\x00\x00\x00\x00"),
        Ok(Datagram { sequence: 9, total: 0, flows: Vec::new() }),
        "an empty set is valid and carries nothing"
    );
}

proptest! {
    /// Any bytes: a verdict, never a panic.
    #[test]
    fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
    }

    /// A valid header over any record bytes: a verdict, never a panic; what decodes encodes back
    /// to the same bytes.
    #[test]
    fn any_records_decode_to_what_encodes_them(records in proptest::collection::vec(any::<u8>(), 0..3 * RECORD_LEN)) {
        let count = records.len() / RECORD_LEN;
        let mut datagram = b"FOFS\x01\x01".to_vec();
        datagram.extend_from_slice(&(count as u16).to_be_bytes());
        datagram.extend_from_slice(&5u32.to_be_bytes());
        datagram.extend_from_slice(&(count as u32).to_be_bytes());
        datagram.extend_from_slice(&records[..count * RECORD_LEN]);
        if let Ok(part) = decode(&datagram) {
            prop_assert_eq!(&encode(5, &part.flows)[0], &datagram);
        }
    }
}
