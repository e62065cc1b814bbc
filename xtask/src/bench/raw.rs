//! The raw `bpf()` calls the benchmark makes itself, and the two tiny programs it assembles: the floor (`return XDP_TX`) and the veth peer that restores each frame.
//!
//! aya loads programs from ELF objects only; these programs are a handful of instructions, so
//! they are encoded here and loaded with `BPF_PROG_LOAD` directly. `BPF_PROG_TEST_RUN` is also
//! issued here, for the load balancer too, so that every number goes through the same call.

use std::{
    ffi::CString,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::bpf_abi::{Instruction, ProgramLoad, BPF_PROG_TYPE_XDP};
use failover_ctl::sys::{self, BPF_LINK_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_PROG_LOAD, BPF_PROG_TEST_RUN};

// Commands, types and flags from include/uapi/linux/bpf.h and if_link.h.
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_GET_SMP_PROCESSOR_ID: i32 = 8;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Registers by number; R10 is the read-only frame pointer.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;
const R10: u8 = 10;

/// Opcodes used below (class | operation | source/size).
mod op {
    pub const MOV64_IMM: u8 = 0xb7;
    pub const MOV64_REG: u8 = 0xbf;
    pub const ADD64_IMM: u8 = 0x07;
    pub const ADD64_REG: u8 = 0x0f;
    pub const LSH64_IMM: u8 = 0x67;
    pub const LOAD_W: u8 = 0x61;
    pub const STORE_IMM_W: u8 = 0x62;
    pub const STORE_W: u8 = 0x63;
    pub const STORE_B: u8 = 0x73;
    pub const STORE_DW: u8 = 0x7b;
    pub const ATOMIC_DW: u8 = 0xdb;
    pub const LOAD_IMM64: u8 = 0x18;
    pub const JGT_REG: u8 = 0x2d;
    pub const JEQ_IMM: u8 = 0x15;
    pub const CALL: u8 = 0x85;
    pub const EXIT: u8 = 0x95;
    /// `BPF_ADD | BPF_FETCH` in the immediate of an atomic instruction.
    pub const FETCH_ADD: i32 = 0x01;
}

/// A straight-line program with forward jumps to one `drop` label at its end.
#[derive(Default)]
struct Assembler {
    code: Vec<Instruction>,
    /// Indexes of jumps whose offset is patched to the `drop` label.
    to_drop: Vec<usize>,
}

impl Assembler {
    fn emit(&mut self, code: u8, destination: u8, source: u8, offset: i16, immediate: i32) {
        self.code.push(Instruction { code, registers: destination | (source << 4), offset, immediate });
    }

    fn load_imm64(&mut self, destination: u8, source: u8, value: u64) {
        self.emit(op::LOAD_IMM64, destination, source, 0, value as u32 as i32);
        self.emit(0, 0, 0, 0, (value >> 32) as u32 as i32);
    }

    fn jump_to_drop(&mut self, code: u8, destination: u8, source: u8, immediate: i32) {
        self.to_drop.push(self.code.len());
        self.emit(code, destination, source, 0, immediate);
    }

    /// Appends `return XDP_DROP` and points every recorded jump at it.
    fn finish_with_drop(mut self) -> Result<Vec<Instruction>> {
        let label = self.code.len();
        self.emit(op::MOV64_IMM, R0, 0, 0, XDP_DROP as i32);
        self.emit(op::EXIT, 0, 0, 0, 0);
        for index in self.to_drop {
            let distance = i16::try_from(label - index - 1).context("program too long for a 16-bit jump")?;
            self.code[index].offset = distance;
        }
        Ok(self.code)
    }
}

/// Loads an XDP program; on rejection the error carries the verifier's log.
fn load_xdp(name: &str, instructions: &[Instruction]) -> Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL in a literal");
    let mut program_name = [0u8; 16];
    for (slot, byte) in program_name.iter_mut().take(15).zip(name.bytes()) {
        *slot = byte;
    }
    let attributes = |log: &mut Vec<u8>, level: u32| ProgramLoad {
        program_type: BPF_PROG_TYPE_XDP,
        instruction_count: instructions.len() as u32,
        instructions: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: level,
        log_size: if level == 0 { 0 } else { log.len() as u32 },
        log_buffer: if level == 0 { 0 } else { log.as_mut_ptr() as u64 },
        name: program_name,
        expected_attach_type: BPF_XDP,
        ..ProgramLoad::default()
    };
    let mut log = vec![0u8; 1 << 16];
    if let Ok(fd) = sys::bpf(BPF_PROG_LOAD, &mut attributes(&mut log, 0)) {
        return Ok(sys::owned_fd(fd));
    }
    // Again with the verifier log, only to explain the failure.
    let error = sys::bpf(BPF_PROG_LOAD, &mut attributes(&mut log, 1)).err();
    let end = log.iter().position(|&byte| byte == 0).unwrap_or(log.len());
    bail!(
        "the kernel rejected the {name} program ({}):\n{}",
        error.map_or_else(|| "accepted only with a log".to_string(), |error| error.to_string()),
        String::from_utf8_lossy(&log[..end])
    )
}

/// The floor: `return XDP_TX`, two instructions. Anything cheaper than this is not a program.
pub fn load_floor() -> Result<OwnedFd> {
    let code = [
        Instruction { code: op::MOV64_IMM, registers: R0, offset: 0, immediate: XDP_TX as i32 },
        Instruction { code: op::EXIT, registers: 0, offset: 0, immediate: 0 },
    ];
    load_xdp("bench_floor", &code)
}

/// How the veth peer puts a frame back the way it was before the program under test saw it.
pub struct Restore<'a> {
    /// The first bytes of the original frame, which the peer writes back (a multiple of 8).
    pub template: &'a [u8],
    /// How many bytes the program under test pushed in front of the original frame (0, 20 or
    /// 40): the original frame starts that far into what the peer receives.
    pub pushed: u16,
    /// What the peer changes in the restored frame.
    pub vary: Vary,
}

/// How the peer makes the restored frames differ, so that the program under test sees many
/// flows from one `data_in`. Frames are restored on the CPU that sent them (each CPU transmits
/// to a veth queue of its own, whose NAPI runs on that CPU), so the CPU number keeps the flows
/// of two CPUs apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vary {
    /// The frame exactly as it was.
    Nothing,
    /// A fresh 32-bit number at this offset: the CPU's frame count plus the CPU number times
    /// 2^28, so every frame is a new flow, on any of 16 CPUs, for 2^28 frames per CPU.
    Number { at: u16 },
    /// The byte at this offset set to `base` + the CPU number: one flow per CPU.
    PerCpu { at: u16, base: u8 },
}

impl Vary {
    /// The offset and width of what is written, if anything.
    fn written(self) -> Option<(u16, usize)> {
        match self {
            Vary::Nothing => None,
            Vary::Number { at } => Some((at, 4)),
            Vary::PerCpu { at, .. } => Some((at, 1)),
        }
    }
}

/// The veth peer's program: counts the frame in `counter` (per-CPU array, one u64: two CPUs
/// never share the line), writes the original frame's first bytes back at the original
/// position (and what `vary` asks for), and drops the frame.
///
/// Why: in live-frames mode the kernel recycles a page without copying `data_in` into it again
/// (Documentation/bpf/bpf_prog_run.rst: only the data pointers are reset), so a program that
/// rewrites its packet sees its own output on the page's next use. A frame transmitted with
/// XDP_TX reaches this program on the same page, and dropping it returns the page to the test
/// run's pool, so restoring here is what makes every iteration see the original packet.
pub fn load_restore(restore: &Restore<'_>, counter: BorrowedFd<'_>) -> Result<OwnedFd> {
    let length = restore.template.len();
    if length == 0 || !length.is_multiple_of(8) || length > 256 {
        bail!("restore template of {length} bytes: must be a multiple of 8, at most 256");
    }
    let pushed = i32::from(restore.pushed);
    let mut program = Assembler::default();
    program.emit(op::MOV64_REG, R6, R1, 0, 0);
    // This CPU's counter[0] += 1, keeping the old value in R7.
    program.load_imm64(R1, BPF_PSEUDO_MAP_FD, counter.as_raw_fd() as u32 as u64);
    program.emit(op::STORE_IMM_W, R10, 0, -4, 0);
    program.emit(op::MOV64_REG, R2, R10, 0, 0);
    program.emit(op::ADD64_IMM, R2, 0, 0, -4);
    program.emit(op::CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM);
    program.jump_to_drop(op::JEQ_IMM, R0, 0, 0);
    program.emit(op::MOV64_IMM, R7, 0, 0, 1);
    program.emit(op::ATOMIC_DW, R0, R7, 0, op::FETCH_ADD);
    // R7 = what `vary` writes (the helper call keeps R6 and R7).
    match restore.vary {
        Vary::Nothing => {}
        Vary::Number { .. } => {
            program.emit(op::CALL, 0, 0, 0, BPF_FUNC_GET_SMP_PROCESSOR_ID);
            program.emit(op::LSH64_IMM, R0, 0, 0, 28);
            program.emit(op::ADD64_REG, R7, R0, 0, 0);
        }
        Vary::PerCpu { base, .. } => {
            program.emit(op::CALL, 0, 0, 0, BPF_FUNC_GET_SMP_PROCESSOR_ID);
            program.emit(op::MOV64_REG, R7, R0, 0, 0);
            program.emit(op::ADD64_IMM, R7, 0, 0, i32::from(base));
        }
    }
    // R2 = data, R3 = data_end (struct xdp_md); drop unless the whole template fits.
    program.emit(op::LOAD_W, R2, R6, 0, 0);
    program.emit(op::LOAD_W, R3, R6, 4, 0);
    program.emit(op::MOV64_REG, R4, R2, 0, 0);
    program.emit(op::ADD64_IMM, R4, 0, 0, pushed + length as i32);
    program.jump_to_drop(op::JGT_REG, R4, R3, 0);
    for (index, chunk) in restore.template.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        program.load_imm64(R5, 0, word);
        program.emit(op::STORE_DW, R2, R5, (pushed + 8 * index as i32) as i16, 0);
    }
    if let Some((at, width)) = restore.vary.written() {
        if usize::from(at) + width > length {
            bail!("the varied bytes at {at} lie outside the {length}-byte template");
        }
        let store = if width == 4 { op::STORE_W } else { op::STORE_B };
        program.emit(store, R2, R7, (pushed + i32::from(at)) as i16, 0);
    }
    load_xdp("bench_restore", &program.finish_with_drop()?)
}

/// A per-CPU array of one u64: the peer's frame counter.
pub fn create_counter() -> Result<OwnedFd> {
    sys::create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 8, 1, None).context("creating the frame counter map")
}

/// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapElement {
    map_fd: u32,
    _padding: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The frame counter summed over every possible CPU (a per-CPU lookup fills one u64 each).
pub fn read_counter(counter: BorrowedFd<'_>) -> Result<u64> {
    let cpus = aya::util::nr_cpus().map_err(|(what, error)| anyhow::anyhow!("{what}: {error}"))?;
    let mut values = vec![0u64; cpus];
    let key = 0u32;
    let mut attributes = MapElement {
        map_fd: counter.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: values.as_mut_ptr() as u64,
        ..MapElement::default()
    };
    sys::bpf(BPF_MAP_LOOKUP_ELEM, &mut attributes).context("reading the frame counter")?;
    Ok(values.iter().sum())
}

/// The `BPF_LINK_CREATE` prefix of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    program_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches `program` in native (driver) mode to `ifindex` of the calling thread's network
/// namespace; the program stays attached until the returned link is closed.
pub fn attach_native(program: BorrowedFd<'_>, ifindex: u32) -> Result<OwnedFd> {
    let mut attributes = LinkCreate {
        program_fd: program.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
    };
    let fd = sys::bpf(BPF_LINK_CREATE, &mut attributes)
        .with_context(|| format!("attaching an XDP program in native mode to ifindex {ifindex}"))?;
    Ok(sys::owned_fd(fd))
}

/// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRun {
    program_fd: u32,
    return_value: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    context_size_in: u32,
    context_size_out: u32,
    context_in: u64,
    context_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _padding: u32,
}

/// `struct xdp_md` as `BPF_PROG_TEST_RUN` takes it for `ctx_in`.
#[repr(C)]
#[derive(Default)]
struct XdpContext {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// What one `BPF_PROG_TEST_RUN` call reported, and how long the call took.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub return_value: u32,
    /// The kernel's `duration`: its timed nanoseconds divided by the iterations it ran,
    /// truncated to an integer. For live frames the iterations are frames.
    pub kernel_ns: u32,
    /// The whole system call, wall clock.
    pub wall: Duration,
}

/// One call in the ordinary mode: `repeat` runs of the program on one kernel copy of `frame`,
/// which is not reset between runs.
pub fn test_run(program: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> Result<Run> {
    let mut attributes = TestRun {
        program_fd: program.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ..TestRun::default()
    };
    let start = Instant::now();
    sys::bpf(BPF_PROG_TEST_RUN, &mut attributes).context("BPF_PROG_TEST_RUN")?;
    let wall = start.elapsed();
    Ok(Run { return_value: attributes.return_value, kernel_ns: attributes.duration, wall })
}

/// One call in live-frames mode: `frames` frames made from `frame`, as if received on
/// `ifindex` (in the calling thread's namespace), in batches of `batch`; XDP_TX really
/// transmits out of that interface.
pub fn test_run_live(program: BorrowedFd<'_>, frame: &[u8], ifindex: u32, frames: u32, batch: u32) -> Result<Run> {
    let context = XdpContext { data_end: frame.len() as u32, ingress_ifindex: ifindex, ..XdpContext::default() };
    let mut attributes = TestRun {
        program_fd: program.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: frames,
        context_size_in: size_of::<XdpContext>() as u32,
        context_in: &context as *const XdpContext as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch,
        ..TestRun::default()
    };
    let start = Instant::now();
    sys::bpf(BPF_PROG_TEST_RUN, &mut attributes).context("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES")?;
    let wall = start.elapsed();
    Ok(Run { return_value: attributes.return_value, kernel_ns: attributes.duration, wall })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_layout_is_the_kernels() {
        assert_eq!(size_of::<TestRun>(), 80);
        assert_eq!(size_of::<XdpContext>(), 24);
    }

    #[test]
    fn jumps_land_on_the_drop() {
        let mut program = Assembler::default();
        program.jump_to_drop(op::JEQ_IMM, R0, 0, 0);
        program.emit(op::MOV64_IMM, R0, 0, 0, 3);
        program.load_imm64(R1, 0, 1);
        let code = program.finish_with_drop().unwrap();
        // jump at 0, then 1 + 2 instructions, drop at 4: offset 3.
        assert_eq!(code[0].offset, 3);
        assert_eq!(code[4].immediate, XDP_DROP as i32);
    }
}
