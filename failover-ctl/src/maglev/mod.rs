//! Weighted Maglev table builder: from a backend set to the slot table the data plane indexes.
//!
//! The scheme follows the Maglev paper (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4). Every backend owns a permutation of the slots,
//! derived only from its own `key`: start at `offset`, step by `skip`, modulo the prime table
//! size. Backends take turns; on its turn a backend claims the next slot of its permutation that
//! nobody holds yet. Because a backend's preferences do not depend on who else is present, adding
//! or removing one backend moves mostly that backend's own slots; how many others move with them
//! depends on the slots per backend (see [`DEFAULT_TABLE_SIZE`]).
//!
//! Weights decide how often a backend gets a turn: per round, a backend of weight `w` gets `w / W`
//! turns, `W` being the largest weight, through a credit counter. With equal weights every backend
//! gets one turn per round, which is the paper's unweighted algorithm.
//!
//! The result is fixed by the backend set and the size alone. Two shortcuts change only the speed:
//! near the end, when probing a walk for one of the few free slots would take many steps, the
//! free slots are scanned instead and the one the walk reaches first is computed; and with very
//! skewed weights, rounds are walked through a priority queue so that idle backends cost nothing.
//!
//! Everything here is deterministic across runs, platforms and compiler versions: the hash is
//! spelled out below, and the backends are put in key order before anything depends on order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

mod digest;
pub mod lookup;

pub use digest::table_digest;

/// Table size used when a VIP does not ask for one. Prime, and the paper's rule of at least 100
/// slots per backend keeps every share within 1% up to 655 backends. Disruption needs more room:
/// removing one of N backends moves about 1.02 / N of the slots at 10 backends, 1.57 / N at 100
/// and 6.5 / N at 1000, so large pools should ask for a larger size.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// Largest table size accepted: the largest prime below 2^20, so a table stays within 4 MiB.
pub const MAX_TABLE_SIZE: u32 = 1_048_573;

/// Smallest prime; `skip` is drawn from `1..size`, which needs at least two slots.
const MIN_TABLE_SIZE: u32 = 2;

const _: () = assert!(is_prime(DEFAULT_TABLE_SIZE));
const _: () = assert!(is_prime(MAX_TABLE_SIZE));
const _: () = assert!(DEFAULT_TABLE_SIZE <= MAX_TABLE_SIZE);

/// Seeds of the two permutation hashes: the fractional digits of pi and e, chosen only so that
/// the two hashes of one key are unrelated.
const OFFSET_SEED: u64 = 0x243f_6a88_85a3_08d3;
const SKIP_SEED: u64 = 0xb7e1_5162_8aed_2a6b;

/// One backend as the table builder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Stable backend id; this is the value stored in the table slots.
    pub id: u32,
    /// Stable identity (e.g. the address bytes) that seeds the backend's permutation. Keeping it
    /// stable across rebuilds is what keeps the backend's slots stable.
    pub key: [u8; 16],
    /// Relative share of slots; 0 excludes the backend, exactly as if it were absent.
    pub weight: u32,
}

/// Why a Maglev table could not be built. The output table is left untouched in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("Maglev table size {size} is not prime")]
    SizeNotPrime { size: u32 },
    #[error("Maglev table size {size} is outside {MIN_TABLE_SIZE}..={MAX_TABLE_SIZE}")]
    SizeOutOfRange { size: u32 },
    #[error(
        "no Maglev backend has a weight above zero, so there is nothing to fill the table with"
    )]
    NoActiveBackend,
    #[error("Maglev backend id {id} appears more than once")]
    DuplicateId { id: u32 },
    #[error(
        "Maglev backend key {} is shared by backend ids {first_id} and {second_id}",
        KeyHex(.key)
    )]
    DuplicateKey {
        key: [u8; 16],
        first_id: u32,
        second_id: u32,
    },
    #[error(
        "{active} Maglev backends with a weight above zero do not fit a table of {size} slots"
    )]
    TooManyBackends { active: usize, size: u32 },
    #[error("Maglev table buffer holds {length} slots but the table size is {size}")]
    BufferLength { length: usize, size: u32 },
}

/// Builds a table of `size` slots, each holding the id of one backend with a weight above zero.
///
/// The result depends only on the set of backends (not on their order in the slice) and on `size`.
/// Ids and keys must be unique across all of `backends`, weight 0 included, since an excluded
/// backend is expected to come back with the same identity.
pub fn build(backends: &[MaglevBackend], size: u32) -> Result<Vec<u32>, MaglevError> {
    // Checked before allocating so that a wild size fails instead of allocating gigabytes.
    check_size(size)?;
    let mut table = vec![0; size as usize];
    build_into(backends, size, &mut table)?;
    Ok(table)
}

/// Same as [`build`], writing into `table`, which must hold exactly `size` slots.
///
/// Everything is validated before the first write, so on error `table` is untouched. Slots are
/// written in no particular order: a table that readers use concurrently must be built in an
/// inactive copy and published afterwards.
pub fn build_into(
    backends: &[MaglevBackend],
    size: u32,
    table: &mut [u32],
) -> Result<(), MaglevError> {
    check_size(size)?;
    if table.len() != size as usize {
        return Err(MaglevError::BufferLength {
            length: table.len(),
            size,
        });
    }
    let mut permutations = prepare(backends, size)?;
    fill(&mut permutations, size, table);
    Ok(())
}

/// Trial division; fast enough for table sizes (at most about a thousand divisions up to
/// [`MAX_TABLE_SIZE`]), and `const` so the size constants are checked at compile time.
pub const fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    // Every prime above 3 is 6k - 1 or 6k + 1; u64 so that the square cannot overflow near u32::MAX.
    let n = n as u64;
    let mut divisor: u64 = 5;
    while divisor * divisor <= n {
        if n.is_multiple_of(divisor) || n.is_multiple_of(divisor + 2) {
            return false;
        }
        divisor += 6;
    }
    true
}

fn check_size(size: u32) -> Result<(), MaglevError> {
    if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&size) {
        return Err(MaglevError::SizeOutOfRange { size });
    }
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime { size });
    }
    Ok(())
}

/// Validates the backend set and returns the permutations of the backends with a weight above
/// zero, in key order so that the result does not depend on the caller's order.
fn prepare(backends: &[MaglevBackend], size: u32) -> Result<Vec<Permutation>, MaglevError> {
    let mut ids: Vec<u32> = backends.iter().map(|backend| backend.id).collect();
    ids.sort_unstable();
    if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(MaglevError::DuplicateId { id: pair[0] });
    }

    let mut sorted: Vec<&MaglevBackend> = backends.iter().collect();
    // Ids are unique by now, so (key, id) is a total order and the reported pair is stable.
    sorted.sort_unstable_by_key(|backend| (backend.key, backend.id));
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0].key == pair[1].key) {
        return Err(MaglevError::DuplicateKey {
            key: pair[0].key,
            first_id: pair[0].id,
            second_id: pair[1].id,
        });
    }

    let permutations: Vec<Permutation> = sorted
        .iter()
        .filter(|backend| backend.weight > 0)
        .map(|backend| Permutation::new(backend, size))
        .collect();
    if permutations.is_empty() {
        return Err(MaglevError::NoActiveBackend);
    }
    if permutations.len() > size as usize {
        return Err(MaglevError::TooManyBackends {
            active: permutations.len(),
            size,
        });
    }
    Ok(permutations)
}

/// Hands out turns in order of (round, key order) and fills `table`. A backend of weight `w`
/// earns `w` credit per round and takes a turn whenever its credit reaches the largest weight
/// `W`, so it gets `w / W` turns per round; with equal weights every round is one turn each in
/// key order, the paper's round-robin (Pseudocode 1). Credits start at `W / 2`, which rounds each
/// backend's turn count to nearest rather than down at every point of the fill, and so also in
/// the last, partly filled round.
fn fill(permutations: &mut [Permutation], size: u32, table: &mut [u32]) {
    let mut filler = Filler::new(size, table, default_tail_length(size));
    let largest = largest_weight(permutations);
    let total: u64 = permutations
        .iter()
        .map(|permutation| u64::from(permutation.weight))
        .sum();
    // Walking every backend each round wastes `count * W / total` visits per turn; when weights
    // are so skewed that this is large, a priority queue over due rounds gives the same order in
    // O(log count) per turn. Neither product can overflow: count <= 2^20 and weights < 2^32.
    let count = permutations.len() as u64;
    if count * largest <= IDLE_VISITS_PER_TURN * total {
        take_turns_in_rounds(permutations, &mut filler);
    } else {
        take_turns_by_due_round(permutations, &mut filler);
    }
}

/// Above this many backend visits per turn, rounds are walked through a priority queue instead.
const IDLE_VISITS_PER_TURN: u64 = 16;

fn largest_weight(permutations: &[Permutation]) -> u64 {
    permutations
        .iter()
        .map(|permutation| u64::from(permutation.weight))
        .max()
        .unwrap_or(1)
}

/// Visits every backend once per round, in key order.
fn take_turns_in_rounds(permutations: &mut [Permutation], filler: &mut Filler<'_>) {
    let largest = largest_weight(permutations);
    for permutation in permutations.iter_mut() {
        permutation.credit = largest / 2;
    }
    // Ends: a backend of the largest weight takes a turn every round, and every turn fills a slot.
    loop {
        for permutation in permutations.iter_mut() {
            permutation.credit += u64::from(permutation.weight);
            if permutation.credit >= largest {
                permutation.credit -= largest;
                if !filler.take_turn(permutation) {
                    return;
                }
            }
        }
    }
}

/// Same order as [`take_turns_in_rounds`], visiting only the backends whose turn it is.
fn take_turns_by_due_round(permutations: &mut [Permutation], filler: &mut Filler<'_>) {
    let largest = largest_weight(permutations);
    // Starting from W / 2, the credit of weight `w` reaches `k * W` in round
    // ceil((k * W - W / 2) / w) - 1, which is (k * W - W / 2 - 1) / w; k * W - W / 2 >= 1 for
    // k >= 1. With k <= 2^20 + 1 turns and W < 2^32 the product fits a u64.
    let due_round = |turn: u64, weight: u32| (turn * largest - largest / 2 - 1) / u64::from(weight);
    // Entries are (round, key position, turn number); positions are unique, so the turn number
    // never takes part in the ordering.
    let mut queue: BinaryHeap<Reverse<(u64, usize, u64)>> = permutations
        .iter()
        .enumerate()
        .map(|(position, permutation)| Reverse((due_round(1, permutation.weight), position, 1)))
        .collect();
    // The top entry is updated in place: one sift instead of a pop and a push.
    while let Some(mut top) = queue.peek_mut() {
        let Reverse((_, position, turn)) = *top;
        let permutation = &mut permutations[position];
        if !filler.take_turn(permutation) {
            return;
        }
        *top = Reverse((due_round(turn + 1, permutation.weight), position, turn + 1));
    }
}

/// How many empty slots are left when probing gives way to scanning the free slots: probing
/// costs about `size / empty` cheap steps per turn, scanning `empty` multiplications, so the
/// switch pays off below roughly the square root of the size.
fn default_tail_length(size: u32) -> u32 {
    size.isqrt() / 2
}

/// The table being filled, and the bookkeeping of which slots are still free.
struct Filler<'t> {
    table: &'t mut [u32],
    size: u32,
    occupancy: Occupancy,
    empty: u32,
    /// Once `empty` is at most this, turns scan `free` instead of probing.
    tail_length: u32,
    /// The free slots, gathered when the tail begins; until then empty. From then on this list is
    /// the record of what is free, and `occupancy` is no longer updated.
    free: Vec<u32>,
}

impl<'t> Filler<'t> {
    fn new(size: u32, table: &'t mut [u32], tail_length: u32) -> Self {
        Filler {
            table,
            size,
            occupancy: Occupancy::new(size),
            empty: size,
            tail_length,
            free: Vec::new(),
        }
    }

    /// Gives `permutation` the first free slot of its walk. Returns false once the table is full.
    // Called once per slot; left to itself the compiler keeps it out of line, which costs a few
    // percent of the build time.
    #[inline(always)]
    fn take_turn(&mut self, permutation: &mut Permutation) -> bool {
        let slot = if self.empty > self.tail_length {
            permutation.claim_next(&mut self.occupancy, self.size)
        } else {
            // While slots are empty, `free` holds all of them once gathered, so an empty list
            // means the tail starts now.
            if self.free.is_empty() {
                self.free = self.occupancy.free_slots(self.size);
            }
            self.claim_first_free(permutation)
        };
        self.table[slot as usize] = permutation.id;
        self.empty -= 1;
        self.empty > 0
    }

    /// The free slot that `permutation`'s walk reaches first: the one fewest skips away from
    /// `next`, which is (slot - next) * skip^-1 modulo the prime size. Gives the same slot as
    /// probing, since everything the walk would pass on the way is taken.
    fn claim_first_free(&mut self, permutation: &mut Permutation) -> u32 {
        let size = u64::from(self.size);
        let inverse = u64::from(permutation.inverse_skip(self.size));
        let mut first = (0, u64::MAX);
        for (position, &slot) in self.free.iter().enumerate() {
            let gap = if slot >= permutation.next {
                slot - permutation.next
            } else {
                slot + self.size - permutation.next
            };
            // Both factors are below 2^20, so the product fits a u64.
            let steps = u64::from(gap) * inverse % size;
            if steps < first.1 {
                first = (position, steps);
            }
        }
        // Steps are distinct for distinct slots, so the choice does not depend on list order.
        let slot = self.free.swap_remove(first.0);
        permutation.next = slot;
        permutation.advance(self.size);
        slot
    }
}

/// A backend's walk through its preference list, kept incremental so that no slot's position is
/// recomputed with a division.
struct Permutation {
    id: u32,
    weight: u32,
    /// The next slot this backend will try; starts at the offset.
    next: u32,
    /// In `1..size`; with a prime size every skip visits all slots before repeating.
    skip: u32,
    /// `2 * skip` modulo the size: the walk tests two slots per step (see
    /// [`Permutation::claim_next`]).
    double_skip: u32,
    /// `skip`'s inverse modulo the size, needed only in the tail, so computed on first use.
    inverse_skip: Option<u32>,
    /// Weight earned and not yet spent on turns, in [`take_turns_in_rounds`], which sets it;
    /// kept here rather than in a separate vector because the round loop is hot.
    credit: u64,
}

impl Permutation {
    fn new(backend: &MaglevBackend, size: u32) -> Self {
        let size_wide = u64::from(size);
        // Both remainders are below `size`, so the narrowing is lossless.
        let offset = (key_hash(&backend.key, OFFSET_SEED) % size_wide) as u32;
        let skip = (key_hash(&backend.key, SKIP_SEED) % (size_wide - 1) + 1) as u32;
        Permutation {
            id: backend.id,
            weight: backend.weight,
            next: offset,
            skip,
            double_skip: (2 * u64::from(skip) % size_wide) as u32,
            inverse_skip: None,
            credit: 0,
        }
    }

    /// Claims the first free slot along the walk. Slots never become free again, so the walk
    /// never needs to revisit one, and it ends because a turn is only given while a slot is free.
    ///
    /// Two slots per step, both computed from the step's first slot: walking one slot at a time
    /// chains every position on the one before (an add and a wrap each), and that chain, not the
    /// bit tests, bounded the walk. Tested in walk order, so the slot claimed is the same.
    #[inline(always)]
    fn claim_next(&mut self, occupancy: &mut Occupancy, size: u32) -> u32 {
        loop {
            let first = self.next;
            let second = wrap(first + self.skip, size);
            let after = wrap(first + self.double_skip, size);
            if occupancy.claim(first) {
                self.next = second;
                return first;
            }
            if occupancy.claim(second) {
                self.next = after;
                return second;
            }
            self.next = after;
        }
    }

    fn advance(&mut self, size: u32) {
        self.next = wrap(self.next + self.skip, size);
    }

    fn inverse_skip(&mut self, size: u32) -> u32 {
        *self
            .inverse_skip
            .get_or_insert_with(|| inverse_modulo(self.skip, size))
    }
}

/// `value` modulo `size` for `value < 2 * size`, without a branch: `value - size` wraps around
/// to above `value` exactly when `value < size`. The sums it is given are of two terms below
/// `size <= 2^20`, so they cannot overflow.
fn wrap(value: u32, size: u32) -> u32 {
    value.min(value.wrapping_sub(size))
}

/// `value`'s multiplicative inverse modulo the prime `modulus`, by the extended Euclidean
/// algorithm; `value` must be in `1..modulus`.
fn inverse_modulo(value: u32, modulus: u32) -> u32 {
    let (mut previous_remainder, mut remainder) = (i64::from(value), i64::from(modulus));
    let (mut previous_coefficient, mut coefficient) = (1i64, 0i64);
    while remainder != 0 {
        let quotient = previous_remainder / remainder;
        (previous_remainder, remainder) = (remainder, previous_remainder - quotient * remainder);
        (previous_coefficient, coefficient) =
            (coefficient, previous_coefficient - quotient * coefficient);
    }
    // The remainder left is gcd(value, modulus) = 1, so the coefficient is the inverse; it is
    // reduced into 0..modulus, which makes the narrowing lossless.
    previous_coefficient.rem_euclid(i64::from(modulus)) as u32
}

/// One bit per slot: 128 KiB at the largest size, 8 KiB at the default, so the hot probing loop
/// stays in L1/L2 rather than touching the (possibly mmap-ed) output table.
struct Occupancy {
    words: Vec<u64>,
}

impl Occupancy {
    fn new(size: u32) -> Self {
        Occupancy {
            words: vec![0; size.div_ceil(64) as usize],
        }
    }

    /// Marks `slot` taken; false if it already was.
    fn claim(&mut self, slot: u32) -> bool {
        let word = &mut self.words[(slot / 64) as usize];
        let bit = 1u64 << (slot % 64);
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        true
    }

    /// The clear bits below `size`, in slot order: a word at a time, since a test per slot cost
    /// more than the whole tail it starts (~50 us of a 65537-slot build).
    fn free_slots(&self, size: u32) -> Vec<u32> {
        let mut free = Vec::new();
        for (index, &word) in self.words.iter().enumerate() {
            let mut clear = !word;
            while clear != 0 {
                // At most 2^20 / 64 words, so the slot number fits a u32.
                let slot = index as u32 * 64 + clear.trailing_zeros();
                if slot >= size {
                    break;
                }
                free.push(slot);
                clear &= clear - 1;
            }
        }
        free
    }
}

/// A 64-bit hash of a backend key. Keys such as IPv4-mapped addresses differ in only a few bytes,
/// so every input bit must reach every output bit; two full mixing rounds, one per 8-byte half,
/// give that. Byte order is fixed (little-endian) so the result is the same on every platform.
fn key_hash(key: &[u8; 16], seed: u64) -> u64 {
    let value = u128::from_le_bytes(*key);
    let low = value as u64;
    let high = (value >> 64) as u64;
    mix(mix(seed ^ low) ^ high)
}

/// The SplitMix64 output step (Steele, Lea and Flood, OOPSLA 2014): a bijection on u64 with full
/// avalanche, including its golden-ratio increment so that an input of zero does not map to zero.
fn mix(value: u64) -> u64 {
    let mut state = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    state = (state ^ (state >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    state = (state ^ (state >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    state ^ (state >> 31)
}

/// Shows a key as 32 hex digits in error messages.
struct KeyHex<'a>(&'a [u8; 16]);

impl fmt::Display for KeyHex<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(formatter, "{byte:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
