//! Flow and address hashes, computed identically by the data plane and the controller.
//!
//! The data plane picks a Maglev slot from `flow_hash`; the controller's `which` view, tests and
//! benchmarks must predict the same slot, so the function lives here, pure and host-tested.
//! Addresses are `[u32; 4]` words holding the address bytes in network order (as loaded from the
//! packet); IPv4 uses word 0 and leaves words 1..3 zero.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;
const SEED: u32 = 0x5bd1_e995;

/// One block of the murmur3-32 body: mixes `word` into `state`.
#[inline(always)]
const fn round(state: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (state ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// The murmur3 finaliser: full avalanche of a 32-bit state.
#[inline(always)]
pub const fn avalanche(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of a whole 5-tuple. `ports` comes from `ports_word`, `protocol` is the IP protocol
/// number. Both directions of a flow do NOT hash alike: callers that
/// route a reply-direction packet (ICMP errors) swap the tuple back first.
#[inline(always)]
pub fn flow_hash(source: &[u32; 4], destination: &[u32; 4], ports: u32, protocol: u32) -> u32 {
    let mut h = SEED ^ protocol;
    h = round(h, source[0]);
    h = round(h, source[1]);
    h = round(h, source[2]);
    h = round(h, source[3]);
    h = round(h, destination[0]);
    h = round(h, destination[1]);
    h = round(h, destination[2]);
    h = round(h, destination[3]);
    h = round(h, ports);
    avalanche(h ^ 40)
}

/// The two network-order port fields as one word, in packet byte order (no swaps on the packet
/// path; the host computes the same word from the same fields).
#[inline(always)]
pub const fn ports_word(source_port: u16, destination_port: u16) -> u32 {
    let s = source_port.to_ne_bytes();
    let d = destination_port.to_ne_bytes();
    u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
}

/// The hash that picks a new flow's table slot: the whole 5-tuple, or the source address alone
/// for VIPs in source-affinity mode.
#[inline(always)]
pub fn flow_key_hash(key: &crate::maps::FlowKey, source_only: bool) -> u32 {
    if source_only {
        source_hash(&key.source)
    } else {
        flow_hash(
            &key.source,
            &key.destination,
            ports_word(key.source_port, key.destination_port),
            key.protocol as u32,
        )
    }
}

/// Hash of the source address alone: the per-VIP "source affinity" mode, for clients whose
/// source port changes between connections that must land on one backend.
#[inline(always)]
pub fn source_hash(source: &[u32; 4]) -> u32 {
    let mut h = SEED;
    h = round(h, source[0]);
    h = round(h, source[1]);
    h = round(h, source[2]);
    h = round(h, source[3]);
    avalanche(h ^ 16)
}

/// Maps a 32-bit hash onto `0..size` with a multiply and a shift (no division on the packet
/// path). Slightly non-uniform only when `size` is not far below 2^32, which tables never are.
#[inline(always)]
pub const fn slot_of(hash: u32, size: u32) -> u32 {
    ((hash as u64 * size as u64) >> 32) as u32
}

/// Index into the VIP address filter (`maps::ADDRESS_FILTER_SLOTS` entries).
#[inline(always)]
pub const fn address_filter_index(address: &[u32; 4]) -> u32 {
    let folded = address[0]
        ^ address[1].rotate_left(8)
        ^ address[2].rotate_left(16)
        ^ address[3].rotate_left(24);
    // Fibonacci hashing: one multiply, the top bits index the filter. A filter only needs
    // spread, not avalanche; a collision costs one hash lookup.
    folded.wrapping_mul(0x9e37_79b1) >> (32 - crate::maps::ADDRESS_FILTER_SLOTS.trailing_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_depends_on_every_field() {
        let s = [0x0a00_0001, 0, 0, 0];
        let d = [0x0a00_0002, 0, 0, 0];
        let base = flow_hash(&s, &d, 0x1234_0050, 6);
        assert_ne!(base, flow_hash(&d, &s, 0x1234_0050, 6));
        assert_ne!(base, flow_hash(&s, &d, 0x1235_0050, 6));
        assert_ne!(base, flow_hash(&s, &d, 0x1234_0050, 17));
        assert_ne!(base, flow_hash(&[0x0a00_0001, 0, 0, 1], &d, 0x1234_0050, 6));
        assert_eq!(base, flow_hash(&s, &d, 0x1234_0050, 6));
    }

    #[test]
    fn flow_hash_spreads_source_ports_evenly() {
        // 65536 source ports into 16 buckets: each bucket within 5% of the mean.
        let mut buckets = [0u32; 16];
        for port in 0..65536u32 {
            let h = flow_hash(&[0x0a00_0001, 0, 0, 0], &[0xc0a8_0001, 0, 0, 0], port << 16 | 80, 6);
            buckets[slot_of(h, 16) as usize] += 1;
        }
        for count in buckets {
            assert!((3891..=4301).contains(&count), "bucket count {count}");
        }
    }

    #[test]
    fn slot_of_stays_in_range() {
        for h in [0, 1, u32::MAX, 0x8000_0000, 12345] {
            assert!(slot_of(h, 65537) < 65537);
            assert!(slot_of(h, 7) < 7);
        }
        assert_eq!(slot_of(u32::MAX, 65537), 65536);
        assert_eq!(slot_of(0, 65537), 0);
    }

    #[test]
    fn source_hash_ignores_nothing_of_the_source() {
        assert_ne!(source_hash(&[1, 0, 0, 0]), source_hash(&[1, 0, 0, 1]));
        assert_ne!(source_hash(&[1, 0, 0, 0]), source_hash(&[2, 0, 0, 0]));
    }

    #[test]
    fn address_filter_index_in_range() {
        for a in 0..10_000u32 {
            assert!(address_filter_index(&[a, a, 0, a]) < crate::maps::ADDRESS_FILTER_SLOTS);
        }
    }
}
