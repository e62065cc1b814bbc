//! The state machine replayed on a virtual clock: event logs in, actions out; and two or three
//! machines joined by a simulated wire to check the outcomes the RFC promises (one master, the
//! right one, within the right time).

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use super::*;

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
const C: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));

fn settings(primary: IpAddr) -> Settings {
    Settings {
        interval_cs: 100,
        preempt: true,
        preempt_delay: Duration::ZERO,
        garp_master_delay: Duration::from_secs(5),
        garp_master_refresh: None,
        primary,
        release_on_stop: false,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn became(from: State, to: State, reason: Reason) -> Action {
    Action::Transition { from, to, reason }
}

/// The actions that make a node master, in their required order.
fn mastership(priority: u8, from: State, reason: Reason) -> Vec<Action> {
    vec![
        Action::Own(true),
        Action::Addresses(true),
        Action::SendAdvert { priority },
        Action::Garp,
        became(from, State::Master, reason),
    ]
}

#[test]
fn timers_are_integer_microseconds_of_the_rfc_formulas() {
    let machine = Machine::new(settings(A), 100);
    // (256 - 100) x 1 s / 256 = 0.609375 s exactly.
    assert_eq!(machine.skew(), us(609_375));
    assert_eq!(machine.master_down_interval(), us(3_609_375));
    let owner = Machine::new(settings(A), 255);
    assert_eq!(owner.skew(), us(3_906));
    let mut short = settings(A);
    short.interval_cs = 10;
    let fast = Machine::new(short, 254);
    // (256 - 254) x 100 ms / 256 = 781.25 us, truncated.
    assert_eq!(fast.skew(), us(781));
    assert_eq!(fast.master_down_interval(), us(300_781));
}

#[test]
fn a_lone_node_becomes_master_after_the_down_interval() {
    let t0 = Instant::now();
    let mut machine = Machine::new(settings(A), 100);
    // What the flow table holds for the group is from before this start: forgotten.
    assert_eq!(
        machine.handle(Event::Start { adopted: false }, t0),
        vec![Action::ForgetFlows, became(State::Initialize, State::Backup, Reason::Startup)]
    );
    assert_eq!(machine.deadline(), Some(t0 + us(3_609_375)));
    assert_eq!(machine.handle(Event::Timer, t0 + ms(3_000)), vec![], "not yet due");
    let at = t0 + us(3_609_375);
    assert_eq!(machine.handle(Event::Timer, at), mastership(100, State::Backup, Reason::MasterDown));
    assert!(machine.owns());
    assert_eq!(machine.master(), Some(A));
    // Adverts every interval; the second gratuitous ARP burst after garp_master_delay.
    assert_eq!(machine.deadline(), Some(at + ms(1_000)));
    assert_eq!(machine.handle(Event::Timer, at + ms(1_000)), vec![Action::SendAdvert { priority: 100 }]);
    assert_eq!(machine.handle(Event::Timer, at + ms(5_000)), vec![Action::SendAdvert { priority: 100 }, Action::Garp]);
    assert_eq!(machine.handle(Event::Timer, at + ms(6_000)), vec![Action::SendAdvert { priority: 100 }], "no refresh configured");
}

#[test]
fn the_address_owner_is_master_at_once() {
    let t0 = Instant::now();
    let mut machine = Machine::new(settings(A), 255);
    let mut expected = vec![Action::ForgetFlows];
    expected.extend(mastership(255, State::Initialize, Reason::Owner));
    assert_eq!(machine.handle(Event::Start { adopted: false }, t0), expected);
}

#[test]
fn a_backup_adopts_the_masters_interval() {
    let t0 = Instant::now();
    let mut machine = Machine::new(settings(A), 100);
    machine.handle(Event::Start { adopted: false }, t0);
    let heard = t0 + ms(200);
    assert_eq!(machine.handle(Event::Advert { source: B, priority: 150, interval_cs: 50 }, heard), vec![]);
    assert_eq!(machine.master(), Some(B));
    assert_eq!(machine.master_interval_cs(), 50);
    // 3 x 0.5 s + (156 x 0.5 s) / 256.
    assert_eq!(machine.deadline(), Some(heard + us(1_500_000 + 304_687)));
}

#[test]
fn a_master_yields_to_a_higher_priority_with_one_last_advert() {
    let t0 = Instant::now();
    let mut machine = Machine::new(settings(A), 100);
    machine.handle(Event::Start { adopted: false }, t0);
    machine.handle(Event::Timer, t0 + us(3_609_375));
    let at = t0 + ms(4_000);
    assert_eq!(
        machine.handle(Event::Advert { source: B, priority: 200, interval_cs: 100 }, at),
        vec![Action::SendAdvert { priority: 100 }, became(State::Master, State::Backup, Reason::HigherPriority)]
    );
    assert_eq!(machine.deadline(), Some(at + machine.master_down_interval()));
    // Ownership until the winner's next advert: its gratuitous ARP is on the way meanwhile.
    assert!(machine.owns());
    assert_eq!(
        machine.handle(Event::Advert { source: B, priority: 200, interval_cs: 100 }, at + ms(1_000)),
        vec![Action::Own(false), Action::ForgetFlows, Action::Addresses(false)]
    );
    assert!(!machine.owns());
}

#[test]
fn a_master_answers_a_lower_priority_at_once_with_an_advert_and_garp() {
    let t0 = Instant::now();
    let mut machine = Machine::new(settings(A), 100);
    machine.handle(Event::Start { adopted: false }, t0);
    machine.handle(Event::Timer, t0 + us(3_609_375));
    let at = t0 + ms(4_000);
    assert_eq!(
        machine.handle(Event::Advert { source: B, priority: 50, interval_cs: 100 }, at),
        vec![Action::SendAdvert { priority: 100 }, Action::Garp]
    );
    assert_eq!(machine.state(), State::Master);
    assert_eq!(machine.deadline(), Some(at + ms(1_000)), "the advert timer restarts");
}

#[test]
fn equal_priorities_go_to_the_higher_primary_address() {
    let t0 = Instant::now();
    let mut low = Machine::new(settings(A), 100);
    low.handle(Event::Start { adopted: false }, t0);
    low.handle(Event::Timer, t0 + us(3_609_375));
    let yielded = low.handle(Event::Advert { source: B, priority: 100, interval_cs: 100 }, t0 + ms(4_000));
    assert_eq!(low.state(), State::Backup, "{yielded:?}");

    let mut high = Machine::new(settings(B), 100);
    high.handle(Event::Start { adopted: false }, t0);
    high.handle(Event::Timer, t0 + us(3_609_375));
    let kept = high.handle(Event::Advert { source: A, priority: 100, interval_cs: 100 }, t0 + ms(4_000));
    assert_eq!(high.state(), State::Master);
    assert_eq!(kept, vec![Action::SendAdvert { priority: 100 }, Action::Garp]);
}

#[test]
fn a_resigning_master_is_replaced_after_skew_time() {
    let t0 = Instant::now();
    let mut machine = Machine::new(settings(A), 100);
    machine.handle(Event::Start { adopted: false }, t0);
    machine.handle(Event::Advert { source: B, priority: 200, interval_cs: 100 }, t0 + ms(100));
    let resigned = t0 + ms(500);
    assert_eq!(machine.handle(Event::Advert { source: B, priority: 0, interval_cs: 100 }, resigned), vec![]);
    assert_eq!(machine.deadline(), Some(resigned + us(609_375)));
    assert_eq!(machine.handle(Event::Timer, resigned + us(609_375)), mastership(100, State::Backup, Reason::MasterDown));
}

#[test]
fn preemption_waits_for_the_delay_after_start() {
    let t0 = Instant::now();
    let mut config = settings(A);
    config.preempt_delay = ms(2_000);
    let mut machine = Machine::new(config, 200);
    machine.handle(Event::Start { adopted: false }, t0);
    let lower = Event::Advert { source: B, priority: 100, interval_cs: 100 };
    // Within the delay a lower master is followed: the down timer restarts.
    machine.handle(lower.clone(), t0 + ms(1_900));
    let mdi = machine.master_down_interval();
    assert_eq!(machine.deadline(), Some(t0 + ms(1_900) + mdi));
    // After it, lower adverts are ignored and the down timer runs out.
    machine.handle(lower.clone(), t0 + ms(2_900));
    machine.handle(lower, t0 + ms(3_900));
    assert_eq!(machine.deadline(), Some(t0 + ms(1_900) + mdi));
    assert_eq!(machine.handle(Event::Timer, t0 + ms(1_900) + mdi), mastership(200, State::Backup, Reason::MasterDown));
}

#[test]
fn preemption_waits_for_the_delay_again_after_a_fault() {
    let t0 = Instant::now();
    let mut config = settings(A);
    config.preempt_delay = ms(2_000);
    let mut machine = Machine::new(config, 200);
    machine.handle(Event::Start { adopted: false }, t0);
    machine.handle(Event::Timer, t0 + machine.master_down_interval());
    assert_eq!(machine.state(), State::Master);
    // Long after the start: the link goes, comes back, and a lower master took over meanwhile.
    let back = t0 + ms(60_000);
    machine.handle(Event::Fault(true), back - ms(5_000));
    machine.handle(Event::Fault(false), back);
    let lower = Event::Advert { source: B, priority: 100, interval_cs: 100 };
    let mdi = machine.master_down_interval();
    machine.handle(lower.clone(), back + ms(1_900));
    assert_eq!(machine.deadline(), Some(back + ms(1_900) + mdi), "followed within the delay");
    machine.handle(lower, back + ms(2_900));
    assert_eq!(machine.deadline(), Some(back + ms(1_900) + mdi), "ignored after it");
    assert_eq!(machine.handle(Event::Timer, back + ms(1_900) + mdi), mastership(200, State::Backup, Reason::MasterDown));
}

#[test]
fn nopreempt_never_takes_over_a_live_master() {
    let t0 = Instant::now();
    let mut config = settings(A);
    config.preempt = false;
    let mut machine = Machine::new(config, 250);
    machine.handle(Event::Start { adopted: false }, t0);
    for second in 0..20 {
        let at = t0 + ms(second * 1_000);
        machine.handle(Event::Advert { source: B, priority: 10, interval_cs: 100 }, at);
        assert_eq!(machine.handle(Event::Timer, at), vec![]);
        assert_eq!(machine.state(), State::Backup);
    }
}

#[test]
fn no_mastership_before_every_backend_has_a_verdict() {
    let t0 = Instant::now();
    let mut machine = Machine::new(settings(A), 100);
    machine.handle(Event::Eligible(false), t0);
    machine.handle(Event::Start { adopted: false }, t0);
    assert_eq!(machine.handle(Event::Timer, t0 + us(3_609_375)), vec![]);
    assert_eq!(machine.state(), State::Backup);
    assert_eq!(machine.deadline(), None);
    let settled = t0 + ms(5_000);
    assert_eq!(machine.handle(Event::Eligible(true), settled), mastership(100, State::Backup, Reason::MasterDown));
}

#[test]
fn a_master_heard_while_waiting_for_eligibility_cancels_the_takeover() {
    let t0 = Instant::now();
    let mut machine = Machine::new(settings(A), 100);
    machine.handle(Event::Eligible(false), t0);
    machine.handle(Event::Start { adopted: false }, t0);
    machine.handle(Event::Timer, t0 + us(3_609_375));
    machine.handle(Event::Advert { source: B, priority: 150, interval_cs: 100 }, t0 + ms(4_000));
    assert_eq!(machine.handle(Event::Eligible(true), t0 + ms(4_100)), vec![]);
    assert_eq!(machine.state(), State::Backup);
}

#[test]
fn an_adopted_ownership_is_kept_until_another_master_is_heard() {
    let t0 = Instant::now();
    let mut machine = Machine::new(settings(A), 100);
    // No gratuitous ARP, no ownership write: the maps already say so.
    assert_eq!(machine.handle(Event::Start { adopted: true }, t0), vec![became(State::Initialize, State::Backup, Reason::Startup)]);
    assert!(machine.owns());
    // One interval plus skew, not three.
    assert_eq!(machine.deadline(), Some(t0 + us(1_609_375)));
    assert_eq!(
        machine.handle(Event::Advert { source: B, priority: 150, interval_cs: 100 }, t0 + ms(300)),
        vec![Action::Own(false), Action::ForgetFlows, Action::Addresses(false)]
    );
    assert!(!machine.owns());

    let mut alone = Machine::new(settings(A), 100);
    alone.handle(Event::Start { adopted: true }, t0);
    assert_eq!(alone.handle(Event::Timer, t0 + us(1_609_375)), mastership(100, State::Backup, Reason::MasterDown));
}

#[test]
fn an_adopted_ownership_keeps_its_flows_until_another_master_is_heard() {
    let t0 = Instant::now();
    // A restart while no one else took over: the flows this node tracked are the ones the
    // router still sends here, so they stay, and the takeover forgets nothing.
    let mut alone = Machine::new(settings(A), 200);
    assert!(!alone.handle(Event::Start { adopted: true }, t0).contains(&Action::ForgetFlows));
    let actions = alone.handle(Event::Timer, t0 + us(1_218_750));
    assert_eq!(actions, mastership(200, State::Backup, Reason::MasterDown));

    // The daemon died and B took over meanwhile (the router sends to B): this node, which
    // preempts B, forgets its flows at B's first advert, once, and takes over without
    // forgetting again.
    let mut preempting = Machine::new(settings(A), 200);
    preempting.handle(Event::Start { adopted: true }, t0);
    let lower = Event::Advert { source: B, priority: 100, interval_cs: 100 };
    assert_eq!(preempting.handle(lower.clone(), t0 + ms(300)), vec![Action::ForgetFlows]);
    assert!(preempting.owns(), "it keeps serving what the router still sends here");
    assert_eq!(preempting.handle(lower.clone(), t0 + ms(1_000)), vec![], "once per contest");
    assert_eq!(preempting.handle(Event::Timer, t0 + us(1_218_750)), mastership(200, State::Backup, Reason::MasterDown));
    // A master that steps down for a higher one lets go, and forgets, at its next advert.
    let higher = Event::Advert { source: B, priority: 250, interval_cs: 100 };
    preempting.handle(higher.clone(), t0 + ms(2_000));
    let actions = preempting.handle(higher, t0 + ms(3_000));
    assert_eq!(actions, vec![Action::Own(false), Action::ForgetFlows, Action::Addresses(false)]);
}

#[test]
fn a_resigned_master_that_hears_no_successor_keeps_its_flows() {
    let t0 = Instant::now();
    let mut machine = Machine::new(settings(A), 100);
    machine.handle(Event::Start { adopted: false }, t0);
    machine.handle(Event::Timer, t0 + us(3_609_375));
    let at = t0 + ms(10_000);
    assert_eq!(
        machine.handle(Event::Resign, at),
        vec![Action::SendAdvert { priority: 0 }, became(State::Master, State::Backup, Reason::Resigned)]
    );
    // No one answers: it served throughout, so its flows are the right ones.
    let actions = machine.handle(Event::Timer, at + us(3_609_375));
    assert_eq!(actions, mastership(100, State::Backup, Reason::MasterDown));
}

#[test]
fn a_zero_weight_track_failure_is_a_fault() {
    let t0 = Instant::now();
    let mut machine = Machine::new(settings(A), 100);
    machine.handle(Event::Start { adopted: false }, t0);
    machine.handle(Event::Timer, t0 + us(3_609_375));
    let at = t0 + ms(5_000);
    assert_eq!(
        machine.handle(Event::Fault(true), at),
        vec![
            Action::SendAdvert { priority: 0 },
            Action::Own(false),
            Action::ForgetFlows,
            Action::Addresses(false),
            became(State::Master, State::Fault, Reason::Fault),
        ]
    );
    assert_eq!(machine.deadline(), None);
    assert_eq!(machine.handle(Event::Advert { source: B, priority: 50, interval_cs: 100 }, at + ms(100)), vec![], "silent in fault");
    assert_eq!(machine.handle(Event::Fault(false), at + ms(200)), vec![became(State::Fault, State::Backup, Reason::FaultCleared)]);
    assert_eq!(machine.deadline(), Some(at + ms(200) + us(3_609_375)));
}

#[test]
fn a_resigned_master_does_not_preempt_its_successor() {
    let t0 = Instant::now();
    let mut machine = Machine::new(settings(A), 200);
    machine.handle(Event::Start { adopted: false }, t0);
    machine.handle(Event::Timer, t0 + machine.master_down_interval());
    let at = t0 + ms(10_000);
    assert_eq!(
        machine.handle(Event::Resign, at),
        vec![Action::SendAdvert { priority: 0 }, became(State::Master, State::Backup, Reason::Resigned)]
    );
    // Still forwarding until the successor is heard: the router sends here until its
    // gratuitous ARP.
    assert!(machine.owns());
    let successor = Event::Advert { source: B, priority: 100, interval_cs: 100 };
    assert_eq!(machine.handle(successor, at + us(609_375)), vec![Action::Own(false), Action::ForgetFlows, Action::Addresses(false)]);
    assert!(!machine.owns());
    // The successor has a lower priority; preempt is on, yet it is followed.
    for n in 1..10 {
        machine.handle(Event::Advert { source: B, priority: 100, interval_cs: 100 }, at + ms(n * 1_000));
        assert_eq!(machine.handle(Event::Timer, at + ms(n * 1_000)), vec![]);
    }
    // When the successor dies, this node takes over again.
    let gone = at + ms(9_000) + machine.master_down_interval();
    assert_eq!(machine.handle(Event::Timer, gone), mastership(200, State::Backup, Reason::MasterDown));
}

#[test]
fn a_resigned_master_alone_keeps_forwarding_and_takes_over_again() {
    let t0 = Instant::now();
    let mut machine = Machine::new(settings(A), 200);
    machine.handle(Event::Start { adopted: false }, t0);
    machine.handle(Event::Timer, t0 + machine.master_down_interval());
    let at = t0 + ms(10_000);
    machine.handle(Event::Resign, at);
    assert!(machine.owns(), "nobody else forwards yet");
    // No successor: after the down interval it is master again (the ownership it never gave up
    // is written again, idempotently, in the order mastership requires).
    let alone = at + machine.master_down_interval();
    assert_eq!(machine.handle(Event::Timer, alone), mastership(200, State::Backup, Reason::MasterDown));
}

#[test]
fn stopping_keeps_the_ownership_unless_release_on_stop() {
    let t0 = Instant::now();
    let mut kept = Machine::new(settings(A), 100);
    kept.handle(Event::Start { adopted: false }, t0);
    kept.handle(Event::Timer, t0 + us(3_609_375));
    assert_eq!(kept.handle(Event::Stop, t0 + ms(5_000)), vec![]);
    assert!(kept.owns());
    assert_eq!(kept.deadline(), None);

    let mut config = settings(A);
    config.release_on_stop = true;
    let mut released = Machine::new(config, 100);
    released.handle(Event::Start { adopted: false }, t0);
    released.handle(Event::Timer, t0 + us(3_609_375));
    assert_eq!(
        released.handle(Event::Stop, t0 + ms(5_000)),
        vec![
            Action::SendAdvert { priority: 0 },
            Action::Own(false),
            Action::ForgetFlows,
            Action::Addresses(false),
            became(State::Master, State::Backup, Reason::Stopped),
        ]
    );
}

#[test]
fn garp_refresh_repeats_while_master() {
    let t0 = Instant::now();
    let mut config = settings(A);
    config.garp_master_delay = ms(500);
    config.garp_master_refresh = Some(ms(3_000));
    let mut machine = Machine::new(config, 255);
    machine.handle(Event::Start { adopted: false }, t0);
    assert_eq!(machine.handle(Event::Timer, t0 + ms(500)), vec![Action::Garp]);
    assert_eq!(machine.deadline(), Some(t0 + ms(1_000)));
    machine.handle(Event::Timer, t0 + ms(1_000));
    machine.handle(Event::Timer, t0 + ms(2_000));
    machine.handle(Event::Timer, t0 + ms(3_000));
    assert_eq!(machine.handle(Event::Timer, t0 + ms(3_500)), vec![Action::Garp]);
}

/// Machines joined by a wire that delivers every advert to the others after `latency`, unless
/// the link between the two is cut. Events are processed in time order on a virtual clock.
struct Wire {
    nodes: Vec<Machine>,
    addresses: Vec<IpAddr>,
    now: Instant,
    latency: Duration,
    /// (deliver at, to, from, priority, interval)
    in_flight: Vec<(Instant, usize, usize, u8, u16)>,
    cut: Vec<(usize, usize)>,
    /// (time, node, action) of every action taken.
    log: Vec<(Instant, usize, Action)>,
}

impl Wire {
    fn new(nodes: Vec<(IpAddr, u8, Settings)>) -> Self {
        let addresses = nodes.iter().map(|(address, ..)| *address).collect();
        let nodes = nodes.into_iter().map(|(_, priority, settings)| Machine::new(settings, priority)).collect();
        Self { nodes, addresses, now: Instant::now(), latency: ms(1), in_flight: Vec::new(), cut: Vec::new(), log: Vec::new() }
    }

    fn apply(&mut self, node: usize, event: Event) {
        let actions = self.nodes[node].handle(event, self.now);
        for action in actions {
            if let Action::SendAdvert { priority } = action {
                let interval = self.nodes[node].settings.interval_cs;
                for other in 0..self.nodes.len() {
                    let blocked = self.cut.contains(&(node.min(other), node.max(other)));
                    if other != node && !blocked {
                        self.in_flight.push((self.now + self.latency, other, node, priority, interval));
                    }
                }
            }
            self.log.push((self.now, node, action));
        }
    }

    /// Runs until `until`, processing timers and deliveries in time order.
    fn run_until(&mut self, until: Instant) {
        loop {
            let timer = (0..self.nodes.len()).filter_map(|n| self.nodes[n].deadline().map(|at| (at, n))).min();
            let delivery = self.in_flight.iter().enumerate().map(|(i, d)| (d.0, i)).min();
            let next = match (timer, delivery) {
                (Some(t), Some(d)) => t.0.min(d.0),
                (Some(t), None) => t.0,
                (None, Some(d)) => d.0,
                (None, None) => break,
            };
            if next > until {
                break;
            }
            self.now = next;
            if let Some((at, index)) = delivery.filter(|d| d.0 == next) {
                let (_, to, from, priority, interval_cs) = self.in_flight.remove(index);
                let _ = at;
                self.apply(to, Event::Advert { source: self.addresses[from], priority, interval_cs });
            } else if let Some((_, node)) = timer {
                self.apply(node, Event::Timer);
            }
        }
        self.now = until;
    }

    fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|n| self.nodes[*n].state() == State::Master).collect()
    }

    fn first_advert_after(&self, node: usize, after: Instant) -> Option<Instant> {
        self.log.iter().find(|(at, n, action)| *n == node && *at > after && matches!(action, Action::SendAdvert { priority } if *priority > 0)).map(|entry| entry.0)
    }
}

#[test]
fn three_nodes_elect_the_highest_and_fail_over_in_order() {
    let mut wire = Wire::new(vec![(A, 100, settings(A)), (B, 200, settings(B)), (C, 150, settings(C))]);
    let t0 = wire.now;
    for node in 0..3 {
        wire.apply(node, Event::Start { adopted: false });
    }
    wire.run_until(t0 + ms(10_000));
    assert_eq!(wire.masters(), vec![1], "the highest priority wins");
    // The master's link goes down: C (next highest) takes over within MDI + one interval.
    wire.cut = vec![(0, 1), (1, 2)];
    let failed = wire.now;
    wire.nodes[1].handle(Event::Stop, failed);
    wire.run_until(failed + ms(10_000));
    assert_eq!(wire.masters(), vec![1, 2], "B, cut off and stopped, still owns (hitless); C took over");
    let takeover = wire.first_advert_after(2, failed).expect("C advertises") - failed;
    let bound = wire.nodes[2].master_down_interval() + ms(1_000);
    assert!(takeover <= bound, "takeover after {takeover:?}, bound {bound:?}");
    assert_eq!(wire.nodes[0].master(), Some(C));
}

#[test]
fn a_split_brain_heals_to_exactly_one_master_which_announces_itself() {
    let mut wire = Wire::new(vec![(A, 100, settings(A)), (B, 100, settings(B))]);
    let t0 = wire.now;
    wire.cut = vec![(0, 1)];
    wire.apply(0, Event::Start { adopted: false });
    wire.apply(1, Event::Start { adopted: false });
    wire.run_until(t0 + ms(8_000));
    assert_eq!(wire.masters(), vec![0, 1], "partitioned: both masters");
    let healed = wire.now;
    wire.cut.clear();
    wire.run_until(healed + ms(5_000));
    assert_eq!(wire.masters(), vec![1], "equal priority: the higher address");
    assert!(
        wire.log.iter().any(|(at, node, action)| *at > healed && *node == 1 && *action == Action::Garp),
        "the winner sent a gratuitous ARP burst after the heal"
    );
    assert!(wire.log.iter().any(|(at, node, action)| *at > healed && *node == 0 && *action == Action::Own(false)));
}

#[test]
fn a_returning_higher_priority_node_preempts_after_its_delay() {
    let mut high = settings(B);
    high.preempt_delay = ms(3_000);
    let mut wire = Wire::new(vec![(A, 100, settings(A)), (B, 200, high)]);
    let t0 = wire.now;
    wire.apply(0, Event::Start { adopted: false });
    wire.run_until(t0 + ms(5_000));
    assert_eq!(wire.masters(), vec![0]);
    let returned = wire.now;
    wire.apply(1, Event::Start { adopted: false });
    wire.run_until(returned + ms(2_900));
    assert_eq!(wire.masters(), vec![0], "not before the delay");
    wire.run_until(returned + ms(3_000) + wire.nodes[1].master_down_interval() + ms(1_100));
    assert_eq!(wire.masters(), vec![1], "after the delay and one down interval");
}

#[test]
fn every_event_in_every_state_keeps_the_invariants() {
    // A bounded random walk over events: ownership is held exactly by masters (and adopted or
    // resigned backups), a master always has an advert deadline, a fault never owns.
    let events = |step: u64| match step % 9 {
        0 => Event::Timer,
        1 => Event::Advert { source: B, priority: (step * 37 % 256) as u8, interval_cs: 1 + (step % 200) as u16 },
        2 => Event::Advert { source: C, priority: 100, interval_cs: 100 },
        3 => Event::Priority((step * 13 % 255) as u8),
        4 => Event::Fault(step.is_multiple_of(4)),
        5 => Event::Eligible(!step.is_multiple_of(3)),
        6 => Event::Resign,
        7 => Event::Timer,
        _ => Event::Advert { source: B, priority: 0, interval_cs: 100 },
    };
    let mut visited = std::collections::BTreeSet::new();
    for seed in 0..50u64 {
        let t0 = Instant::now();
        let mut machine = Machine::new(settings(A), 1 + (seed * 7 % 254) as u8);
        machine.handle(Event::Start { adopted: seed % 2 == 0 }, t0);
        let mut now = t0;
        for step in 0..400 {
            let event = events(seed * 1_000 + step * (seed + 1));
            now += ms(step % 700);
            machine.handle(event, now);
            visited.insert(machine.state().name());
            match machine.state() {
                State::Master => {
                    assert!(machine.owns());
                    assert!(machine.deadline().is_some());
                }
                State::Fault => assert!(!machine.owns()),
                State::Backup | State::Initialize => {}
            }
        }
    }
    assert_eq!(visited.into_iter().collect::<Vec<_>>(), ["backup", "fault", "master"], "the walk reaches every state");
}
