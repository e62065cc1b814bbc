//! The VRRPv3 state machine of one group (RFC 9568 §6.4), pure: `(state, event, now) ->
//! (state, actions, next deadline)`. No clock and no I/O: the group task feeds it received
//! adverts (already checked by the codec and the group), timer expiries, track and eligibility
//! changes and operator requests, and carries out the actions it returns, in order.
//!
//! Beyond the RFC, as keepalived has it and the operators who replace it expect: a Fault state
//! (a failed track of weight 0), `preempt_delay` after start, a manual resign, and keeping the
//! ownership a restarted daemon adopts from the pinned maps, or a resigning master had, until
//! another master is heard.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

/// One centisecond, the unit of the advert interval.
const CENTISECOND_US: u64 = 10_000;

/// Where the group stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not started yet.
    Initialize,
    Backup,
    Master,
    /// A track of weight 0 failed (or the effective priority is 0): silent, owns nothing.
    Fault,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
            State::Fault => "fault",
        }
    }
}

/// Why a transition happened (events, `elections` view).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Started as the address owner (priority 255).
    Owner,
    /// Started, waiting for a master.
    Startup,
    /// No advert for Master_Down_Interval (or Skew_Time after a priority-0 advert).
    MasterDown,
    /// An advert with a higher priority, or an equal one from a higher address.
    HigherPriority,
    /// The operator resigned the group.
    Resigned,
    /// A track of weight 0 failed.
    Fault,
    /// The failed track recovered.
    FaultCleared,
    /// The daemon stopped with `release_on_stop`.
    Stopped,
}

impl Reason {
    /// The name in events, the status and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Owner => "owner",
            Reason::Startup => "startup",
            Reason::MasterDown => "master_down",
            Reason::HigherPriority => "higher_priority",
            Reason::Resigned => "resigned",
            Reason::Fault => "fault",
            Reason::FaultCleared => "fault_cleared",
            Reason::Stopped => "stopped",
        }
    }
}

/// What the group's configuration fixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Our advert interval, centiseconds (1..=4095).
    pub interval_cs: u16,
    /// Take over from a lower-priority master.
    pub preempt: bool,
    /// No preemption until this long after start: a restarted node takes over only with a
    /// settled view.
    pub preempt_delay: Duration,
    /// The second gratuitous ARP / NA burst, this long after becoming master.
    pub garp_master_delay: Duration,
    /// Further bursts every this long while master.
    pub garp_master_refresh: Option<Duration>,
    /// Our primary address on the interface: ties between masters go to the higher one.
    pub primary: IpAddr,
    /// On stop, a master resigns (priority-0 advert) and gives up ownership; otherwise the data
    /// plane keeps forwarding with it (hitless restart).
    pub release_on_stop: bool,
}

/// An input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The group starts. `adopted`: the pinned maps say this node owns the group's VIPs (a
    /// restarted daemon); it keeps them until another master is heard.
    Start { adopted: bool },
    /// A valid advert of this group from another node.
    Advert { source: IpAddr, priority: u8, interval_cs: u16 },
    /// The deadline returned by [`Machine::deadline`] has passed.
    Timer,
    /// The effective priority changed (base plus failed tracks' weights, 1..=255).
    Priority(u8),
    /// A track of weight 0 failed (true) or recovered (false).
    Fault(bool),
    /// Whether every probed backend has a verdict: not eligible, no mastership.
    Eligible(bool),
    /// The operator resigns: priority 0 now, no preemption until this node is master again.
    Resign,
    /// The daemon stops.
    Stop,
}

/// An output, carried out in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ownership of every VIP of the group: one map write.
    Own(bool),
    /// Forget the flows this node tracked for the group's VIPs. Another node serves them (or
    /// did while this one did not), choosing each new flow's backend by the table; an entry
    /// kept here, placed while the table was another, would send such a flow (or a later one
    /// on the same ports) elsewhere when this node serves again.
    ForgetFlows,
    /// Add (true) or remove the group's VRRP addresses on the interface.
    Addresses(bool),
    /// Send an advert with this priority.
    SendAdvert { priority: u8 },
    /// A burst of gratuitous ARP / unsolicited NA (Override) for the group's addresses.
    Garp,
    /// State changed: record the event, run the notify command.
    Transition { from: State, to: State, reason: Reason },
}

/// The state machine of one group.
#[derive(Debug, Clone)]
pub struct Machine {
    settings: Settings,
    state: State,
    /// Effective priority (1..=255).
    priority: u8,
    fault: bool,
    eligible: bool,
    /// Resigned: accepts any master until it is master again.
    resigned: bool,
    /// Holds the ownership (master, or adopted or resigned and no other master heard yet).
    owns: bool,
    /// Owning without being master, it heard another master and forgot its flows (once).
    contested: bool,
    /// The interval the master advertises (ours while master).
    master_interval_cs: u16,
    /// The master as last heard (ours while master).
    master: Option<IpAddr>,
    /// When the group started, or last left Fault: preemption waits `preempt_delay` from it.
    started: Option<Instant>,
    advert_at: Option<Instant>,
    down_at: Option<Instant>,
    /// The down timer expired while not eligible: become master once eligible.
    down_expired: bool,
    garp_at: Option<Instant>,
}

impl Machine {
    /// A group in Initialize with base priority `priority` (1..=255), eligible until told
    /// otherwise.
    pub fn new(settings: Settings, priority: u8) -> Self {
        let master_interval_cs = settings.interval_cs;
        Self {
            settings,
            state: State::Initialize,
            priority: priority.max(1),
            fault: false,
            eligible: true,
            resigned: false,
            owns: false,
            contested: false,
            master_interval_cs,
            master: None,
            started: None,
            advert_at: None,
            down_at: None,
            down_expired: false,
            garp_at: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The master's address as last heard, ours while master.
    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }

    /// The interval in force: ours while master, the master's while backup.
    pub fn master_interval_cs(&self) -> u16 {
        self.master_interval_cs
    }

    /// Whether this node holds the group's ownership in the maps.
    pub fn owns(&self) -> bool {
        self.owns
    }

    /// When the machine next needs a [`Event::Timer`].
    pub fn deadline(&self) -> Option<Instant> {
        [self.advert_at, self.down_at, self.garp_at].into_iter().flatten().min()
    }

    /// Skew_Time = ((256 - Priority) x Master_Adver_Interval) / 256 (RFC 9568 §6.1), in
    /// integer microseconds.
    pub fn skew(&self) -> Duration {
        let interval_us = u64::from(self.master_interval_cs) * CENTISECOND_US;
        Duration::from_micros((256 - u64::from(self.priority)) * interval_us / 256)
    }

    /// Master_Down_Interval = 3 x Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        Duration::from_micros(3 * u64::from(self.master_interval_cs) * CENTISECOND_US) + self.skew()
    }

    fn interval(&self) -> Duration {
        Duration::from_micros(u64::from(self.settings.interval_cs) * CENTISECOND_US)
    }

    /// Whether a lower-priority master may be taken over now.
    fn may_preempt(&self, now: Instant) -> bool {
        let settled = self.started.is_some_and(|started| now >= started + self.settings.preempt_delay);
        self.settings.preempt && !self.resigned && settled
    }

    /// Feeds one event; returns the actions to carry out, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Start { adopted } => self.start(adopted, now, &mut actions),
            Event::Advert { source, priority, interval_cs } => self.advert(source, priority, interval_cs, now, &mut actions),
            Event::Timer => self.timer(now, &mut actions),
            Event::Priority(priority) => self.priority = priority.max(1),
            Event::Fault(fault) => self.fault_changed(fault, now, &mut actions),
            Event::Eligible(eligible) => {
                self.eligible = eligible;
                if eligible && self.down_expired && self.state == State::Backup {
                    self.become_master(Reason::MasterDown, now, &mut actions);
                }
            }
            Event::Resign => self.resign(now, &mut actions),
            Event::Stop => self.stop(&mut actions),
        }
        actions
    }

    fn start(&mut self, adopted: bool, now: Instant, actions: &mut Vec<Action>) {
        if self.state != State::Initialize {
            return;
        }
        self.started = Some(now);
        self.owns = adopted;
        if !adopted {
            // Whatever the flow table holds for the group is from before: a daemon that
            // stopped (or died) after it let go, and the node served nothing since.
            actions.push(Action::ForgetFlows);
        }
        if self.fault {
            self.enter(State::Fault, Reason::Fault, actions);
            return;
        }
        if self.priority == 255 && self.eligible {
            self.become_master(Reason::Owner, now, actions);
            return;
        }
        self.enter(State::Backup, Reason::Startup, actions);
        // A restarted node that adopted the ownership waits only one interval plus skew: the
        // data plane kept forwarding while no daemon ran, so a quick answer keeps it so.
        let wait = if adopted { self.interval() + self.skew() } else { self.master_down_interval() };
        self.down_at = Some(now + wait);
    }

    fn advert(&mut self, source: IpAddr, priority: u8, interval_cs: u16, now: Instant, actions: &mut Vec<Action>) {
        match self.state {
            State::Master if priority == 0 => {
                // RFC 9568 §6.4.3: answer a resigning master at once.
                actions.push(Action::SendAdvert { priority: self.priority });
                self.advert_at = Some(now + self.interval());
            }
            State::Master => {
                let higher = priority > self.priority || (priority == self.priority && source > self.settings.primary);
                if higher {
                    // One last advert, so the winner hears the loser and answers (with a
                    // gratuitous ARP burst: a router cache left on us after a partition heals).
                    actions.push(Action::SendAdvert { priority: self.priority });
                    // The ownership and the addresses go at the winner's next advert, one
                    // interval later, as a resigning master's do: the router keeps sending here
                    // until the winner's gratuitous ARP, which follows its first advert, and
                    // both nodes choose alike meanwhile.
                    self.follow(source, interval_cs, now);
                    self.advert_at = None;
                    self.garp_at = None;
                    self.enter(State::Backup, Reason::HigherPriority, actions);
                } else {
                    // Split brain healing: the other master must hear us and the router must
                    // see our MAC again.
                    actions.push(Action::SendAdvert { priority: self.priority });
                    actions.push(Action::Garp);
                    self.advert_at = Some(now + self.interval());
                }
            }
            State::Backup if priority == 0 => {
                self.master = Some(source);
                self.down_at = Some(now + self.skew());
            }
            State::Backup => {
                if self.may_preempt(now) && priority < self.priority {
                    // Ignored: the down timer runs out and this node takes over. An ownership
                    // it adopted is contested: the router sends to that master now, so what
                    // this node tracked went stale.
                    if self.owns && !self.contested {
                        self.contested = true;
                        actions.push(Action::ForgetFlows);
                    }
                    return;
                }
                if self.owns {
                    // An adopted ownership lasts until another master is heard.
                    self.release(actions);
                }
                self.follow(source, interval_cs, now);
            }
            State::Initialize | State::Fault => {}
        }
    }

    /// Accepts `source` as master: adopt its interval and restart the down timer.
    fn follow(&mut self, source: IpAddr, interval_cs: u16, now: Instant) {
        self.master = Some(source);
        self.master_interval_cs = interval_cs.max(1);
        self.down_expired = false;
        self.down_at = Some(now + self.master_down_interval());
    }

    fn timer(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
        match self.state {
            State::Master => {
                if due(self.advert_at) {
                    actions.push(Action::SendAdvert { priority: self.priority });
                    self.advert_at = Some(now + self.interval());
                }
                if due(self.garp_at) {
                    actions.push(Action::Garp);
                    self.garp_at = self.settings.garp_master_refresh.map(|refresh| now + refresh);
                }
            }
            State::Backup if due(self.down_at) => {
                self.down_at = None;
                if self.eligible {
                    self.become_master(Reason::MasterDown, now, actions);
                } else {
                    self.down_expired = true;
                }
            }
            _ => {}
        }
    }

    fn become_master(&mut self, reason: Reason, now: Instant, actions: &mut Vec<Action>) {
        // Ownership first (one map write), then the addresses, the advert and the announcement.
        actions.push(Action::Own(true));
        actions.push(Action::Addresses(true));
        actions.push(Action::SendAdvert { priority: self.priority });
        actions.push(Action::Garp);
        self.owns = true;
        self.contested = false;
        self.resigned = false;
        self.down_expired = false;
        self.down_at = None;
        self.master = Some(self.settings.primary);
        self.master_interval_cs = self.settings.interval_cs;
        self.advert_at = Some(now + self.interval());
        self.garp_at = Some(now + self.settings.garp_master_delay);
        self.enter(State::Master, reason, actions);
    }

    /// Gives up the ownership, the flows and the addresses.
    fn release(&mut self, actions: &mut Vec<Action>) {
        actions.push(Action::Own(false));
        actions.push(Action::ForgetFlows);
        actions.push(Action::Addresses(false));
        self.owns = false;
        self.contested = false;
    }

    fn fault_changed(&mut self, fault: bool, now: Instant, actions: &mut Vec<Action>) {
        if self.fault == fault {
            return;
        }
        self.fault = fault;
        match (fault, self.state) {
            (true, State::Master) => {
                actions.push(Action::SendAdvert { priority: 0 });
                self.release(actions);
                self.stop_timers();
                self.enter(State::Fault, Reason::Fault, actions);
            }
            (true, State::Backup) => {
                if self.owns {
                    self.release(actions);
                }
                self.stop_timers();
                self.enter(State::Fault, Reason::Fault, actions);
            }
            (false, State::Fault) => {
                // A node back from a fault is a returning node: its probes failed with it (a
                // lost link takes them all down), so it preempts only after `preempt_delay`
                // again, as after a start.
                self.started = Some(now);
                self.master_interval_cs = self.settings.interval_cs;
                self.down_at = Some(now + self.master_down_interval());
                self.enter(State::Backup, Reason::FaultCleared, actions);
            }
            _ => {}
        }
    }

    fn resign(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.resigned = true;
        if self.state != State::Master {
            return;
        }
        // Priority 0 at once, but the ownership and the addresses stay until the successor is
        // heard, as an adopted ownership does: the router keeps sending here until the
        // successor's gratuitous ARP, Skew_Time later, and letting go now would drop all of it
        // (a lost SYN is retried only a second later). Both nodes choose alike meanwhile.
        actions.push(Action::SendAdvert { priority: 0 });
        self.stop_timers();
        self.master = None;
        self.master_interval_cs = self.settings.interval_cs;
        self.down_at = Some(now + self.master_down_interval());
        self.enter(State::Backup, Reason::Resigned, actions);
    }

    fn stop(&mut self, actions: &mut Vec<Action>) {
        if self.state == State::Master && self.settings.release_on_stop {
            actions.push(Action::SendAdvert { priority: 0 });
            self.release(actions);
            self.stop_timers();
            self.enter(State::Backup, Reason::Stopped, actions);
        }
        self.stop_timers();
    }

    fn stop_timers(&mut self) {
        self.advert_at = None;
        self.down_at = None;
        self.garp_at = None;
        self.down_expired = false;
    }

    fn enter(&mut self, to: State, reason: Reason, actions: &mut Vec<Action>) {
        let from = self.state;
        self.state = to;
        actions.push(Action::Transition { from, to, reason });
    }
}

#[cfg(test)]
#[path = "fsm_tests.rs"]
mod tests;
