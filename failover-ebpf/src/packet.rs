//! Bounds-checked access to packet bytes: every header access goes through `at`, right before use.

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    programs::XdpContext,
};

/// A pointer to a `T` at `offset` bytes into the packet, or `None` if the packet is shorter.
///
/// The comparison against `data_end` is written the way the verifier tracks it: the returned
/// pointer is provably inside the packet.
#[inline(always)]
pub fn at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Bytes in the frame, for counting only.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// Bytes in the frame as a plain scalar, for arithmetic: LLVM may re-associate
/// `x - (data_end - data)` into pointer arithmetic on `data_end`, which the verifier rejects.
#[inline(always)]
pub fn buffer_len(ctx: &XdpContext) -> usize {
    // SAFETY: reads the context only.
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) as usize }
}

/// True if the frame holds bytes beyond `offset`.
#[inline(always)]
pub fn has_bytes_after(ctx: &XdpContext, offset: usize) -> bool {
    ctx.data() + offset < ctx.data_end()
}

/// Grows (`delta < 0`) or shrinks the front of the packet. Invalidates every packet pointer.
#[inline(always)]
#[allow(clippy::result_unit_err, reason = "the helper's only failure is a refusal; callers turn it into a drop reason")]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> Result<(), ()> {
    // SAFETY: the helper only moves `data`; pointers are re-derived with `at` afterwards.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } == 0 { Ok(()) } else { Err(()) }
}

/// Grows or shrinks the end of the packet. Invalidates every packet pointer.
#[inline(always)]
#[allow(clippy::result_unit_err, reason = "the helper's only failure is a refusal; callers turn it into a drop reason")]
pub fn adjust_tail(ctx: &XdpContext, delta: i32) -> Result<(), ()> {
    // SAFETY: as for `adjust_head`.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } == 0 { Ok(()) } else { Err(()) }
}

/// Sum of the first `count` of the `N` 32-bit words at `offset`, for checksums over a
/// variable-length region. One bounds check covers all `N` words (a loop of per-word checks
/// gets strength-reduced by LLVM into forms the verifier rejects), so the packet must hold
/// `N` words there even when `count` is smaller. `None` if it does not.
#[inline(always)]
pub fn sum_words<const N: usize>(ctx: &XdpContext, offset: usize, count: usize) -> Option<u64> {
    let words: *mut [u32; N] = at(ctx, offset)?;
    let mut sum = 0u64;
    for i in 0..N {
        if i < count {
            // SAFETY: `at` checked all N words; packet data may be unaligned.
            sum += unsafe { (words as *const u32).add(i).read_unaligned() } as u64;
        }
    }
    Some(sum)
}
