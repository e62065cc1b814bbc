//! The notes printed under the data-plane table: setup, the method behind every number, what each run checked, what the new-flow runs inserted, the two-CPU runs' overlap, and what `--against` compared.

use super::{
    statistics::median,
    harness::{Inserted, LIVE_FRAMES, NEW_FLOW_FRAMES, ROUNDS},
    measure::{self, Method},
    revision::Revision,
    rows::{ESTABLISHED_SHARE_OF_FLOOR, NEW_FLOW_MAX_NS, NON_VIP_MAX_NS, SCALING_SHARE_OF_FLOOR},
    setup,
};

/// What the run saw that the notes describe.
pub struct Facts<'a> {
    pub live_method: Method,
    pub live_error: Option<&'a anyhow::Error>,
    pub cpu: usize,
    /// The two CPUs of the two-CPU rows, or why there are none.
    pub pair: Result<[usize; 2], &'static str>,
    /// How much the two CPUs' calls overlapped, per two-CPU run.
    pub overlaps: &'a [f64],
    pub inserted: &'a [Inserted],
    pub against: Option<&'a Revision>,
    /// Maps compared by sizes only (no BTF on one side), with `--against`.
    pub sizes_only: usize,
}

pub fn notes(facts: &Facts<'_>) -> Vec<String> {
    let live_method = facts.live_method;
    let mut notes = vec![
        format!("Setup: 2 TCP VIPs (IPv4, IPv6), {} backends each, equal weights, Maglev tables of 65537 slots built by failover_ctl::maglev::build; a flow cache for 1 Mi flows (256 Ki buckets of 8 ways); flow-insert limiter on at 1 insert/ns; one-CPU runs pinned to CPU {}; {ROUNDS} measured rounds after a warm-up, scenarios interleaved; ns/packet is the median over rounds of the kernel-reported duration (integer ns), wall ns/pkt the median of wall-clock time / packets.", setup::BACKENDS_PER_VIP, facts.cpu),
        "test_run/repeat: one BPF_PROG_TEST_RUN with repeat = N; the kernel reruns the program on one copy of the packet, so it is used only where the packet is left unchanged (floor, non-VIP pass). Every run checked: return value, and the reason counter grew by exactly N with no other counter moving. test_run/repeat-minus-floor subtracts the floor's number of the same round (the test loop's own cost per iteration).".to_string(),
    ];
    match live_method {
        Method::Live => notes.push(format!(
            "live_frames: one BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, repeat = N frames ({LIVE_FRAMES}, new flows {NEW_FLOW_FRAMES}), batch {} (ctx_in = xdp_md with ingress_ifindex of lb0), issued from a thread inside the benchmark's namespace; XDP_TX really transmits into the veth lb0 -> peer0 (one queue per CPU on each end). The kernel's duration is its timed total divided by the frames, and that total includes the transmit into the veth and the peer's NAPI receive, which run in the softirq at the end of each batch: it is the whole pipeline's cost per frame. live_frames-minus-floor subtracts the floor's live number of the same round (same peer, same pipeline) and so isolates the program.",
            measure::LIVE_BATCH
        )),
        _ => notes.push("test_run/loop: N calls with repeat = 1, each on a fresh copy of the frame; ns/packet is the mean of the kernel's per-call durations, wall ns/pkt the loop's wall clock per call (mostly the system call). test_run/loop-minus-floor subtracts the floor timed the same way in the same round.".to_string()),
    }
    if let Some(error) = facts.live_error {
        notes.push(format!("LIVE FRAMES UNAVAILABLE, so the rewriting scenarios fell back to test_run/loop and the two-CPU rows were left out: {error:#}"));
    }
    if live_method == Method::Live {
        notes.push("Peer program (assembled by the benchmark, attached natively to peer0): counts the frame in a per-CPU counter, writes the original frame's first 56-64 bytes back at the original position, and drops it. It is not a decap: the kernel does NOT copy data_in into a recycled page again (Documentation/bpf/bpf_prog_run.rst: only the data pointers are reset), so without the restore a rewriting program sees its own output from the second use of each page on (tried: 99,936 of 100,000 encapsulating frames became pass_unparsed). Every live run is checked: the peer counted exactly N frames, and the load balancer's reason counter (tx_forward / tx_echo_reply) grew by exactly N with no other counter moving.".to_string());
    }
    notes.push(format!(
        "New flows: flow tracking and the insert limiter on, as deployed. {} so every frame misses the flow table, probes the Maglev table, passes the limiter and inserts; the flows are deleted after each run, so the cache holds at most {} flows (never full: eviction is not measured; a flow whose bucket of 8 ways is full, about 1 in 10 000 at that load, is forwarded untracked).{}",
        if live_method == Method::Live {
            "The peer writes a fresh 32-bit number (its CPU's frame count plus the CPU number x 2^28) into the client source address (IPv4) or its last word (IPv6) while restoring,"
        } else {
            "Each call carries its own number in the client source address (IPv4) or its last word (IPv6),"
        },
        if live_method == Method::Live { 2 * NEW_FLOW_FRAMES } else { super::harness::LOOP_CALLS },
        if live_method == Method::Live {
            " The first use of each page of the kernel's pool carries data_in unchanged, so up to a batch of frames per run and CPU share one flow:"
        } else {
            ""
        },
    ));
    for total in facts.inserted {
        let range = |(low, high): (usize, usize)| if low == high { low.to_string() } else { format!("{low}..{high}") };
        notes.push(format!(
            "  {}{}: {} of {} frames per round inserted a new flow ({:.3}% or more), spread over {} backends",
            total.name,
            total.program.map_or_else(String::new, |program| format!(" ({program})")),
            range((total.fewest, total.most)),
            total.packets,
            100.0 * total.fewest as f64 / f64::from(total.packets),
            range(total.backends),
        ));
    }
    notes.push(format!(
        "Established: the flow is tracked on its first packet (an ordinary test run), then every frame finds it. Non-VIP: the destination misses the address filter (checked to use another filter slot than the VIP). Targets from the issue: established Mpps >= {ESTABLISHED_SHARE_OF_FLOOR} x floor Mpps (both {live}, same run); new flow <= {NEW_FLOW_MAX_NS} ns above the floor ({net}); non-VIP pass <= {NON_VIP_MAX_NS} ns above the floor (test_run/repeat-minus-floor).",
        live = live_method.name(),
        net = live_method.minus_floor_name(),
    ));
    match facts.pair {
        Ok([first, second]) => notes.push(format!(
            "Two CPUs (floor_2cpu, v4_new_flow_2cpu, v4_established_2cpu): one thread pinned to CPU {first} and one to CPU {second}, released together by a barrier, each making the same live_frames call as the one-CPU scenario (same frame count each); every check covers the total (the reason counter grew by both CPUs' frames, the peer counted them all). Mpps is the sum of the two CPUs' kernel-timed rates (ns/packet its inverse); wall ns/pkt is the span from the first start to the last end / all frames. The two calls overlapped in time for {} of their span. Each CPU sends its own flows, as RSS would: new flows carry the CPU number in the address, the established scenario has one tracked flow per CPU (client 198.51.100.{}+CPU, each tracked on its CPU). scaling = two-CPU Mpps / one-CPU Mpps of the same program and scenario (medians); target: a program's scaling >= {SCALING_SHARE_OF_FLOOR} x the floor's.",
            overlap(facts.overlaps),
            setup::PER_CPU_CLIENT_BASE,
        )),
        Err(why) => notes.push(format!("Two-CPU rows left out: {why}.")),
    }
    if let Some(revision) = facts.against {
        notes.push(format!(
            "--against {} ({}): its failover-ebpf built as failover-ctl/build.rs builds this tree's (nightly, build-std=core, bpfel-unknown-none, release, BTF){}; loaded with the same map sizes and its maps written by this tree's map writer with the same contents, after checking that every map has the same type, sizes, flags and key/value layout ({}). Each round runs every scenario on both programs back to back, alternating which goes first; the floor is shared. this/REV = the median over rounds of this tree's ns/packet / REV's in the same round (below 1: this tree is faster), on the raw and the minus-floor rows.",
            revision.name,
            &revision.commit[..12.min(revision.commit.len())],
            if revision.cached { ", taken from the cache" } else { "" },
            if facts.sizes_only == 0 { "BTF layouts of every map compared".to_string() } else { format!("{} maps without BTF compared by sizes only", facts.sizes_only) },
        ));
    }
    notes
}

/// The two CPUs' overlap as the notes give it, with a warning where it was short: a CPU that
/// ran alone for part of its call met less contention than the number suggests.
fn overlap(overlaps: &[f64]) -> String {
    if overlaps.is_empty() {
        return "-".to_string();
    }
    let least = overlaps.iter().copied().fold(f64::INFINITY, f64::min);
    let middle = median(&mut overlaps.to_vec());
    let mut text = format!("{:.1}% (median over runs; least {:.1}%)", 100.0 * middle, 100.0 * least);
    if middle < 0.9 {
        text.push_str(" -- SHORT: other work took the CPUs, so part of each call ran alone and the two-CPU rows understate contention; rerun on an idle machine");
    }
    text
}
