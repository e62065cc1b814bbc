//! The lab's fault sequence, one summary row each: kill a backend and bring it back, drain and
//! undrain one (on both load balancers, whose tables must stay equal), kill -9 the master's
//! daemon, take the master's link down and up again (it preempts after its delay), and resign
//! the master by hand. Backend faults are timed by the master daemon's events; changes of master
//! by the adverts on the wire.

use std::{
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    config::{self, GROUP},
    control::{self, check_interrupt, now_millis, say, sleep, Daemon, Event, Programs},
    election,
    summary::{Phase, Row},
    topology::{self, backend_address, backend_name, lb_index, lb_name, Topology},
    traffic::{Snapshot, Stats},
    wire::{self, Observer, Takeover},
};

/// The load balancer with the highest priority: master whenever it can be.
pub const PREFERRED: usize = 0;
/// Longest wait for a daemon's reaction to a fault.
const REACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the preferred master to hold the group (startup, after a fault).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
/// A fault starts only when no request failed and no connection broke for this long: the
/// client's timeout (1 s) and a little more, so that a window counts no failure of the one
/// before it.
const QUIET: Duration = Duration::from_millis(1_200);
/// Longest wait for that quiet.
const QUIET_TIMEOUT: Duration = Duration::from_secs(10);

/// What the faults act on and watch.
pub struct Stage<'a> {
    pub topology: &'a Topology,
    pub daemons: &'a mut [Daemon],
    pub backends: &'a mut [Option<Child>],
    pub stats: &'a Stats,
    pub observer: &'a Observer,
    pub phase: Duration,
}

pub fn run(stage: &mut Stage) -> Result<Vec<Row>> {
    let programs = Programs::find()?;
    let mut rows = Vec::new();
    let victim = 1; // backend2
    let drained = 2; // backend3

    say("==> steady state");
    quiet(stage.stats)?;
    let before = stage.stats.snapshot();
    sleep(stage.phase)?;
    let mut row = Row::new(Phase::Steady, "steady");
    finish(stage, before, &mut row);
    rows.push(row);

    rows.push(kill_backend(stage, victim)?);
    rows.push(restart_backend(stage, &programs, victim)?);
    // An operator drains on every load balancer, or a takeover would change the table under the
    // connections.
    rows.push(set_drained(stage, drained, true)?);
    rows.push(set_drained(stage, drained, false)?);
    let lb = master(stage.observer)?;
    rows.push(kill_daemon(stage, lb)?);
    rows.extend(link_down_and_up(stage)?);
    rows.push(resign(stage)?);
    Ok(rows)
}

/// Kills backend `victim`'s server (SIGKILL): its probes fail, the daemons mark it down and
/// republish. Timed by the master's failover event.
pub(super) fn kill_backend(stage: &mut Stage, victim: usize) -> Result<Row> {
    say(format!(
        "==> kill -9 {} ({})",
        backend_name(victim),
        backend_address(victim)
    ));
    quiet(stage.stats)?;
    let before = stage.stats.snapshot();
    let t0 = now_millis();
    if let Some(mut child) = stage.backends[victim].take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let row = Row::new(Phase::KillBackend, format!("kill {}", backend_name(victim)));
    reaction(stage, before, t0, row, failover_of(victim, "down"))
}

/// Brings killed backend `victim` back: rise successes, then it serves new flows again.
pub(super) fn restart_backend(
    stage: &mut Stage,
    programs: &Programs,
    victim: usize,
) -> Result<Row> {
    say(format!("==> restart {}", backend_name(victim)));
    quiet(stage.stats)?;
    let before = stage.stats.snapshot();
    let t0 = now_millis();
    let namespace = &stage.topology.backends[victim];
    let dir = control::run_dir(std::process::id());
    stage.backends[victim] = Some(control::start_backend(programs, namespace, victim, &dir)?);
    let row = Row::new(
        Phase::RestartBackend,
        format!("restart {}", backend_name(victim)),
    );
    reaction(stage, before, t0, row, failover_of(victim, "up"))
}

/// Drains (no new flows, established ones continue) or undrains backend `index` on every load
/// balancer.
pub(super) fn set_drained(stage: &mut Stage, index: usize, drain: bool) -> Result<Row> {
    let verb = if drain { "drain" } else { "undrain" };
    say(format!(
        "==> {verb} {} ({}) on every load balancer",
        backend_name(index),
        backend_address(index)
    ));
    quiet(stage.stats)?;
    let before = stage.stats.snapshot();
    let t0 = now_millis();
    for daemon in stage.daemons.iter() {
        daemon.drain(index, drain)?;
    }
    let phase = if drain { Phase::Drain } else { Phase::Undrain };
    let row = Row::new(phase, format!("{verb} {}", backend_name(index)));
    reaction(stage, before, t0, row, move |event| {
        event.kind == verb && event.is_about(index)
    })
}

/// How a reload is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// `kill -HUP` the daemon.
    Hangup,
    /// `failover-ctl reload` over the control socket.
    Command,
}

/// Reloads load balancer `lb`'s daemon (its configuration as the caller left it): nothing the
/// traffic sees may change when the configuration did not. Timed by that daemon's `reloaded`
/// event.
pub(super) fn reload(stage: &mut Stage, lb: usize, how: Reload) -> Result<Row> {
    let name = match how {
        Reload::Hangup => format!("reload {} (SIGHUP)", lb_name(lb)),
        Reload::Command => format!("reload {}", lb_name(lb)),
    };
    say(format!("==> {name}"));
    quiet(stage.stats)?;
    let before = stage.stats.snapshot();
    let t0 = now_millis();
    match how {
        Reload::Hangup => stage.daemons[lb].hangup()?,
        Reload::Command => stage.daemons[lb].reload()?,
    }
    let event = wait_event(&mut stage.daemons[lb], t0, |event| event.kind == "reloaded")?;
    let mut row = record_event(Row::new(Phase::Reload, name), t0, event.as_ref());
    sleep(stage.phase)?;
    finish(stage, before, &mut row);
    Ok(row)
}

/// Waits until the traffic has been free of failures for `QUIET` (or `QUIET_TIMEOUT` passed:
/// then the window may count some of the last one's, and says so).
pub(super) fn quiet(stats: &Stats) -> Result<()> {
    let end = Instant::now() + QUIET_TIMEOUT;
    loop {
        let since = stats
            .last_trouble()
            .map_or(u64::MAX, |at| now_millis().saturating_sub(at));
        if since >= QUIET.as_millis() as u64 {
            return Ok(());
        }
        if Instant::now() >= end {
            say(format!("    (the traffic still fails after {QUIET_TIMEOUT:?}: the next window counts some of it)"));
            return Ok(());
        }
        sleep(Duration::from_millis(50))?;
    }
}

/// The load balancer that is master now, as the wire shows.
pub(super) fn master(observer: &Observer) -> Result<usize> {
    let (_, master) = wire::replay(&observer.adverts()?, config::VRID, 0);
    master
        .and_then(lb_index)
        .context("no load balancer is master on the wire")
}

/// Waits until `lb` is master on the wire (the group settled), or fails after `SETTLE_TIMEOUT`.
pub fn wait_master(observer: &Observer, daemons: &mut [Daemon], lb: usize) -> Result<()> {
    let end = Instant::now() + SETTLE_TIMEOUT;
    while Instant::now() < end {
        check_interrupt()?;
        for daemon in daemons.iter_mut() {
            daemon.check_alive()?;
        }
        if master(observer).ok() == Some(lb) {
            return Ok(());
        }
        sleep(Duration::from_millis(50))?;
    }
    let states: Vec<String> = daemons
        .iter()
        .map(|daemon| match election::group(daemon) {
            Ok(group) => format!("{}: {} (master {})", daemon.name, group.state, group.master),
            Err(error) => format!("{}: {error:#}", daemon.name),
        })
        .collect();
    anyhow::bail!(
        "{} did not become master within {SETTLE_TIMEOUT:?}; {}",
        lb_name(lb),
        states.join("; ")
    )
}

/// Waits for the first change of master after `from_us` (to `to`, if given).
fn wait_takeover(observer: &Observer, from_us: u64, to: Option<usize>) -> Result<Option<Takeover>> {
    let end = Instant::now() + REACTION_TIMEOUT;
    while Instant::now() < end {
        check_interrupt()?;
        let (takeovers, _) = wire::replay(&observer.adverts()?, config::VRID, from_us);
        if let Some(takeover) = takeovers
            .into_iter()
            .find(|takeover| to.is_none_or(|to| lb_index(takeover.to) == Some(to)))
        {
            return Ok(Some(takeover));
        }
        sleep(Duration::from_millis(20))?;
    }
    Ok(None)
}

/// "lb2 master after 362.1 ms (takeover 361.0 ms)", for the notes.
fn describe(takeover: &Takeover, t0_us: u64) -> String {
    let name = lb_index(takeover.to).map_or_else(|| takeover.to.to_string(), lb_name);
    let gap = takeover.gap_us().map_or(String::new(), |gap| {
        format!(" (takeover {:.1} ms)", gap as f64 / 1000.0)
    });
    format!(
        "{name} master after {:.1} ms{gap}",
        takeover.first_us.saturating_sub(t0_us) as f64 / 1000.0
    )
}

/// (4) Kill -9 load balancer `lb`'s daemon and restart it after half a phase. The master's:
/// its pinned data plane keeps forwarding with the ownership it had; the backup hears no adverts
/// and takes over; the restarted daemon adopts the data plane as a backup and takes back after
/// its preempt delay. The backup's: nothing the traffic sees changes.
pub(super) fn kill_daemon(stage: &mut Stage, lb: usize) -> Result<Row> {
    let role = if master(stage.observer).ok() == Some(lb) {
        "master"
    } else {
        "backup"
    };
    say(format!(
        "==> kill -9 the daemon of {} ({role}); restart it after {:?}",
        lb_name(lb),
        stage.phase / 2
    ));
    quiet(stage.stats)?;
    let before = stage.stats.snapshot();
    let t0_us = wire::now_us();
    stage.daemons[lb].kill();
    sleep(stage.phase / 2)?;
    let down = stage.stats.snapshot().since(&before);
    let t0 = now_millis();
    stage.daemons[lb].start()?;
    let row = Row::new(Phase::KillDaemon, format!("kill -9 daemon {}", lb_name(lb)));
    let adopted = |event: &Event| event.kind == "adopted" || event.kind == "started";
    let event = wait_event(&mut stage.daemons[lb], t0, adopted)?;
    let mut row = record_event(row, t0, event.as_ref());
    // Back to the preferred master before the next fault (its preempt delay runs from the
    // restart), then the window.
    wait_master(stage.observer, stage.daemons, PREFERRED)?;
    sleep(stage.phase)?;
    let (takeovers, _) = wire::replay(&stage.observer.adverts()?, config::VRID, t0_us);
    row.takeover = takeovers.first().and_then(Takeover::gap_us);
    let moves: Vec<String> = takeovers
        .iter()
        .map(|takeover| describe(takeover, t0_us))
        .collect();
    row.note = format!(
        "{} ok / {} failed while no daemon ran; detection: restart to adoption; wire: {}",
        down.ok(),
        down.failed,
        if moves.is_empty() {
            "no change of master".into()
        } else {
            moves.join(", ")
        }
    );
    finish(stage, before, &mut row);
    Ok(row)
}

/// (5) The master's link goes down (a node failure: neither its daemon nor its XDP program can
/// help), then (6) comes back: the node returns as a backup and preempts after its delay.
fn link_down_and_up(stage: &mut Stage) -> Result<Vec<Row>> {
    let lb = master(stage.observer)?;
    let interface = topology::LB_INTERFACE;
    let mut rows = Vec::new();
    for up in [false, true] {
        let state = if up { "up" } else { "down" };
        say(format!(
            "==> {}: ip link set {interface} {state}",
            lb_name(lb)
        ));
        quiet(stage.stats)?;
        let before = stage.stats.snapshot();
        let t0_us = wire::now_us();
        stage.topology.set_link(lb, up)?;
        let (phase, wanted) = if up {
            (Phase::LinkUp, Some(lb))
        } else {
            (Phase::LinkDown, None)
        };
        let mut row = Row::new(phase, format!("link {state} {}", lb_name(lb)));
        let takeover = wait_takeover(stage.observer, t0_us, wanted)?;
        record_takeover(&mut row, takeover.as_ref(), t0_us);
        sleep(stage.phase)?;
        finish(stage, before, &mut row);
        rows.push(row);
    }
    Ok(rows)
}

/// (7) `election resign` on the master: priority 0 at once, the backup takes over after its
/// skew time; nothing is lost when the resigning node forwards until the new master is heard.
fn resign(stage: &mut Stage) -> Result<Row> {
    let lb = master(stage.observer)?;
    say(format!(
        "==> failover-ctl election resign {GROUP} on {} (master)",
        lb_name(lb)
    ));
    quiet(stage.stats)?;
    let before = stage.stats.snapshot();
    let t0_us = wire::now_us();
    stage.daemons[lb].resign(GROUP)?;
    let mut row = Row::new(Phase::Resign, format!("resign {}", lb_name(lb)));
    let takeover = wait_takeover(stage.observer, t0_us, None)?;
    record_takeover(&mut row, takeover.as_ref(), t0_us);
    sleep(stage.phase)?;
    finish(stage, before, &mut row);
    Ok(row)
}

fn record_takeover(row: &mut Row, takeover: Option<&Takeover>, t0_us: u64) {
    match takeover {
        Some(takeover) => {
            row.detection = Some(takeover.first_us.saturating_sub(t0_us));
            row.takeover = takeover.gap_us();
            row.note = format!("wire: {}", describe(takeover, t0_us));
            let old = takeover.from.and_then(lb_index).map_or("?".into(), lb_name);
            say(format!(
                "    wire: {}; the last advert of {old} came {:.1} ms before",
                describe(takeover, t0_us),
                takeover.gap_us().unwrap_or(0) as f64 / 1000.0
            ));
        }
        None => {
            row.note = format!("no new master on the wire within {REACTION_TIMEOUT:?}");
            say(format!("    wire: {}", row.note));
        }
    }
}

/// Ends a row's window: the traffic since `before`, and both load balancers' tables compared
/// (not while one is cut off: its probes fail, and it serves nobody).
fn finish(stage: &Stage, before: Snapshot, row: &mut Row) {
    row.window = stage.stats.snapshot().since(&before);
    if row.phase == Phase::LinkDown {
        return;
    }
    let (digests, equal) = election::digests(stage.daemons);
    row.tables_equal = Some(equal);
    let shown: Vec<String> = digests
        .iter()
        .enumerate()
        .map(|(index, digest)| format!("{} {digest}", lb_name(index)))
        .collect();
    say(format!(
        "    tables of {}: {} ({})",
        config::VIP_NAME,
        shown.join(", "),
        if equal { "equal" } else { "DIFFERENT" }
    ));
    if !equal {
        row.note.push_str("; tables differ");
    }
}

/// Polls `events --json` for the first event from `since` (ms) on that `wanted` accepts.
pub(super) fn wait_event(
    daemon: &mut Daemon,
    since: u64,
    wanted: impl Fn(&Event) -> bool,
) -> Result<Option<Event>> {
    let end = Instant::now() + REACTION_TIMEOUT;
    while Instant::now() < end {
        check_interrupt()?;
        daemon.check_alive()?;
        // A failed poll (the daemon just restarting, say) is retried.
        if let Ok(events) = daemon.events() {
            if let Some(event) = events
                .into_iter()
                .find(|event| event.at >= since && wanted(event))
            {
                return Ok(Some(event));
            }
        }
        sleep(Duration::from_millis(100))?;
    }
    Ok(None)
}

/// Matches the daemon's failover event that takes backend `index` to `to` ("up" or "down").
fn failover_of(index: usize, to: &'static str) -> impl Fn(&Event) -> bool {
    move |event| {
        event.kind == "failover"
            && event.is_about(index)
            && event
                .timings
                .as_ref()
                .is_some_and(|timings| timings.to == to)
    }
}

/// Fills in `row` from the daemon's event for a fault made at `t0` (ms).
fn record_event(mut row: Row, t0: u64, event: Option<&Event>) -> Row {
    match event {
        Some(event) => {
            row.detection = Some(event.at.saturating_sub(t0) * 1000);
            row.published = event
                .timings
                .as_ref()
                .map(|timings| timings.table_published_us);
            row.note = format!("event {}", event.kind);
            let about = event
                .backend
                .as_deref()
                .map_or(String::new(), |backend| format!(" {backend}"));
            let timings = event.timings.as_ref().map_or(String::new(), |timings| {
                format!(
                    ", health written {} µs, table published {} µs after the verdict",
                    timings.health_written_us, timings.table_published_us
                )
            });
            say(format!(
                "    daemon: {}{about} after {} ms{timings}",
                event.kind,
                event.at.saturating_sub(t0)
            ));
        }
        None => {
            row.note = format!("no event within {REACTION_TIMEOUT:?}");
            say(format!("    daemon: {}", row.note));
        }
    }
    row
}

/// Waits for the master daemon's reaction to a fault made at `t0` (ms), watches the traffic for
/// the phase, and fills in `row`.
fn reaction(
    stage: &mut Stage,
    before: Snapshot,
    t0: u64,
    row: Row,
    wanted: impl Fn(&Event) -> bool,
) -> Result<Row> {
    let lb = master(stage.observer)?;
    let event = wait_event(&mut stage.daemons[lb], t0, wanted)?;
    let mut row = record_event(row, t0, event.as_ref());
    sleep(stage.phase)?;
    finish(stage, before, &mut row);
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::topology::lb_address;

    #[test]
    fn describes_a_takeover() {
        let takeover = Takeover {
            from: Some(lb_address(0)),
            to: lb_address(1),
            first_us: 1_362_100,
            last_us: Some(1_001_100),
        };
        assert_eq!(
            describe(&takeover, 1_000_000),
            "lb2 master after 362.1 ms (takeover 361.0 ms)"
        );
    }
}
