//! The data plane's table lookup (`probe_table`), computed here: the backend a flow the program
//! does not track takes, for `failover-ctl which` and for the flows a master syncs (those whose
//! tracked backend is not this one).

use failover_common::{hash, maps::MAX_SLOT_PROBES};

/// The flow's first slot and the backend id of the first of at most `MAX_SLOT_PROBES` slots
/// from it whose backend `is_up` (wrapping at the end), as the data plane picks it.
pub fn pick(table: &[u32], flow_hash: u32, is_up: impl Fn(u32) -> bool) -> (u32, Option<u32>) {
    let size = table.len() as u32;
    if size == 0 {
        return (0, None);
    }
    let first = hash::slot_of(flow_hash, size);
    let mut slot = first;
    for _ in 0..MAX_SLOT_PROBES.min(size) {
        let id = table[slot as usize];
        if is_up(id) {
            return (first, Some(id));
        }
        slot = if slot + 1 >= size { 0 } else { slot + 1 };
    }
    (first, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_live_backend_from_the_flows_slot_on_wrapping_at_the_end() {
        let table = [7, 8, 9];
        let first = hash::slot_of(12_345, 3);
        assert_eq!(pick(&table, 12_345, |_| true), (first, Some(table[first as usize])));
        // Only backend 7 (slot 0) is up: from any slot the probe wraps round to it.
        assert_eq!(pick(&table, 12_345, |id| id == 7), (first, Some(7)));
        assert_eq!(pick(&table, 12_345, |_| false), (first, None));
        assert_eq!(pick(&[], 12_345, |_| true), (0, None));
    }

    #[test]
    fn the_probe_stops_after_max_slot_probes() {
        let table: Vec<u32> = (0..100).collect();
        let (first, _) = pick(&table, 99, |_| true);
        let reachable = |id: u32| (id + 100 - first) % 100 < MAX_SLOT_PROBES;
        let beyond = (first + MAX_SLOT_PROBES) % 100;
        assert!(!reachable(beyond));
        assert_eq!(pick(&table, 99, |id| id == beyond).1, None);
        let last = (first + MAX_SLOT_PROBES - 1) % 100;
        assert_eq!(pick(&table, 99, |id| id == last).1, Some(last));
    }
}
