//! The two kernel structures xtask hands to `bpf(2)` itself (include/uapi/linux/bpf.h): an
//! instruction and the `BPF_PROG_LOAD` attribute. Shared by the prerequisite check (which loads a
//! two-instruction XDP program) and the benchmark's own programs; xtask cannot use aya's loader
//! for either (the check runs before any eBPF toolchain exists, and aya loads ELF objects only).

/// One instruction as the kernel reads it (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Instruction {
    pub code: u8,
    /// Destination register in the low nibble, source in the high one.
    pub registers: u8,
    pub offset: i16,
    pub immediate: i32,
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `expected_attach_type`; the kernel
/// treats the fields after it as zero.
#[repr(C)]
#[derive(Default)]
pub struct ProgramLoad {
    pub program_type: u32,
    pub instruction_count: u32,
    pub instructions: u64,
    pub license: u64,
    pub log_level: u32,
    pub log_size: u32,
    pub log_buffer: u64,
    pub kernel_version: u32,
    pub program_flags: u32,
    pub name: [u8; 16],
    pub program_ifindex: u32,
    pub expected_attach_type: u32,
}

pub const BPF_PROG_TYPE_XDP: u32 = 6;

const _: () = assert!(std::mem::size_of::<Instruction>() == 8);
const _: () = assert!(std::mem::size_of::<ProgramLoad>() == 72);
