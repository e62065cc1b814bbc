//! Ready failover tables: after a VIP's table is published, a worker thread builds the table
//! that each single verdict would give (one backend down, or one back up) and keeps where it
//! differs from the published one, so a failover publishes a ready table instead of building
//! one on the failover path (~0.75 ms at 65537 slots).
//!
//! Exactness: a Maglev table is a pure function of the builder's inputs (every member's id,
//! key and weight) and the size (see `maglev::build`). A ready table is looked up by the
//! inputs of the published table (its base) and the inputs wanted, compared in full, never by
//! a hash; it was built by `maglev::build` from exactly those inputs, so it is the table a
//! fresh build would give. When the published table's inputs are not a base the store knows
//! (weights, another change, a reload), the lookup misses and the controller builds.
//!
//! Bounds: only VIPs of at most [`MAX_MEMBERS`] members are prepared; per VIP the published
//! base and the one before it are kept ([`BASES_PER_VIP`]); all VIPs together hold at most
//! [`MAX_CHANGED_SLOTS`] changed slots, beyond which older bases go first and then new tables
//! are not kept. The worker runs at the lowest CPU priority and gives up a VIP's remaining
//! tables as soon as that VIP publishes again.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex, MutexGuard, PoisonError,
    },
    thread::JoinHandle,
};

use failover_common::maps::VipKey;

use crate::{
    daemon::plan::{self, Member},
    maglev::{self, MaglevBackend},
};

/// VIPs with more members are not prepared: one publication costs a build per member (~0.75 ms
/// each at 65537 slots), so 256 members are ~0.2 s of a core per publication.
pub const MAX_MEMBERS: usize = 256;

/// Bases kept per VIP: the published one and the one before, so that a backend which goes down
/// and comes back finds the ready tables of the state it returns to.
pub const BASES_PER_VIP: usize = 2;

/// Changed slots kept over all VIPs, 8 bytes each: 32 MiB. One verdict moves about 1.6 / N of
/// a table's slots at N = 100 backends, so the N tables of a base hold ~1.6 table sizes of
/// changes (~100 000 slots at 65537): room for about 20 VIPs of that size with two bases each.
pub const MAX_CHANGED_SLOTS: usize = 4 << 20;

/// Where one table differs from another: `(slot, backend id)` in ascending slot order.
pub type Changes = Arc<[(u32, u32)]>;

/// The table a VIP published before its current one, as a ready table of the current base.
pub struct WayBack<'a> {
    /// The inputs the previous table was built from.
    pub inputs: &'a [MaglevBackend],
    /// From the current table to the previous one.
    pub changes: Vec<(u32, u32)>,
}

/// The slots where `to` differs from `from`, with `to`'s ids. Both have the same length.
pub fn differences(from: &[u32], to: &[u32]) -> Vec<(u32, u32)> {
    debug_assert_eq!(from.len(), to.len());
    // Table sizes are at most 2^20, so slot numbers fit a u32.
    from.iter().zip(to).enumerate().filter(|(_, (old, new))| old != new).map(|(slot, (_, new))| (slot as u32, *new)).collect()
}

/// The weights of `wanted` when it names the same backends as `base` in the same order (the
/// only difference a verdict makes); `None` otherwise.
fn weights(base: &[MaglevBackend], wanted: &[MaglevBackend]) -> Option<Vec<u32>> {
    if base.len() != wanted.len() {
        return None;
    }
    base.iter()
        .zip(wanted)
        .map(|(base, wanted)| (base.id == wanted.id && base.key == wanted.key).then_some(wanted.weight))
        .collect()
}

/// A published table's inputs and the tables one verdict away from it, by their weights.
struct Base {
    size: u32,
    inputs: Vec<MaglevBackend>,
    tables: HashMap<Vec<u32>, Changes>,
    /// When it was last made current: older bases are dropped first when over the budget.
    used: u64,
}

impl Base {
    fn slots(&self) -> usize {
        self.tables.values().map(|changes| changes.len()).sum()
    }
}

#[derive(Default)]
struct Store {
    /// Per VIP, at most [`BASES_PER_VIP`] bases, the current one last.
    vips: HashMap<VipKey, Vec<Base>>,
    /// Changed slots held, against [`MAX_CHANGED_SLOTS`].
    slots: usize,
    clock: u64,
}

impl Store {
    fn base(&self, vip: &VipKey, size: u32, inputs: &[MaglevBackend]) -> Option<&Base> {
        self.vips.get(vip)?.iter().find(|base| base.size == size && base.inputs == inputs)
    }

    fn lookup(&self, vip: &VipKey, size: u32, base: &[MaglevBackend], wanted: &[MaglevBackend]) -> Option<Changes> {
        let base = self.base(vip, size, base)?;
        base.tables.get(&weights(&base.inputs, wanted)?).cloned()
    }

    /// Makes `inputs` the VIP's current base, keeping what it already holds, and drops the
    /// bases beyond [`BASES_PER_VIP`].
    fn make_current(&mut self, vip: VipKey, size: u32, inputs: &[MaglevBackend]) {
        self.clock += 1;
        let used = self.clock;
        let bases = self.vips.entry(vip).or_default();
        let base = match bases.iter().position(|base| base.size == size && base.inputs == inputs) {
            Some(position) => bases.remove(position),
            None => Base { size, inputs: inputs.to_vec(), tables: HashMap::new(), used },
        };
        bases.push(Base { used, ..base });
        while bases.len() > BASES_PER_VIP {
            let dropped = bases.remove(0);
            self.slots -= dropped.slots();
        }
    }

    /// Keeps `changes` as the table of `wanted` from the VIP's base `base`, if that base is
    /// still kept and the budget allows; false otherwise.
    fn insert(&mut self, vip: &VipKey, size: u32, base: &[MaglevBackend], wanted: &[MaglevBackend], changes: Changes) -> bool {
        let Some(key) = weights(base, wanted) else { return false };
        if changes.len() > MAX_CHANGED_SLOTS {
            return false;
        }
        while self.slots + changes.len() > MAX_CHANGED_SLOTS {
            if !self.drop_oldest_base() {
                return false;
            }
        }
        let Some(bases) = self.vips.get_mut(vip) else { return false };
        let Some(base) = bases.iter_mut().find(|kept| kept.size == size && kept.inputs == base) else { return false };
        let added = changes.len();
        if let Some(replaced) = base.tables.insert(key, changes) {
            self.slots -= replaced.len();
        }
        self.slots += added;
        true
    }

    /// Drops the least recently current base of any VIP; false when none is left.
    fn drop_oldest_base(&mut self) -> bool {
        let oldest = self
            .vips
            .iter()
            .flat_map(|(vip, bases)| bases.iter().enumerate().map(move |(position, base)| (base.used, *vip, position)))
            .min();
        let Some((_, vip, position)) = oldest else { return false };
        let Some(bases) = self.vips.get_mut(&vip) else { return false };
        let dropped = bases.remove(position);
        self.slots -= dropped.slots();
        if bases.is_empty() {
            self.vips.remove(&vip);
        }
        true
    }

    fn forget(&mut self, vip: &VipKey) {
        if let Some(bases) = self.vips.remove(vip) {
            self.slots -= bases.iter().map(Base::slots).sum::<usize>();
        }
    }
}

/// What the worker prepares for one VIP: the tables one verdict away from `table`.
struct Job {
    vip: VipKey,
    size: u32,
    members: Vec<Member>,
    inputs: Vec<MaglevBackend>,
    table: Arc<[u32]>,
    /// Members to flip, serving ones (their failure) first; consumed from the front.
    order: VecDeque<usize>,
}

/// The store shared with the worker, and the worker.
pub struct ReadyTables {
    store: Arc<Mutex<Store>>,
    jobs: Option<mpsc::Sender<Job>>,
    /// Jobs sent and not finished or replaced yet.
    outstanding: Arc<AtomicUsize>,
    worker: Option<JoinHandle<()>>,
}

fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    // A panic in the worker leaves the store consistent (every change is a single insert or
    // removal under the lock), so a poisoned lock is used as it is.
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ReadyTables {
    /// Starts the worker thread. If the thread cannot be started, nothing is prepared and every
    /// failover builds its table.
    pub fn start() -> Self {
        let store = Arc::new(Mutex::new(Store::default()));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let (sender, receiver) = mpsc::channel();
        let worker = {
            let (store, outstanding) = (store.clone(), outstanding.clone());
            std::thread::Builder::new().name("ready-tables".into()).spawn(move || work(&store, &receiver, &outstanding))
        };
        match worker {
            Ok(worker) => Self { store, jobs: Some(sender), outstanding, worker: Some(worker) },
            Err(error) => {
                tracing::warn!("no ready failover tables: starting their thread failed: {error}");
                Self { store, jobs: None, outstanding, worker: None }
            }
        }
    }

    /// The changes from the VIP's published table, built from `base`, to the table of `wanted`,
    /// when that table is ready.
    pub fn take(&self, vip: &VipKey, size: u32, base: &[MaglevBackend], wanted: &[MaglevBackend]) -> Option<Changes> {
        lock(&self.store).lookup(vip, size, base, wanted)
    }

    /// After the VIP published the table of `inputs`: makes it the current base, keeps `back`
    /// (the way to the table before) as one of its ready tables, and has the worker prepare
    /// the others.
    pub fn published(&self, vip: VipKey, table: Arc<[u32]>, inputs: &[MaglevBackend], members: &[Member], back: Option<WayBack<'_>>) {
        let size = table.len() as u32;
        let mut store = lock(&self.store);
        if members.len() > MAX_MEMBERS {
            store.forget(&vip);
            return;
        }
        store.make_current(vip, size, inputs);
        if let Some(back) = back {
            store.insert(&vip, size, inputs, back.inputs, back.changes.into());
        }
        drop(store);
        let Some(jobs) = &self.jobs else { return };
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by_key(|&index| !members[index].up);
        let job = Job { vip, size, members: members.to_vec(), inputs: inputs.to_vec(), table, order: order.into() };
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        if jobs.send(job).is_err() {
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Forgets every VIP but those in `keep` (after a reload removed some).
    pub fn retain(&self, keep: &[VipKey]) {
        let mut store = lock(&self.store);
        let gone: Vec<VipKey> = store.vips.keys().filter(|vip| !keep.contains(vip)).copied().collect();
        for vip in gone {
            store.forget(&vip);
        }
    }

    /// Whether the worker still has tables to prepare.
    pub fn pending(&self) -> bool {
        self.outstanding.load(Ordering::SeqCst) > 0
    }

    /// Ready tables held, over all VIPs and bases.
    pub fn count(&self) -> usize {
        lock(&self.store).vips.values().flatten().map(|base| base.tables.len()).sum()
    }
}

impl Drop for ReadyTables {
    fn drop(&mut self) {
        // Closing the channel ends the worker after the build it is in.
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The worker: takes the newest job per VIP and prepares its tables one at a time, looking for
/// newer jobs between builds, until the channel closes.
fn work(store: &Mutex<Store>, jobs: &mpsc::Receiver<Job>, outstanding: &AtomicUsize) {
    lower_priority();
    let mut queue: VecDeque<Job> = VecDeque::new();
    loop {
        let received = if queue.is_empty() {
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        } else {
            match jobs.try_recv() {
                Ok(job) => job,
                Err(mpsc::TryRecvError::Empty) => {
                    prepare_next(store, &mut queue, outstanding);
                    continue;
                }
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        };
        // A newer publication of the same VIP replaces its job: the old base's remaining
        // tables would only be useful if the VIP went back to it.
        match queue.iter_mut().find(|queued| queued.vip == received.vip) {
            Some(queued) => {
                *queued = received;
                outstanding.fetch_sub(1, Ordering::SeqCst);
            }
            None => queue.push_back(received),
        }
    }
}

/// Prepares the next table of the first job, or ends the job.
fn prepare_next(store: &Mutex<Store>, queue: &mut VecDeque<Job>, outstanding: &AtomicUsize) {
    let Some(job) = queue.front_mut() else { return };
    let Some(index) = job.order.pop_front() else {
        queue.pop_front();
        outstanding.fetch_sub(1, Ordering::SeqCst);
        return;
    };
    let mut flipped = job.members.clone();
    flipped[index].up = !flipped[index].up;
    let wanted = plan::table_inputs(&flipped);
    if wanted == job.inputs {
        // The verdict would not change the table (maintenance, or a backup while a primary serves).
        return;
    }
    {
        let store = lock(store);
        let Some(base) = store.base(&job.vip, job.size, &job.inputs) else {
            // The base was dropped (budget, or two newer publications): nothing to prepare.
            job.order.clear();
            return;
        };
        if weights(&base.inputs, &wanted).is_some_and(|key| base.tables.contains_key(&key)) {
            return;
        }
    }
    let Ok(table) = maglev::build(&wanted, job.size) else { return };
    let changes: Changes = differences(&job.table, &table).into();
    lock(store).insert(&job.vip, job.size, &job.inputs, &wanted, changes);
}

/// Runs this thread at the lowest priority (nice 19): the probes and the state owner go first.
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority with a thread id changes that thread only.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if result != 0 {
        tracing::debug!("ready tables run at normal priority: {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests;
