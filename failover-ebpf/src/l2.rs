//! The L2 header (Ethernet plus up to two VLAN tags) as a value, so that it can be moved when a
//! tunnel header is pushed or popped in front of the IP header.

use aya_ebpf::programs::XdpContext;

use crate::{headers::{EthernetHeader, ETHERNET_LEN}, packet::at};

/// Ethernet addresses, the VLAN tags in between (TPID + control, as on the wire), and the
/// number of tags.
#[derive(Clone, Copy)]
pub struct L2 {
    pub destination: [u8; 6],
    pub source: [u8; 6],
    pub tags: [u32; 2],
    pub tag_count: usize,
}

impl L2 {
    /// Bytes of L2 header: 14, 18 or 22.
    #[inline(always)]
    pub fn len(&self) -> usize {
        ETHERNET_LEN + self.tag_count * 4
    }

    /// Reads the L2 header of a packet whose IP header starts at `l3_offset` (14, 18 or 22).
    #[inline(always)]
    pub fn read(ctx: &XdpContext, l3_offset: usize) -> Option<L2> {
        let ethernet: *mut EthernetHeader = at(ctx, 0)?;
        let mut l2 = L2 { destination: [0; 6], source: [0; 6], tags: [0; 2], tag_count: 0 };
        // SAFETY: `at` checked the header is inside the packet.
        unsafe {
            l2.destination = (*ethernet).destination;
            l2.source = (*ethernet).source;
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

    /// Writes this L2 header at the front of the packet with `ethertype` (network order) as the
    /// innermost EtherType.
    #[inline(always)]
    pub fn write(&self, ctx: &XdpContext, ethertype: u16) -> Option<()> {
        let ethernet: *mut EthernetHeader = at(ctx, 0)?;
        // SAFETY: checked by `at`.
        unsafe {
            (*ethernet).destination = self.destination;
            (*ethernet).source = self.source;
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
