//! Mutations of generated frames: bit flips, truncation (at one length, or at every length for
//! a few frames), IP lengths and header lengths that lie, random protocol numbers (0 included),
//! random versions and EtherTypes, overwritten and appended bytes. Checksums are left stale on
//! purpose: the data plane does not verify them (the kernel does, after XDP_PASS).

use rand::{rngs::StdRng, seq::IndexedRandom, Rng};

use super::generate::{Generated, Layout};

/// Share of frames that are mutated at all.
const MUTATED: f64 = 0.35;
/// Share of frames whose every truncation is run, one frame per length.
const SWEPT: f64 = 0.0005;
/// The kernel refuses test frames shorter than an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// A frame to run and how it came about.
pub struct Case {
    pub frame: Vec<u8>,
    pub label: String,
}

/// The frames to run for one generated frame: itself, one mutation of it, or (rarely) every
/// truncation of it. Every frame is between `MIN_FRAME` and `limit` bytes long.
pub fn cases(rng: &mut StdRng, generated: Generated, limit: usize) -> Vec<Case> {
    let Generated { mut frame, layout, kind } = generated;
    frame.truncate(limit);
    if rng.random_bool(SWEPT) {
        return (MIN_FRAME..frame.len())
            .map(|length| Case { frame: frame[..length].to_vec(), label: format!("{kind}, cut to {length} of {} (sweep)", frame.len()) })
            .collect();
    }
    if !rng.random_bool(MUTATED) {
        return vec![Case { frame, label: kind.to_string() }];
    }
    let mut label = kind.to_string();
    let rounds = if rng.random_bool(0.2) { 2 } else { 1 };
    for _ in 0..rounds {
        let name = mutate(rng, &mut frame, layout, limit);
        label.push_str(", ");
        label.push_str(name);
    }
    vec![Case { frame, label }]
}

/// Applies one mutation; returns its name.
fn mutate(rng: &mut StdRng, frame: &mut Vec<u8>, layout: Layout, limit: usize) -> &'static str {
    match rng.random_range(0..100) {
        0..30 => {
            flip_bits(rng, frame, layout);
            "bits flipped"
        }
        30..45 => {
            frame.truncate(rng.random_range(MIN_FRAME..=frame.len()));
            "truncated"
        }
        45..60 => lie_about_lengths(rng, frame, layout),
        60..70 => {
            set_protocol(rng, frame, layout);
            "protocol changed"
        }
        70..82 => {
            for _ in 0..rng.random_range(1..=8) {
                let at = rng.random_range(0..frame.len());
                frame[at] = rng.random();
            }
            "bytes overwritten"
        }
        82..88 => {
            if let Some(byte) = frame.get_mut(layout.l3) {
                *byte = (rng.random_range(0..16u8) << 4) | (*byte & 0x0f);
            }
            "IP version changed"
        }
        88..94 => {
            let room = limit.saturating_sub(frame.len()).min(64);
            for _ in 0..rng.random_range(0..=room) {
                frame.push(rng.random());
            }
            "bytes appended"
        }
        _ => {
            // The innermost EtherType, or a tag's.
            let at = *[12usize, 16, 20, layout.l3.saturating_sub(2)].choose(rng).expect("offsets");
            let value: u16 = *[0x0800u16, 0x86dd, 0x8100, 0x88a8, rng.random()].choose(rng).expect("types");
            if at + 2 <= frame.len() {
                frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
            }
            "EtherType changed"
        }
    }
}

/// Flips one to four bits, mostly in the headers.
fn flip_bits(rng: &mut StdRng, frame: &mut [u8], layout: Layout) {
    let headers = (layout.l4 + 48).min(frame.len());
    for _ in 0..rng.random_range(1..=4) {
        let at = if rng.random_bool(0.8) { rng.random_range(0..headers) } else { rng.random_range(0..frame.len()) };
        frame[at] ^= 1 << rng.random_range(0..8);
    }
}

/// Rewrites IPv4 IHL / total length, IPv6 payload length, or the UDP length with a value that
/// is off by a little, by a lot, or absurd.
fn lie_about_lengths(rng: &mut StdRng, frame: &mut [u8], layout: Layout) -> &'static str {
    let l3 = layout.l3;
    let Some(&first) = frame.get(l3) else { return "lengths unchanged (no IP header)" };
    let v6 = first >> 4 == 6;
    let field = if v6 { l3 + 4 } else { l3 + 2 };
    match rng.random_range(0..10) {
        0..3 if !v6 => {
            frame[l3] = (first & 0xf0) | rng.random_range(0..16u8);
            "IHL lied about"
        }
        0..8 => {
            if field + 2 > frame.len() {
                return "lengths unchanged (short frame)";
            }
            let current = u16::from_be_bytes([frame[field], frame[field + 1]]);
            let value = match rng.random_range(0..6) {
                0 => 0,
                1 => current.wrapping_add(1),
                2 => current.wrapping_sub(1),
                3 => current.wrapping_add(rng.random_range(2..64)),
                4 => current.wrapping_sub(rng.random_range(2..64)),
                _ => rng.random(),
            };
            frame[field..field + 2].copy_from_slice(&value.to_be_bytes());
            if v6 { "IPv6 payload length lied about" } else { "IPv4 total length lied about" }
        }
        _ => {
            let udp_length = layout.l4 + 4;
            if udp_length + 2 <= frame.len() {
                frame[udp_length..udp_length + 2].copy_from_slice(&rng.random::<u16>().to_be_bytes());
            }
            "L4 length field lied about"
        }
    }
}

/// Sets the IPv4 protocol or IPv6 next header: 0 often, a served one, or anything.
fn set_protocol(rng: &mut StdRng, frame: &mut [u8], layout: Layout) {
    let Some(&first) = frame.get(layout.l3) else { return };
    let at = if first >> 4 == 6 { layout.l3 + 6 } else { layout.l3 + 9 };
    let value = match rng.random_range(0..4) {
        0 => 0,
        1 => *[1u8, 6, 17, 58].choose(rng).expect("protocols"),
        _ => rng.random(),
    };
    if let Some(byte) = frame.get_mut(at) {
        *byte = value;
    }
}
