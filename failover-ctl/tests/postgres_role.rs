//! The PostgreSQL role probe end to end: a primary and a streaming standby (Debian's
//! postgresql, run as the `postgres` user) in two backend namespaces, behind a write VIP whose
//! probe asks for role primary and a read VIP asking for role standby. Promoting the standby and
//! stopping the old primary moves the write VIP to the new primary within the probe bound and
//! empties the read VIP, and no INSERT through the write VIP ever reaches a standby: all judged
//! from connections through the VIPs, with `state.json` as the second witness.
//!
//! Run as root, with postgresql installed (`cargo xtask test` installs it).

mod support;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use support::*;

fn insert(n: i64) -> String {
    format!(
        "INSERT INTO writes (n) VALUES ({n}) RETURNING current_setting('cluster_name'), pg_is_in_recovery()"
    )
}

/// The addresses `vip` serves to in `state.json`, sorted.
fn serving(daemon: &Daemon, vip: &str) -> Option<Vec<String>> {
    let status = daemon.status()?;
    let vip = status.vips.iter().find(|v| v.name == vip)?;
    let mut addresses: Vec<String> = vip
        .backends
        .iter()
        .filter(|b| b.serving)
        .map(|b| b.address.clone())
        .collect();
    addresses.sort();
    Some(addresses)
}

/// Outcomes counted by kind and message, for the log and failure messages.
fn tally(samples: &[&SqlSample]) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for sample in samples {
        *counts.entry(format!("{:?}", sample.outcome)).or_default() += 1;
    }
    format!("{counts:?}")
}

#[test]
fn postgres_roles_follow_a_promotion() {
    if !root() {
        return;
    }
    let mut topology = Topology::new(2);
    topology.add_vip(READ_VIP);
    let mut cluster = Postgres::new();
    let direct = |index: usize| SocketAddr::from((backend_address(index), POSTGRES_PORT));
    let (b0, b1) = (backend_name(0), backend_name(1));

    cluster.init_primary(0);
    cluster.start(0, &topology.backends[0]);
    // Asked directly from the LB namespace, as the probes ask.
    let ready = wait_for(Duration::from_secs(20), || {
        answered_by(&sql_once(&topology.lb, direct(0), IDENTITY), &b0, false).then_some(())
    });
    assert!(
        ready.is_some(),
        "the primary did not start:\n{}",
        cluster.logs()
    );
    let created = sql_once(
        &topology.lb,
        direct(0),
        "CREATE TABLE writes (n bigint PRIMARY KEY); SELECT current_setting('cluster_name'), pg_is_in_recovery()",
    );
    assert!(answered_by(&created, &b0, false), "{created:?}");

    cluster.init_standby(1, &topology.backends[1], backend_address(0));
    cluster.start(1, &topology.backends[1]);
    // Streaming: a row written on the primary after the copy shows on the standby.
    let marker = sql_once(&topology.lb, direct(0), &insert(0));
    assert!(answered_by(&marker, &b0, false), "{marker:?}");
    let streamed = wait_for(Duration::from_secs(20), || {
        answered_by(
            &sql_once(
                &topology.lb,
                direct(1),
                "SELECT current_setting('cluster_name'), pg_is_in_recovery() FROM writes WHERE n = 0",
            ),
            &b1,
            true,
        )
        .then_some(())
    });
    assert!(
        streamed.is_some(),
        "the standby did not stream the primary's row:\n{}",
        cluster.logs()
    );

    let next_hop_mac = topology.next_hop_mac();
    let metrics_port = 9650 + (unique() % 1000) as u16;
    let daemon = Daemon::start_with(&topology.lb, |instance| {
        let mut text = config_head(instance, metrics_port, &next_hop_mac);
        for (name, address, role) in [("write", VIP, "primary"), ("read", READ_VIP, "standby")] {
            text.push_str(&format!(
                "\n[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {POSTGRES_PORT}\nprotocol = \"tcp\"\n"
            ));
            for index in 0..2 {
                text.push_str(&format!(
                    "\n[[vip.backend]]\naddress = \"{}\"\nprobe = {{ kind = \"postgres\", user = \"postgres\", database = \"postgres\", role = \"{role}\" }}\n",
                    backend_address(index)
                ));
            }
        }
        text
    });
    let (a0, a1) = (
        backend_address(0).to_string(),
        backend_address(1).to_string(),
    );
    let settled = wait_for(Duration::from_secs(10), || {
        (serving(&daemon, "write")? == [a0.clone()] && serving(&daemon, "read")? == [a1.clone()])
            .then_some(())
    });
    assert!(
        settled.is_some(),
        "write should serve {a0}, read {a1}: {:#?}",
        daemon.status().map(|s| s.vips)
    );
    let write_vip = SocketAddr::from((VIP, POSTGRES_PORT));
    let read_vip = SocketAddr::from((READ_VIP, POSTGRES_PORT));
    // Before: writes reach the primary only, reads the standby only.
    let before = Instant::now() + Duration::from_millis(300);
    let writes = sql_traffic(&topology.client, write_vip, before, 1_000_000, insert);
    assert!(
        writes.len() >= 5 && writes.iter().all(|s| answered_by(&s.outcome, &b0, false)),
        "writes should reach {b0} only: {writes:#?}"
    );
    let reads = sql_traffic(
        &topology.client,
        read_vip,
        before + Duration::from_millis(300),
        1,
        |_| IDENTITY.to_owned(),
    );
    assert!(
        reads.len() >= 5 && reads.iter().all(|s| answered_by(&s.outcome, &b1, true)),
        "reads should reach {b1} only: {reads:#?}"
    );

    // Writers and readers through both VIPs while the standby is promoted and the old primary
    // stopped.
    let bound = INTERVAL * RISE.max(FALL) + MARGIN;
    let start = Instant::now();
    let until = start + Duration::from_millis(300) + bound * 4;
    let (writes, reads, history, promoted_at, promoted_in, stopped_in) =
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| sql_traffic(&topology.client, write_vip, until, 1, insert));
            let reader = scope.spawn(|| {
                sql_traffic(&topology.client, read_vip, until, 1, |_| {
                    IDENTITY.to_owned()
                })
            });
            // state.json's view: each change of either VIP's serving set, polled every 10 ms.
            let watcher = scope.spawn(|| {
                let mut history: Vec<(Instant, Vec<String>, Vec<String>)> = Vec::new();
                while Instant::now() < until {
                    if let (Some(write), Some(read)) =
                        (serving(&daemon, "write"), serving(&daemon, "read"))
                    {
                        if history
                            .last()
                            .is_none_or(|(_, w, r)| *w != write || *r != read)
                        {
                            history.push((Instant::now(), write, read));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                history
            });
            std::thread::sleep(Duration::from_millis(300));
            let promoted_at = Instant::now();
            cluster.promote(1);
            let promoted = wait_for(Duration::from_secs(10), || {
                answered_by(&sql_once(&topology.lb, direct(1), IDENTITY), &b1, false).then_some(())
            });
            assert!(promoted.is_some(), "the standby did not leave recovery");
            let promoted_in = promoted_at.elapsed();
            cluster.stop(0, libc::SIGINT, Duration::from_secs(5));
            let stopped_in = promoted_at.elapsed();
            (
                writer.join().unwrap(),
                reader.join().unwrap(),
                watcher.join().unwrap(),
                promoted_at,
                promoted_in,
                stopped_in,
            )
        });
    let ms = |d: Duration| d.as_millis();
    let since = |at: Instant| at.saturating_duration_since(promoted_at);
    let changes: Vec<String> = history
        .iter()
        .map(|(at, write, read)| format!("+{} ms write {write:?} read {read:?}", ms(since(*at))))
        .collect();
    eprintln!("state.json from the promotion on: {}", changes.join("; "));
    let settled_at = |wanted: &dyn Fn(&[String], &[String]) -> bool| {
        history
            .iter()
            .find(|(at, write, read)| *at >= promoted_at && wanted(write, read))
            .map(|(at, ..)| since(*at))
    };
    // A moment with no primary serving: the old one fell before the new one rose (both follow
    // the same probe bound); its SYNs are dropped (`all_down = "drop"`) and clients retry.
    let empty: Duration = history
        .windows(2)
        .filter(|pair| pair[0].0 >= promoted_at && pair[0].1.is_empty())
        .map(|pair| pair[1].0 - pair[0].0)
        .sum();
    eprintln!("the write VIP had no backend for {} ms", ms(empty));
    let state_write = settled_at(&|write, _| write == [a1.clone()]);
    let state_read = settled_at(&|_, read| read.is_empty());

    // No write ever reached a standby, and every failure is a refused or cut connection.
    let count = |f: &dyn Fn(&SqlOutcome) -> bool| writes.iter().filter(|s| f(&s.outcome)).count();
    let on_b0 = count(&|o| answered_by(o, &b0, false));
    let on_b1 = count(&|o| answered_by(o, &b1, false));
    let refused = count(&|o| matches!(o, SqlOutcome::NoConnection(_)));
    let cut = count(&|o| matches!(o, SqlOutcome::Cut(_)));
    let wrong: Vec<&SqlSample> = writes
        .iter()
        .filter(|s| {
            !matches!(
                s.outcome,
                SqlOutcome::Answered {
                    in_recovery: false,
                    ..
                } | SqlOutcome::NoConnection(_)
                    | SqlOutcome::Cut(_)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "writes through the write VIP that reached a standby or failed otherwise: {wrong:#?}"
    );
    let late_b0 = writes
        .iter()
        .filter(|s| s.ended > promoted_at && answered_by(&s.outcome, &b0, false))
        .count();
    eprintln!(
        "writes through the write VIP: {} ({on_b0} on {b0}, {on_b1} on {b1}, {refused} not connected, {cut} cut by the shutdown, 0 on a standby); {late_b0} on the old primary after the promotion began",
        writes.len()
    );

    // The write VIP reaches the new primary within the bound of the promotion.
    let first_b1 = writes
        .iter()
        .find(|s| answered_by(&s.outcome, &b1, false))
        .unwrap_or_else(|| panic!("no write reached the new primary: {writes:#?}"));
    let reached = since(first_b1.ended);
    let last_b0 = writes
        .iter()
        .rev()
        .find(|s| answered_by(&s.outcome, &b0, false))
        .map(|s| since(s.ended));
    let gap: Vec<&SqlSample> = writes
        .iter()
        .filter(|s| s.started >= promoted_at && s.ended < first_b1.ended)
        .collect();
    eprintln!(
        "writes between the promotion and the first on the new primary: {}",
        tally(&gap)
    );
    eprintln!(
        "promotion took {} ms, the old primary stopped {} ms after it began; first write on the new primary answered +{} ms (bound {} ms), last on the old one +{:?} ms; state.json: write VIP on the new primary only +{:?} ms, read VIP empty +{:?} ms",
        ms(promoted_in),
        ms(stopped_in),
        ms(reached),
        ms(bound),
        last_b0.map(ms),
        state_write.map(ms),
        state_read.map(ms)
    );
    assert!(
        reached <= bound,
        "the write VIP reached the new primary after {reached:?} > {bound:?}"
    );
    let state_write =
        state_write.expect("state.json never showed the write VIP on the new primary only");
    assert!(
        state_write <= stopped_in + bound,
        "the write VIP kept the stopped primary: {state_write:?} > {stopped_in:?} + {bound:?}"
    );
    // Once state.json shows the new primary alone, every write begun after that reaches it.
    let tail: Vec<&SqlSample> = writes
        .iter()
        .filter(|s| since(s.started) > state_write + Duration::from_millis(50))
        .collect();
    assert!(
        !tail.is_empty() && tail.iter().all(|s| answered_by(&s.outcome, &b1, false)),
        "after the write VIP settled on the new primary, writes should all reach it: {}",
        tally(&tail)
    );

    // The read VIP drops the promoted server: its last answer as a primary comes within the
    // bound, and nothing answers through it afterwards; it never reached the primary b0.
    assert!(
        reads
            .iter()
            .all(|s| !matches!(&s.outcome, SqlOutcome::Answered { server, .. } if *server == b0)),
        "the read VIP reached the primary: {reads:#?}"
    );
    let answered_as_primary: Vec<Duration> = reads
        .iter()
        .filter(|s| answered_by(&s.outcome, &b1, false))
        .map(|s| since(s.started))
        .collect();
    let state_read = state_read.expect("state.json never showed the read VIP empty");
    eprintln!(
        "reads through the read VIP: {} ({} by the promoted server, the last begun +{:?} ms); state.json: read VIP empty +{} ms (bound {} ms)",
        reads.len(),
        answered_as_primary.len(),
        answered_as_primary.last().map(|d| ms(*d)),
        ms(state_read),
        ms(bound)
    );
    assert!(
        state_read <= bound,
        "the read VIP kept the promoted server for {state_read:?}"
    );
    if let Some(last) = answered_as_primary.last() {
        assert!(
            *last <= bound,
            "the read VIP sent to the promoted server {last:?} after the promotion"
        );
    }
    let final_reads: Vec<&SqlSample> = reads
        .iter()
        .filter(|s| since(s.started) > state_read + Duration::from_millis(50))
        .collect();
    assert!(
        !final_reads.is_empty()
            && final_reads
                .iter()
                .all(|s| matches!(s.outcome, SqlOutcome::NoConnection(_))),
        "after the read VIP emptied, reads through it should not connect: {final_reads:#?}"
    );

    // After: every write reaches the new primary, and the writes it acknowledged are its rows.
    let after = sql_traffic(
        &topology.client,
        write_vip,
        Instant::now() + Duration::from_millis(300),
        2_000_000,
        insert,
    );
    assert!(
        after.len() >= 5 && after.iter().all(|s| answered_by(&s.outcome, &b1, false)),
        "after the promotion every write should reach {b1}: {after:#?}"
    );
    let rows = sql_rows(&topology.lb, direct(1));
    let acknowledged_by = |name: &str| -> BTreeSet<i64> {
        writes
            .iter()
            .chain(&after)
            .filter(|s| answered_by(&s.outcome, name, false))
            .map(|s| s.n)
            .collect()
    };
    let missing: Vec<i64> = acknowledged_by(&b1).difference(&rows).copied().collect();
    assert!(
        missing.is_empty(),
        "writes the new primary acknowledged but lacks: {missing:?}"
    );
    // Replication is asynchronous: what the old primary acknowledged during the promotion, or
    // had not yet streamed, is not on the new one. Reported, as it is PostgreSQL's behaviour.
    eprintln!(
        "writes the old primary acknowledged that the new one lacks: {}",
        acknowledged_by(&b0).difference(&rows).count()
    );
    drop(daemon);
}
