//! Phases 2 to 4: every backend unreachable from one node only, as when its link towards them is
//! lost (it withdraws; its flows move to the others, which pick the same backends), the backends
//! reachable again (re-announced after the rejoin delay), and kill -9 of a node's daemon with a
//! restart (the kernel keeps the route: the router never loses the next hop, and the adopting
//! daemon writes no route).

use std::time::Duration;

use anyhow::{Context as _, Result};

use super::{
    network::{router_port, BACKEND_PREFIX},
    node::{FALL, INTERVAL, RISE},
    stage::{events_since, is_route_write, reselected, wait_event, Stage},
    summary::{ms, Row},
    watch::{now_us, steadiness, watching},
};
use crate::lab::{
    control::{self, say, sleep, Event},
    topology::{lb_name, BACKENDS},
    wait_ready,
};

/// Longest wait for the router to follow a node's route.
const ROUTER_WAIT: Duration = Duration::from_secs(10);

/// The bound of a withdraw after the backends fail: `fall` probes `interval` apart, and 200 ms
/// for the verdict, the route, BIRD, BGP and the router's kernel.
pub fn withdraw_bound() -> Duration {
    INTERVAL * FALL + Duration::from_millis(200)
}

/// The bound of a re-announce once the backends answer again: the first success can come an
/// interval later, `rise` successes, then the route's way to the router.
pub fn reannounce_bound() -> Duration {
    INTERVAL * (RISE + 1) + super::announce::ANNOUNCE_BOUND
}

/// The failover events that took a backend to `to`.
fn verdicts<'a>(events: &'a [Event], to: &'a str) -> impl Iterator<Item = &'a Event> {
    events.iter().filter(move |event| {
        event.kind == "failover"
            && event
                .timings
                .as_ref()
                .is_some_and(|timings| timings.to == to)
    })
}

/// Cuts node `lb` off from every backend (`add`), as when its link towards them is lost, or
/// heals the cut: its own stack has no route to them (its probes fail at once), and the router
/// drops what the node forwards to them (its tunnelled packets).
fn cut_off(stage: &Stage, lb: usize, add: bool) -> Result<()> {
    let namespace = stage
        .nodes
        .iter()
        .find(|node| node.index == lb)
        .and_then(|node| node.namespace.as_ref())
        .with_context(|| format!("{} has no namespace", lb_name(lb)))?;
    let verb = if add { "add" } else { "del" };
    namespace.ip(&format!("route {verb} unreachable {BACKEND_PREFIX}"))?;
    stage.network.router.ip(&format!(
        "rule {verb} iif {} to {BACKEND_PREFIX} priority 100 blackhole",
        router_port(lb)
    ))
}

/// Phase 2: every backend unreachable from node `lb` only.
pub fn unreachable(stage: &mut Stage, lb: usize) -> Result<Row> {
    let name = lb_name(lb);
    let start = stage.begin(format!(
        "2. every backend unreachable from {name} only: no route to them in its namespace, and the router drops its tunnelled packets to them"
    ))?;
    let mut row = Row::new("2", format!("backends unreachable from {name}"));
    let reselected_before = reselected(stage.daemon(lb)?)?;
    let (fault_us, gone) = watching(&stage.network.router, |samples| {
        let fault_us = now_us();
        cut_off(stage, lb, true)?;
        let gone = samples.wait(fault_us, ROUTER_WAIT, |hops| !hops.contains(&lb))?;
        Ok((fault_us, gone))
    })?
    .0;
    let reselected = reselected(stage.daemon(lb)?)? - reselected_before;
    let events = events_since(stage.daemon(lb)?, fault_us / 1000)?;
    let downs: Vec<&Event> = verdicts(&events, "down").collect();
    let first_down_ms = downs
        .iter()
        .filter_map(|event| event.timings.as_ref().map(|timings| timings.probe_at))
        .min();
    let verdict_ms = downs
        .iter()
        .filter_map(|event| event.timings.as_ref().map(|timings| timings.probe_at))
        .max();
    let withdrew_ms = events
        .iter()
        .find(|event| is_route_write(event, "withdrew"))
        .map(|event| event.at);
    let gone_us = gone.map(|sample| sample.at_us);
    let from_fault = gone_us.map(|gone| gone.saturating_sub(fault_us));
    let from_verdict = gone_us
        .zip(verdict_ms)
        .map(|(gone, verdict)| gone.saturating_sub(verdict * 1000));
    let from_withdraw = gone_us
        .zip(withdrew_ms)
        .map(|(gone, withdrew)| gone.saturating_sub(withdrew * 1000));
    let show = |us: Option<u64>| us.map_or("-".into(), |us| format!("{:.1} ms", ms(us)));
    say(format!(
        "    {name}: {} backends down, the last verdict's probe {} before its next hop left the router; route deleted {} before; the fault {} before",
        downs.len(),
        show(from_verdict),
        show(from_withdraw),
        show(from_fault)
    ));
    // Between the first backend's down verdict and the withdraw, the node still announced
    // and sent its tracked flows of the backends it saw down to the others.
    let partial_us = verdict_ms
        .zip(first_down_ms)
        .map(|(last, first)| (last - first) * 1000);
    say(format!(
        "    {name}: {} between its first and last backend's down verdict; meanwhile its data plane re-chose the backend of {reselected} packets of tracked flows (event_flow_reselected)",
        show(partial_us)
    ));
    row.measure("first_to_last_verdict_ms", partial_us.map(ms));
    row.measure("packets_reselected_on_node", reselected);
    row.time(format!("fault {}", show(from_fault)));
    row.time(format!("verdict {}", show(from_verdict)));
    row.measure("fault_to_router_ms", from_fault.map(ms));
    row.measure("verdict_to_router_ms", from_verdict.map(ms));
    row.measure("route_deleted_to_router_ms", from_withdraw.map(ms));
    row.check(downs.len() == BACKENDS, || {
        format!(
            "{name} reported {} of {BACKENDS} backends down",
            downs.len()
        )
    });
    // From the fault, which comes before the first failed probe: stricter than the bound's
    // own start.
    let bound = withdraw_bound();
    row.check(
        from_fault.is_some_and(|us| us <= bound.as_micros() as u64),
        || {
            format!(
                "the next hop of {name} left the router {} after the fault, bound fall x interval + 200 ms = {bound:?}",
                show(from_fault)
            )
        },
    );
    let row = stage.finish(row, &start)?;
    if row.window.broken > 0 && reselected > 0 {
        say(format!(
            "    {name} still announced while it saw some backends down and others up ({} apart): its data plane re-chose the backend of {reselected} packets of tracked flows meanwhile, which a backend that did not know the flow reset",
            show(partial_us)
        ));
    }
    Ok(row)
}

/// Phase 3: the backends reachable from node `lb` again.
pub fn reachable(stage: &mut Stage, lb: usize) -> Result<Row> {
    let name = lb_name(lb);
    let start = stage.begin(format!("3. the backends reachable from {name} again"))?;
    let mut row = Row::new("3", format!("backends reachable from {name}"));
    let (cleared_us, back) = watching(&stage.network.router, |samples| {
        let cleared_us = now_us();
        cut_off(stage, lb, false)?;
        let back = samples.wait(cleared_us, ROUTER_WAIT, |hops| hops.contains(&lb))?;
        Ok((cleared_us, back))
    })?
    .0;
    let events = events_since(stage.daemon(lb)?, cleared_us / 1000)?;
    let ups = verdicts(&events, "up").count();
    let announced_ms = events
        .iter()
        .find(|event| is_route_write(event, "announced"))
        .map(|event| event.at);
    let back_us = back.map(|sample| sample.at_us);
    let from_clear = back_us.map(|back| back.saturating_sub(cleared_us));
    let from_route = back_us
        .zip(announced_ms)
        .map(|(back, announced)| back.saturating_sub(announced * 1000));
    let show = |us: Option<u64>| us.map_or("-".into(), |us| format!("{:.1} ms", ms(us)));
    say(format!(
        "    {name}: next hop back on the router {} after the repair, {} after the daemon wrote the route ({ups} backends up by then)",
        show(from_clear),
        show(from_route)
    ));
    row.time(format!("repair {}", show(from_clear)));
    row.time(format!("route {}", show(from_route)));
    row.measure("repair_to_router_ms", from_clear.map(ms));
    row.measure("route_written_to_router_ms", from_route.map(ms));
    let bound = reannounce_bound();
    row.check(
        from_clear.is_some_and(|us| us <= bound.as_micros() as u64),
        || {
            format!(
                "the next hop of {name} came back {} after the repair, bound {bound:?}",
                show(from_clear)
            )
        },
    );
    stage.finish(row, &start)
}

/// Phase 4: kill -9 of node `lb`'s daemon, restarted after half a phase.
pub fn kill_daemon(stage: &mut Stage, lb: usize) -> Result<Row> {
    let name = lb_name(lb);
    let down_for = stage.phase / 2;
    let start = stage.begin(format!(
        "4. kill -9 the daemon of {name}, restart it after {down_for:?}; the router's table polled every 10 ms"
    ))?;
    let mut row = Row::new("4", format!("kill -9 daemon {name}, restart"));
    let active = stage.active();
    let (restarted_ms, adopted, samples) = {
        let network = stage.network;
        let router = &network.router;
        let node = stage.node(lb)?;
        let ((restarted_ms, adopted), samples) = watching(router, |_| {
            node.daemon.kill();
            sleep(down_for)?;
            let restarted_ms = control::now_millis();
            node.daemon.start()?;
            let adopted = wait_event(&mut node.daemon, restarted_ms, |event| {
                event.kind == "adopted" || event.kind == "started"
            })?;
            wait_ready(&mut node.daemon, |backends| {
                (0..BACKENDS).all(|index| {
                    control::find(backends, index).is_some_and(control::BackendState::serving_up)
                })
            })
            .with_context(|| format!("waiting for {name}'s restarted daemon"))?;
            // Watch a while longer: a late rewrite or withdraw would show here.
            sleep(down_for)?;
            Ok((restarted_ms, adopted))
        })?;
        (restarted_ms, adopted, samples)
    };
    let steady = steadiness(&samples, &active);
    let writes = events_since(stage.daemon(lb)?, restarted_ms)?
        .iter()
        .filter(|event| is_route_write(event, "announced") || is_route_write(event, "withdrew"))
        .count();
    let adoption = adopted
        .as_ref()
        .map(|event| event.at.saturating_sub(restarted_ms));
    say(format!(
        "    {name}: restarted daemon {} after {} ms; {} route writes since; the router had every next hop in {} of {} polls (widest gap {:.1} ms)",
        adopted.as_ref().map_or("never adopted", |event| event.kind.as_str()),
        adoption.map_or("-".into(), |ms| ms.to_string()),
        writes,
        steady.polls - steady.short,
        steady.polls,
        ms(steady.widest_gap_us)
    ));
    row.time(format!(
        "adopted in {} ms",
        adoption.map_or("-".into(), |ms| ms.to_string())
    ));
    row.time(format!(
        "{}/{} polls full",
        steady.polls - steady.short,
        steady.polls
    ));
    row.measure("adopted_ms", adoption);
    row.measure("adopted_event", adopted.map(|event| event.kind));
    row.measure("polls", steady.polls);
    row.measure("polls_missing_a_next_hop", steady.short);
    row.measure("widest_poll_gap_ms", ms(steady.widest_gap_us));
    row.measure("route_writes_after_restart", writes);
    row.check(adoption.is_some(), || {
        format!("{name}'s restarted daemon reported no `adopted` or `started` event")
    });
    row.check(steady.short == 0 && steady.polls > 0, || {
        format!(
            "the router lacked a next hop in {} of {} polls",
            steady.short, steady.polls
        )
    });
    row.check(writes == 0, || {
        format!("the restarted daemon wrote {writes} routes, expected none (adoption)")
    });
    let mut row = stage.finish(row, &start)?;
    let moved = row.moved.map_or(0, |(moved, _)| moved);
    row.check_no_failed_requests();
    row.check(moved == 0, || {
        format!("{moved} long-lived connections changed node, expected none")
    });
    Ok(row)
}
