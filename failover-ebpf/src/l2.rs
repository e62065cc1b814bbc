//! The L2 header (Ethernet plus up to two VLAN tags) as a value, so that it can be moved when a
//! tunnel header is pushed or popped in front of the IP header.
//!
//! MAC addresses are held as six `u16` words and moved with single volatile loads and stores:
//! a copy of a `[u8; 6]` into packet memory becomes a call to a byte-loop `memmove` in BPF
//! (LLVM cannot prove the stack and the packet do not overlap), and plain word loops get turned
//! back into that call.

use aya_ebpf::programs::XdpContext;

use crate::{headers::ETHERNET_LEN, packet::at};

/// Destination and source MAC (words 0..3 and 3..6, wire order), the VLAN tags in between
/// (TPID + control, as on the wire), and the number of tags.
#[derive(Clone, Copy)]
pub struct L2 {
    pub addresses: [u16; 6],
    pub tags: [u32; 2],
    pub tag_count: usize,
}

/// A MAC address as three wire-order words.
#[inline(always)]
pub fn mac_words(mac: &[u8; 6]) -> [u16; 3] {
    [
        u16::from_ne_bytes([mac[0], mac[1]]),
        u16::from_ne_bytes([mac[2], mac[3]]),
        u16::from_ne_bytes([mac[4], mac[5]]),
    ]
}

impl L2 {
    /// Bytes of L2 header: 14, 18 or 22.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ETHERNET_LEN + self.tag_count * 4
    }

    /// Reads the L2 header of a packet whose IP header starts at `l3_offset` (14, 18 or 22).
    #[inline(always)]
    pub fn read(ctx: &XdpContext, l3_offset: usize) -> Option<L2> {
        let words: *mut [u16; 6] = at(ctx, 0)?;
        let mut l2 = L2 { addresses: [0; 6], tags: [0; 2], tag_count: 0 };
        let words = words as *const u16;
        for i in 0..6 {
            // SAFETY: `at` checked the 12 bytes are inside the packet.
            l2.addresses[i] = unsafe { words.add(i).read_volatile() };
        }
        if l3_offset >= ETHERNET_LEN + 4 {
            let tag: *mut u32 = at(ctx, 12)?;
            // SAFETY: checked by `at`.
            l2.tags[0] = unsafe { tag.read_unaligned() };
            l2.tag_count = 1;
        }
        if l3_offset >= ETHERNET_LEN + 8 {
            let tag: *mut u32 = at(ctx, 16)?;
            // SAFETY: checked by `at`.
            l2.tags[1] = unsafe { tag.read_unaligned() };
            l2.tag_count = 2;
        }
        Some(l2)
    }

    /// Sets both MAC addresses.
    #[inline(always)]
    pub fn set_addresses(&mut self, destination: &[u8; 6], source: &[u8; 6]) {
        let (d, s) = (mac_words(destination), mac_words(source));
        self.addresses = [d[0], d[1], d[2], s[0], s[1], s[2]];
    }

    /// The same header addressed back to where the packet came from.
    #[inline(always)]
    pub fn reversed(&self) -> L2 {
        let a = self.addresses;
        L2 { addresses: [a[3], a[4], a[5], a[0], a[1], a[2]], tags: self.tags, tag_count: self.tag_count }
    }

    /// Writes this L2 header at the front of the packet with `ethertype` (network order) as the
    /// innermost EtherType.
    #[inline(always)]
    pub fn write(&self, ctx: &XdpContext, ethertype: u16) -> Option<()> {
        let words: *mut [u16; 6] = at(ctx, 0)?;
        let words = words as *mut u16;
        for i in 0..6 {
            // SAFETY: `at` checked the 12 bytes are inside the packet.
            unsafe { words.add(i).write_volatile(self.addresses[i]) };
        }
        let mut type_offset = 12;
        if self.tag_count >= 1 {
            let tag: *mut u32 = at(ctx, 12)?;
            // SAFETY: checked by `at`.
            unsafe { tag.write_unaligned(self.tags[0]) };
            type_offset = 16;
        }
        if self.tag_count >= 2 {
            let tag: *mut u32 = at(ctx, 16)?;
            // SAFETY: checked by `at`.
            unsafe { tag.write_unaligned(self.tags[1]) };
            type_offset = 20;
        }
        let kind: *mut u16 = at(ctx, type_offset)?;
        // SAFETY: checked by `at`.
        unsafe { kind.write_unaligned(ethertype) };
        Some(())
    }
}
