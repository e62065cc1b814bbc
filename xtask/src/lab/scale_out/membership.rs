//! Phases 5 and 6: nodes leaving and joining while the connections run. `drain-node` (the next
//! hop is gone from the router when the command returns, new connections go to the other
//! nodes) and `undrain-node`; a third node added (namespace, BIRD, daemon) and one removed
//! (drained, then its daemon and BIRD stopped), with the flows that changed node, those broken
//! (none: every node publishes the same table) and the nodes' table digests.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use super::{
    announce::{record, start_and_announce},
    flows,
    network::names,
    node::Node,
    stage::Stage,
    summary::{ms, Row},
    watch::{first, now_us, watching},
};
use crate::lab::{
    control::{self, check_interrupt, say, sleep},
    topology::{lb_name, BACKENDS},
    wait_ready,
};

/// Short connections sent while a node is drained.
const DRAINED_BURST: usize = 200;
/// Longest wait for a BGP session or a next hop.
const SESSION_WAIT: Duration = Duration::from_secs(20);
const ROUTER_WAIT: Duration = Duration::from_secs(10);

/// `drain-node` on node `lb`, returning the time it took (µs) and the router's next hops
/// right after it returned; the router's readings meanwhile show when its next hop went.
fn drain_node(stage: &Stage, lb: usize) -> Result<(u64, u64, Vec<usize>)> {
    let started_us = now_us();
    let output = stage.daemon(lb)?.ctl(&["drain-node"])?;
    let returned_us = now_us();
    let hops = stage.network.next_hops()?;
    say(format!(
        "    {}: `drain-node` returned after {:.1} ms ({}); the router's next hops then: {}",
        lb_name(lb),
        ms(returned_us - started_us),
        output.trim(),
        names(&hops)
    ));
    Ok((started_us, returned_us, hops))
}

/// Phase 5: `drain-node` on node `lb`, new connections meanwhile, then `undrain-node`.
pub fn drain(stage: &mut Stage, lb: usize) -> Result<Row> {
    let name = lb_name(lb);
    let start = stage.begin(format!(
        "5. `failover-ctl drain-node` on {name} (withdraw_grace 1 s), {DRAINED_BURST} new connections, then `undrain-node`"
    ))?;
    let mut row = Row::new("5", format!("drain-node {name}, undrain-node"));
    let active = stage.active();
    let stage_ref = &*stage;
    let (outcome, samples) = watching(&stage_ref.network.router, |samples| {
        let (started_us, returned_us, hops) = drain_node(stage_ref, lb)?;
        let during = stage_ref.choices()?;
        let burst = flows::burst(&stage_ref.network.client, DRAINED_BURST, 8)?;
        let mut seen = Vec::new();
        for &index in &active {
            seen.push(flows::seen(stage_ref.daemon(index)?, &burst.ports)?);
        }
        let undrained_us = now_us();
        stage_ref.daemon(lb)?.ctl(&["undrain-node"])?;
        let back = samples.wait(undrained_us, ROUTER_WAIT, |hops| hops.contains(&lb))?;
        Ok((
            started_us,
            returned_us,
            hops,
            during,
            burst,
            seen,
            undrained_us,
            back,
        ))
    })?;
    let (started_us, returned_us, hops, during, burst, seen, undrained_us, back) = outcome;
    let gone = first(&samples, started_us, |hops| !hops.contains(&lb));
    let gone_after = gone.map(|sample| sample.at_us.saturating_sub(started_us));
    let back_after = back.map(|sample| sample.at_us.saturating_sub(undrained_us));
    let on_drained = active
        .iter()
        .zip(&seen)
        .find(|(index, _)| **index == lb)
        .map_or(0, |(_, ports)| ports.len());
    let elsewhere: BTreeSet<u16> = active
        .iter()
        .zip(&seen)
        .filter(|(index, _)| **index != lb)
        .flat_map(|(_, ports)| ports.iter().copied())
        .collect();
    let (of, moved_away) = flows::moved(&start.choices, &during);
    let show = |us: Option<u64>| us.map_or("-".into(), |us| format!("{:.1} ms", ms(us)));
    say(format!(
        "    next hop gone {} after `drain-node` began; of {} new connections {on_drained} went to {name}, {} to the others; {moved_away} of {of} long-lived connections moved; back {} after `undrain-node`",
        show(gone_after),
        burst.ports.len(),
        elsewhere.len(),
        show(back_after)
    ));
    row.time(format!("gone {}", show(gone_after)));
    row.time(format!("returned {:.0} ms", ms(returned_us - started_us)));
    row.time(format!("undrain {}", show(back_after)));
    row.measure("next_hop_gone_ms", gone_after.map(ms));
    row.measure("drain_node_returned_ms", ms(returned_us - started_us));
    row.measure("undrain_to_router_ms", back_after.map(ms));
    row.measure("new_connections", burst.ports.len());
    row.measure("new_connections_on_drained", on_drained);
    row.measure("flows_moved_by_drain", moved_away);
    row.check(!hops.contains(&lb), || {
        format!(
            "the router still had {name}'s next hop when `drain-node` returned ({})",
            names(&hops)
        )
    });
    row.check(burst.failed == 0, || {
        format!("{} of the new connections failed", burst.failed)
    });
    row.check(
        on_drained == 0 && elsewhere.len() == burst.ports.len(),
        || {
            format!(
            "of {} new connections {on_drained} went to the drained {name} and {} to the others",
            burst.ports.len(),
            elsewhere.len()
        )
        },
    );
    row.check(back_after.is_some(), || {
        format!("{name}'s next hop did not come back after `undrain-node`")
    });
    let mut row = stage.finish(row, &start)?;
    let moved_back = row.moved.map(|(moved, _)| moved);
    row.measure("flows_moved_back", moved_back);
    row.moved = Some((moved_away, of));
    row.check_no_failed_requests();
    Ok(row)
}

/// Waits until the router's BGP session to node `index` is Established; how long it took.
fn wait_session(stage: &Stage, index: usize) -> Result<Duration> {
    let started = Instant::now();
    let protocol = lb_name(index);
    while !stage.router_bird.established(&protocol) {
        check_interrupt()?;
        if started.elapsed() > SESSION_WAIT {
            bail!(
                "the router's BGP session to {protocol} is not Established after {SESSION_WAIT:?}:\n{}",
                stage.router_bird.birdc("show protocols").unwrap_or_default()
            );
        }
        sleep(Duration::from_millis(50))?;
    }
    Ok(started.elapsed())
}

/// Phase 6a: node `index` joins.
pub fn add(stage: &mut Stage, index: usize) -> Result<Row> {
    let name = lb_name(index);
    let start = stage.begin(format!(
        "6a. {name} joins: namespace, link to the router, BIRD, then `failover-ctl run`"
    ))?;
    let mut row = Row::new("6a", format!("add {name}"));
    let node = Node::add(stage.network, stage.programs, stage.pid, index, stage.dir)?;
    stage.nodes.push(node);
    let session = wait_session(stage, index)?;
    say(format!(
        "    the router's BGP session to {name} Established after {:.1} s",
        session.as_secs_f64()
    ));
    let announcements = start_and_announce(&stage.network.router, stage.nodes, &[index])?;
    record(&mut row, &announcements);
    row.measure(
        "session_established_s",
        (session.as_secs_f64() * 10.0).round() / 10.0,
    );
    {
        let node = stage.node(index)?;
        wait_ready(&mut node.daemon, |backends| {
            (0..BACKENDS).all(|backend| {
                control::find(backends, backend).is_some_and(control::BackendState::serving_up)
            })
        })?;
    }
    let active = stage.active();
    let mut row = stage.finish(row, &start)?;
    let hops = row.next_hops.clone();
    row.check_next_hops(&hops, &active);
    row.check_no_failed_requests();
    Ok(row)
}

/// Phase 6b: node `lb` leaves: `drain-node`, then its daemon and BIRD stop.
pub fn remove(stage: &mut Stage, lb: usize) -> Result<Row> {
    let name = lb_name(lb);
    let start = stage.begin(format!(
        "6b. {name} leaves: `drain-node`, then its daemon and BIRD stop"
    ))?;
    let mut row = Row::new("6b", format!("remove {name}"));
    let stage_ref = &*stage;
    let ((started_us, returned_us, hops), samples) =
        watching(&stage_ref.network.router, |_| drain_node(stage_ref, lb))?;
    let gone_after = first(&samples, started_us, |hops| !hops.contains(&lb))
        .map(|sample| sample.at_us - started_us);
    {
        let node = stage.node(lb)?;
        node.stop();
        node.removed = true;
    }
    say(format!("    {name}: daemon and BIRD stopped"));
    row.time(format!(
        "gone {}",
        gone_after.map_or("-".into(), |us| format!("{:.1} ms", ms(us)))
    ));
    row.time(format!("returned {:.0} ms", ms(returned_us - started_us)));
    row.measure("next_hop_gone_ms", gone_after.map(ms));
    row.measure("drain_node_returned_ms", ms(returned_us - started_us));
    row.check(!hops.contains(&lb), || {
        format!(
            "the router still had {name}'s next hop when `drain-node` returned ({})",
            names(&hops)
        )
    });
    let active = stage.active();
    let mut row = stage.finish(row, &start)?;
    let hops = row.next_hops.clone();
    row.check_next_hops(&hops, &active);
    row.check_no_failed_requests();
    Ok(row)
}
