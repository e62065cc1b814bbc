//! The load-balancer XDP program: entry point only. Every packet gets a `Verdict` from `lb`,
//! which is counted under its reason, shown to the packet monitor if one is attached, and turned
//! into an XDP action here.
#![no_std]
#![no_main]

mod cache;
mod encap;
mod flow;
mod icmp;
mod lb;
mod maps;
mod monitor;
mod stats;
mod vip;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use failover_ebpf::packet::frame_len;

#[xdp]
pub fn failover(ctx: XdpContext) -> u32 {
    let bytes = frame_len(&ctx);
    let verdict = lb::process(&ctx);
    stats::reason(verdict.reason(), bytes);
    monitor::report(&ctx, verdict, bytes);
    verdict.action()
}
