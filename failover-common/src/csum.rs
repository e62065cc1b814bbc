//! Internet checksum helpers (RFC 1071, incremental update per RFC 1624).
//!
//! Sums are kept unfolded in a `u32`/`u64` while words are added and folded once at the end.
//! Words are summed in memory order: the one's-complement sum is byte-order independent, so a
//! checksum computed over network-order bytes read as native `u16`s is stored back as-is.

/// Folds a wide one's-complement sum into 16 bits (not inverted).
#[inline(always)]
pub const fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum field value for data whose words sum to `sum`.
#[inline(always)]
pub const fn finish(sum: u64) -> u16 {
    !fold(sum)
}

/// Sum of the `u16` words of `bytes` in memory order; an odd trailing byte is padded with zero
/// (RFC 1071 §4.1).
pub fn sum_bytes(bytes: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u16::from_ne_bytes([pair[0], pair[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += u16::from_ne_bytes([*last, 0]) as u64;
    }
    sum
}

/// Checksum of a whole buffer: the value to store in its (zeroed) checksum field.
pub fn checksum(bytes: &[u8]) -> u16 {
    finish(sum_bytes(bytes))
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word changed from `old` to `new`
/// (all three in memory order).
#[inline(always)]
pub const fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u64 + !old as u64 + new as u64)
}

/// RFC 1624 for a 32-bit field (two words).
#[inline(always)]
pub const fn replace_u32(check: u16, old: u32, new: u32) -> u16 {
    let sum = !check as u64
        + (!(old as u16)) as u64
        + (!((old >> 16) as u16)) as u64
        + (new as u16) as u64
        + ((new >> 16) as u16) as u64;
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 1071 §3 example: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
    #[test]
    fn rfc1071_example() {
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        let folded = fold(sum_bytes(&bytes));
        assert_eq!(folded.to_ne_bytes(), [0xdd, 0xf2]);
    }

    #[test]
    fn ipv4_header_checksum_verifies_to_zero() {
        // A real IPv4 header (checksum 0xb861 at bytes 10..12).
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let check = checksum(&header);
        assert_eq!(check.to_ne_bytes(), [0xb8, 0x61]);
        header[10..12].copy_from_slice(&check.to_ne_bytes());
        assert_eq!(checksum(&header), 0);
    }

    #[test]
    fn incremental_update_matches_full_recompute() {
        let mut data = [0x08u8, 0x00, 0x12, 0x34, 0xab, 0xcd, 0x00, 0x01, 0xfe, 0xff];
        let check = checksum(&data);
        let old = u16::from_ne_bytes([data[0], data[1]]);
        data[0] = 0x00; // ICMP echo request -> echo reply
        let new = u16::from_ne_bytes([data[0], data[1]]);
        assert_eq!(replace_u16(check, old, new), checksum(&data));

        let old32 = u32::from_ne_bytes([data[4], data[5], data[6], data[7]]);
        data[4..8].copy_from_slice(&[0x0a, 0x00, 0x00, 0x09]);
        let new32 = u32::from_ne_bytes([data[4], data[5], data[6], data[7]]);
        assert_eq!(replace_u32(checksum(&[0x00, 0x00, 0x12, 0x34, 0xab, 0xcd, 0x00, 0x01, 0xfe, 0xff]), old32, new32), checksum(&data));
    }

    #[test]
    fn odd_length_is_zero_padded() {
        assert_eq!(sum_bytes(&[0x12]), sum_bytes(&[0x12, 0x00]));
    }
}
