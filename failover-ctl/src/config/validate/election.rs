//! Validation of `[[election]]` groups and their tracks: every rule that keeps a group
//! workable (one family, a VRID unique on its interface, intervals VRRP can carry) and that ties
//! it to the VIPs it decides for (each VIP follows at most one group).

use std::collections::HashMap;
use std::time::Duration;

use super::super::schema::{RawElection, RawTrack};
use super::*;
use crate::election::codec::{ChecksumForm, MAX_INTERVAL_CS};

/// The advert interval when none is given (RFC 9568 default: 100 cs).
const DEFAULT_ADVERT_INTERVAL: Duration = Duration::from_secs(1);
/// keepalived's `garp_master_delay` default.
const DEFAULT_GARP_MASTER_DELAY: Duration = Duration::from_secs(5);
/// keepalived's `garp_master_repeat` default.
const DEFAULT_GARP_MASTER_REPEAT: u32 = 5;
const DEFAULT_PRIORITY: u8 = 100;
/// Elections are ownership groups 1..=255 in the data plane (`failover_common::maps::MAX_GROUPS`).
const MAX_ELECTIONS: usize = failover_common::maps::MAX_GROUPS as usize - 1;

impl Validator {
    pub(super) fn elections(&mut self, raw: Vec<RawElection>, vips: &[Vip], defaults: &Defaults) -> Vec<Election> {
        let elections: Vec<Election> =
            raw.into_iter().enumerate().map(|(index, election)| self.election(index, election, vips, defaults)).collect();
        self.across_elections(&elections, vips);
        elections
    }

    fn election(&mut self, index: usize, raw: RawElection, vips: &[Vip], defaults: &Defaults) -> Election {
        let path = format!("election[{index}]");
        let name = raw.name.unwrap_or_else(|| {
            self.problem(format!("{path}.name"), "is required");
            String::new()
        });
        let interface = raw.interface.unwrap_or_else(|| {
            self.problem(format!("{path}.interface"), "is required");
            String::new()
        });
        if !interface.is_empty() && (interface.len() > MAX_INTERFACE_NAME || interface.contains(['/', ' '])) {
            self.problem(format!("{path}.interface"), format!("not a valid interface name: {interface:?}"));
        }
        let vrid = match raw.vrid {
            None => {
                self.problem(format!("{path}.vrid"), "is required (1 to 255)");
                1
            }
            Some(vrid) => u8::try_from(vrid).ok().filter(|vrid| *vrid >= 1).unwrap_or_else(|| {
                self.problem(format!("{path}.vrid"), format!("must be between 1 and 255, got {vrid}"));
                1
            }),
        };
        let priority = match raw.priority {
            None => DEFAULT_PRIORITY,
            Some(priority) => u8::try_from(priority).ok().filter(|priority| *priority >= 1).unwrap_or_else(|| {
                self.problem(
                    format!("{path}.priority"),
                    format!("must be between 1 and 255 (255: the address owner; 0 is resigning, not a setting), got {priority}"),
                );
                DEFAULT_PRIORITY
            }),
        };
        let advert_interval = self.field(&format!("{path}.advert_interval"), raw.advert_interval.as_deref(), DEFAULT_ADVERT_INTERVAL, |text| {
            let interval = parse_positive_duration(text)?;
            let centiseconds = interval.as_millis() / 10;
            if interval.as_nanos() % 10_000_000 != 0 || !(1..=u128::from(MAX_INTERVAL_CS)).contains(&centiseconds) {
                return Err(format!("must be a multiple of 10ms from 10ms to 40.95s (VRRP carries centiseconds), got {text:?}"));
            }
            Ok(interval)
        });
        let addresses = self.address_list(&format!("{path}.addresses"), raw.addresses.unwrap_or_default(), true);
        let family_v4 = addresses.first().map(IpAddr::is_ipv4);
        let unicast_peers = self.address_list(&format!("{path}.unicast_peers"), raw.unicast_peers.unwrap_or_default(), false);
        if let Some(v4) = family_v4 {
            for (number, peer) in unicast_peers.iter().enumerate() {
                if peer.is_ipv4() != v4 {
                    self.problem(format!("{path}.unicast_peers[{number}]"), format!("{peer} is not of the family of the group's addresses"));
                }
            }
        }
        let checksum = match raw.checksum.as_deref() {
            None | Some("pseudo-header") => ChecksumForm::PseudoHeader,
            Some("rfc9568") => ChecksumForm::Rfc9568,
            Some(other) => {
                self.problem(format!("{path}.checksum"), format!("must be \"pseudo-header\" or \"rfc9568\", got {other:?}"));
                ChecksumForm::PseudoHeader
            }
        };
        let names = raw.vips.unwrap_or_default();
        let mut settle = Duration::ZERO;
        for (number, vip_name) in names.iter().enumerate() {
            match vips.iter().find(|vip| &vip.name == vip_name) {
                None => self.problem(format!("{path}.vips[{number}]"), format!("no VIP is named {vip_name:?}")),
                Some(vip) => {
                    // A returning node (a restart, a link back) preempts only once its backends
                    // can be up again: `rise` successes each, twice over for jitter, timeouts
                    // and a probe that was mid-interval (measured: 350-450 ms after a link flap
                    // with rise x interval = 200 ms).
                    for backend in &vip.backends {
                        settle = settle.max(2 * backend.probe.timing.interval * backend.probe.timing.rise);
                    }
                }
            }
        }
        let preempt_delay = self.field(&format!("{path}.preempt_delay"), raw.preempt_delay.as_deref(), settle, parse_duration);
        let garp_master_delay =
            self.field(&format!("{path}.garp_master_delay"), raw.garp_master_delay.as_deref(), DEFAULT_GARP_MASTER_DELAY, parse_duration);
        let refresh = self.field(&format!("{path}.garp_master_refresh"), raw.garp_master_refresh.as_deref(), Duration::ZERO, parse_duration);
        let garp_master_repeat = match raw.garp_master_repeat {
            None => DEFAULT_GARP_MASTER_REPEAT,
            Some(repeat) => u32::try_from(repeat).ok().filter(|repeat| (1..=100).contains(repeat)).unwrap_or_else(|| {
                self.problem(format!("{path}.garp_master_repeat"), format!("must be between 1 and 100, got {repeat}"));
                DEFAULT_GARP_MASTER_REPEAT
            }),
        };
        let notify = raw.notify.unwrap_or_default();
        if raw_notify_is_empty_program(&notify) {
            self.problem(format!("{path}.notify"), "must name a program: a non-empty list, run without a shell");
        }
        let notify_user = if notify.is_empty() {
            if raw.notify_user.is_some() {
                self.problem(format!("{path}.notify_user"), "set without `notify`: there is no program to run as this user");
            }
            None
        } else {
            Some(self.exec_user(&format!("{path}.notify_user"), raw.notify_user))
        };
        let tracks = raw.track.into_iter().enumerate().map(|(number, track)| self.track(&format!("{path}.track[{number}]"), track, defaults)).collect();
        Election {
            name,
            interface,
            vrid,
            priority,
            advert_interval,
            preempt: raw.preempt.unwrap_or(true),
            preempt_delay,
            addresses,
            vips: names,
            unicast_peers,
            checksum,
            garp_master_delay,
            garp_master_refresh: Some(refresh).filter(|refresh| !refresh.is_zero()),
            garp_master_repeat,
            notify,
            notify_user,
            release_on_stop: raw.release_on_stop.unwrap_or(false),
            tracks,
        }
    }

    /// Addresses of one family, without duplicates; `required`: at least one.
    fn address_list(&mut self, path: &str, raw: Vec<String>, required: bool) -> Vec<IpAddr> {
        if required && raw.is_empty() {
            self.problem(path, "at least one address is required");
        }
        let mut addresses: Vec<IpAddr> = Vec::with_capacity(raw.len());
        for (number, text) in raw.iter().enumerate() {
            let Some(address) = self.field(&format!("{path}[{number}]"), Some(text), None, |text| parse_address(text).map(Some)) else {
                continue;
            };
            if addresses.contains(&address) {
                self.problem(format!("{path}[{number}]"), format!("{address} is listed twice"));
            } else if addresses.first().is_some_and(|first| first.is_ipv4() != address.is_ipv4()) {
                self.problem(format!("{path}[{number}]"), format!("{address} is not of the family of {}", addresses[0]));
            } else {
                addresses.push(address);
            }
        }
        if addresses.len() > 255 {
            self.problem(path, format!("at most 255 addresses fit an advert, got {}", addresses.len()));
        }
        addresses
    }

    fn track(&mut self, path: &str, raw: RawTrack, defaults: &Defaults) -> Track {
        let weight = match raw.weight {
            None => 0,
            Some(weight) => i32::try_from(weight).ok().filter(|weight| (-254..=254).contains(weight)).unwrap_or_else(|| {
                self.problem(format!("{path}.weight"), format!("must be between -254 and 254 (0: fault), got {weight}"));
                0
            }),
        };
        let kinds = usize::from(raw.interface.is_some()) + usize::from(raw.address.is_some()) + usize::from(raw.backends_up.is_some());
        if kinds != 1 {
            self.problem(path, "needs exactly one of `interface`, `address` (with `probe`) or `backends_up`");
        }
        if raw.probe.is_some() && raw.address.is_none() {
            self.problem(format!("{path}.probe"), "goes with `address`: the address to probe");
        }
        let kind = if let Some(interface) = raw.interface {
            TrackKind::Interface(interface)
        } else if let Some(text) = raw.address {
            let address = self.field(&format!("{path}.address"), Some(&text), IpAddr::from([0, 0, 0, 0]), parse_address);
            let probe_path = format!("{path}.probe");
            let probe = match raw.probe {
                Some(probe) => self.probe(&probe_path, Some(probe), 0, defaults, path),
                None => Probe { check: Check::Icmp, timing: finish(defaults) },
            };
            TrackKind::Probe { address, probe }
        } else {
            let text = raw.backends_up.unwrap_or_default();
            let percent = self.field(&format!("{path}.backends_up"), Some(&text), 50, |text| {
                text.strip_suffix('%')
                    .and_then(|number| number.trim().parse::<u32>().ok())
                    .filter(|percent| (1..=100).contains(percent))
                    .ok_or_else(|| format!("must be a share such as \"50%\" (1% to 100%), got {text:?}"))
            });
            TrackKind::BackendsUp { percent }
        };
        Track { kind, weight }
    }

    fn across_elections(&mut self, elections: &[Election], vips: &[Vip]) {
        // Group indexes (`OWNERSHIP`, 1..=255) are positions in this list plus one.
        if elections.len() > MAX_ELECTIONS {
            self.problem(format!("election[{MAX_ELECTIONS}]"), format!("at most {MAX_ELECTIONS} elections, got {}", elections.len()));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut groups: HashMap<(&str, u8, bool), usize> = HashMap::new();
        let mut followed: HashMap<&str, (usize, usize)> = HashMap::new();
        for (index, election) in elections.iter().enumerate() {
            if !election.name.is_empty() {
                if let Some(first) = names.insert(&election.name, index) {
                    self.problem(format!("election[{index}].name"), format!("duplicate election name {:?} (also election[{first}])", election.name));
                }
            }
            if let Some(v4) = election.addresses.first().map(IpAddr::is_ipv4) {
                if let Some(first) = groups.insert((&election.interface, election.vrid, v4), index) {
                    self.problem(
                        format!("election[{index}].vrid"),
                        format!("VRID {} on {} is already election[{first}] for this address family", election.vrid, election.interface),
                    );
                }
            }
            for (number, vip) in election.vips.iter().enumerate() {
                match followed.get(vip.as_str()) {
                    Some((first, _)) => {
                        self.problem(format!("election[{index}].vips[{number}]"), format!("VIP {vip:?} already follows election[{first}]"));
                    }
                    None => {
                        followed.insert(vip, (index, number));
                    }
                }
            }
        }
        self.one_election_per_address(vips, &followed);
    }

    /// Every VIP at one address follows the same election, or none: the address entry of the
    /// address answers for all of them (ICMP echo and errors, unusable packets) and carries one
    /// ownership group.
    fn one_election_per_address(&mut self, vips: &[Vip], followed: &HashMap<&str, (usize, usize)>) {
        let mut first_at: HashMap<IpAddr, &Vip> = HashMap::new();
        for vip in vips {
            let Some(first) = first_at.get(&vip.address) else {
                first_at.insert(vip.address, vip);
                continue;
            };
            let (mine, theirs) = (followed.get(vip.name.as_str()), followed.get(first.name.as_str()));
            if mine.map(|(index, _)| index) == theirs.map(|(index, _)| index) {
                continue;
            }
            let Some((index, number)) = mine.or(theirs) else { continue };
            let describe = |follows: Option<&(usize, usize)>| follows.map_or_else(|| "no election".to_string(), |(index, _)| format!("election[{index}]"));
            self.problem(
                format!("election[{index}].vips[{number}]"),
                format!(
                    "VIP {:?} follows {} but VIP {:?} at the same address {} follows {}: every VIP at one address follows the same election",
                    vip.name,
                    describe(mine),
                    first.name,
                    vip.address,
                    describe(theirs)
                ),
            );
        }
    }
}

fn raw_notify_is_empty_program(notify: &[String]) -> bool {
    !notify.is_empty() && notify[0].is_empty()
}
