//! Flow and address hashes, computed identically by the data plane and the controller.
//!
//! The data plane picks a Maglev slot from `flow_hash`; the controller's `which` view, tests and
//! benchmarks must predict the same slot, so the function lives here, pure and host-tested.
//! Addresses are `[u32; 4]` words holding the address bytes in network order (as loaded from the
//! packet); IPv4 uses word 0 and leaves words 1..3 zero.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;
const SEED: u32 = 0x5bd1_e995;

/// Keys of the flow hash: odd 64-bit constants drawn once from a seeded generator (Python's
/// `random.Random(0x5eedf10c)`, then `| 1`). `FLOW_KEYS[0]` is the offset; the others weigh
/// the source words, the destination words, the ports word and the protocol.
const FLOW_KEYS: [u64; 11] = [
    0xa0c5_cec4_2ff8_b4bb,
    0x9537_840b_2db8_72f5,
    0x3eb6_5767_c9a3_a7a3,
    0x9268_67d1_00c6_f6f7,
    0xa1b9_da35_9e48_7bc7,
    0xa693_9fe9_865f_228d,
    0x4425_cee4_7aa5_35e5,
    0x2420_0f23_0b7c_bbff,
    0x2254_244f_6616_0c9b,
    0x0ab5_83b1_6733_59c3,
    0x2a68_6bbf_b492_ef21,
];
/// The multiplier of [`finish`].
const FINISH: u64 = 0x16ef_dbbe_0c26_c87b;

/// One block of the murmur3-32 body: mixes `word` into `state`.
#[inline(always)]
const fn round(state: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (state ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// The murmur3 finaliser: full avalanche of a 32-bit state.
#[inline(always)]
const fn avalanche(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The 32-bit result of a multilinear sum: its high half folded onto the low one and
/// multiplied once more, so the low bits (a flow's bucket) and the high bits (its table slot,
/// see [`slot_of`]) both depend on every input bit.
#[inline(always)]
const fn finish(sum: u64) -> u32 {
    ((sum ^ (sum >> 32)).wrapping_mul(FINISH) >> 32) as u32
}

/// Hash of a whole 5-tuple. `ports` comes from `ports_word`, `protocol` is the IP protocol
/// number. Both directions of a flow do NOT hash alike: callers that
/// route a reply-direction packet (ICMP errors) swap the tuple back first.
///
/// A multilinear hash (each 32-bit word times its own 64-bit key, summed, then [`finish`]):
/// the ten multiplications are independent of each other, where murmur3's rounds were a chain
/// of ten; on the packet path it costs a quarter as much (see DESIGN.md).
#[inline(always)]
pub fn flow_hash(source: &[u32; 4], destination: &[u32; 4], ports: u32, protocol: u32) -> u32 {
    let term = |word: u32, key: u64| u64::from(word).wrapping_mul(key);
    let sources = term(source[0], FLOW_KEYS[1])
        .wrapping_add(term(source[1], FLOW_KEYS[2]))
        .wrapping_add(term(source[2], FLOW_KEYS[3]))
        .wrapping_add(term(source[3], FLOW_KEYS[4]));
    let destinations = term(destination[0], FLOW_KEYS[5])
        .wrapping_add(term(destination[1], FLOW_KEYS[6]))
        .wrapping_add(term(destination[2], FLOW_KEYS[7]))
        .wrapping_add(term(destination[3], FLOW_KEYS[8]));
    let rest = FLOW_KEYS[0].wrapping_add(term(ports, FLOW_KEYS[9])).wrapping_add(term(protocol, FLOW_KEYS[10]));
    finish(sources.wrapping_add(destinations).wrapping_add(rest))
}

/// The `VIP_SLOTS` entry of a service: its address and its `maps::service_word` (port,
/// protocol, family), hashed as the flow hash hashes (independent products, `finish`).
#[inline(always)]
pub fn service_slot(address: &[u32; 4], service: u32) -> u32 {
    let term = |word: u32, key: u64| u64::from(word).wrapping_mul(key);
    let sum = FLOW_KEYS[0]
        .wrapping_add(term(address[0], FLOW_KEYS[5]))
        .wrapping_add(term(address[1], FLOW_KEYS[6]))
        .wrapping_add(term(address[2], FLOW_KEYS[7]))
        .wrapping_add(term(address[3], FLOW_KEYS[8]))
        .wrapping_add(term(service, FLOW_KEYS[9]));
    finish(sum) & (crate::maps::VIP_SLOTS - 1)
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

    /// A small deterministic generator for the tests below (xorshift64*).
    struct Words(u64);

    impl Words {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
        }

        /// A random 5-tuple as the hash's inputs: ten words (source, destination, ports,
        /// protocol).
        fn tuple(&mut self) -> [u32; 10] {
            let mut words = [0u32; 10];
            for word in &mut words {
                *word = self.next();
            }
            words[9] &= 0xff;
            words
        }
    }

    fn hash_words(words: &[u32; 10]) -> u32 {
        flow_hash(&[words[0], words[1], words[2], words[3]], &[words[4], words[5], words[6], words[7]], words[8], words[9])
    }

    #[test]
    fn flow_hash_output_bits_each_follow_every_input_bit() {
        // Strict avalanche, measured: flipping any one input bit flips each output bit in about
        // half of 2000 random tuples.
        let mut words = Words(0x1234_5678_9abc_def1);
        let mut samples = [[0u32; 10]; 2000];
        for sample in &mut samples {
            *sample = words.tuple();
        }
        for word in 0..10 {
            let bits = if word == 9 { 8 } else { 32 };
            for bit in 0..bits {
                let mut flips = [0u32; 32];
                for sample in &samples {
                    let mut flipped = *sample;
                    flipped[word] ^= 1 << bit;
                    let difference = hash_words(sample) ^ hash_words(&flipped);
                    for (out, count) in flips.iter_mut().enumerate() {
                        *count += (difference >> out) & 1;
                    }
                }
                for (out, count) in flips.iter().enumerate() {
                    assert!((700..=1300).contains(count), "input word {word} bit {bit} flips output bit {out} in {count} of 2000");
                }
            }
        }
    }

    #[test]
    fn flow_hash_spreads_buckets_and_slots_independently() {
        // The bucket (low bits) and the slot (`slot_of`, high bits) of 64K flows, sequential
        // client ports and random clients, counted in (bucket % 16, slot % 16) cells: Pearson's
        // chi-square over the 256 cells below 370 (a uniform, independent pair gives 255 +- 23;
        // 370 is five deviations), so neither is uneven and they are not tied to each other.
        let mut words = Words(0x0bad_cafe_f00d_d00d);
        for random in [false, true] {
            let mut cells = [[0u32; 16]; 16];
            for n in 0..65536u32 {
                let h = if random {
                    hash_words(&words.tuple())
                } else {
                    flow_hash(&[0x0a00_0001, 0, 0, 0], &[0xc0a8_0001, 0, 0, 0], n << 16 | 80, 6)
                };
                cells[(h & 15) as usize][(slot_of(h, 65537) % 16) as usize] += 1;
            }
            let chi_square: f64 = cells.iter().flatten().map(|count| (f64::from(*count) - 256.0).powi(2) / 256.0).sum();
            assert!(chi_square < 370.0, "chi-square {chi_square:.0} over 256 cells, random clients: {random}");
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
