//! The load balancer as the kernel runs it: machine instructions per BPF function of the JITed image, and BPF instructions after the verifier, read back with `BPF_OBJ_GET_INFO_BY_FD` (bpftool could print them only if built with a disassembler, which Debian's is not).
//!
//! The image is decoded with iced-x86 on x86-64; on other architectures the count is left
//! out and only bytes are given. A function's name comes from the program's BTF (`func_info`
//! names each function's type), fetched from the kernel, so it is the name the kernel knows.

use std::os::fd::{AsRawFd, BorrowedFd};

use anyhow::{ensure, Context as _, Result};
use failover_ctl::sys;

use super::btf::Btf;

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;

/// `struct bpf_prog_info` (include/uapi/linux/bpf.h) up to `attach_btf_id`.
#[repr(C)]
#[derive(Default)]
struct ProgramInfo {
    program_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    ifindex: u32,
    gpl_compatible: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
    func_info: u64,
    nr_func_info: u32,
    nr_line_info: u32,
    line_info: u64,
    jited_line_info: u64,
    nr_jited_line_info: u32,
    line_info_rec_size: u32,
    jited_line_info_rec_size: u32,
    nr_prog_tags: u32,
    prog_tags: u64,
    run_time_ns: u64,
    run_cnt: u64,
    recursion_misses: u64,
    verified_insns: u32,
    attach_btf_obj_id: u32,
    attach_btf_id: u32,
    _padding: u32,
}

/// `struct bpf_btf_info`.
#[repr(C)]
#[derive(Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
    name: u64,
    name_len: u32,
    kernel_btf: u32,
}

/// `struct bpf_func_info`: where a function starts (in BPF instructions) and its BTF type.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FunctionInfo {
    instruction_offset: u32,
    type_id: u32,
}

/// The `BPF_OBJ_GET_INFO_BY_FD` part of `union bpf_attr`.
#[repr(C)]
struct GetInfo {
    fd: u32,
    info_len: u32,
    info: u64,
}

const _: () = assert!(size_of::<ProgramInfo>() == 232);
const _: () = assert!(size_of::<BtfInfo>() == 32);

fn get_info<T>(fd: u32, info: &mut T) -> Result<()> {
    let mut attributes = GetInfo { fd, info_len: size_of::<T>() as u32, info: info as *mut T as u64 };
    sys::bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attributes).context("BPF_OBJ_GET_INFO_BY_FD")?;
    Ok(())
}

/// One BPF function of a loaded program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    /// BPF instructions after the verifier's rewrites (`xlated`).
    pub bpf_instructions: u32,
    pub jited_bytes: u32,
    /// Machine instructions of the JITed code; `None` where no decoder is built in.
    pub machine_instructions: Option<u32>,
}

/// What the kernel reports of one program: its functions in the image's order (the main
/// function first), and the verifier's instruction count.
pub struct Jited {
    pub functions: Vec<Function>,
    pub verified_instructions: u32,
}

impl Jited {
    pub fn total(&self) -> Function {
        let sum = |f: fn(&Function) -> u32| self.functions.iter().map(f).sum::<u32>();
        Function {
            name: "(total)".to_string(),
            bpf_instructions: sum(|f| f.bpf_instructions),
            jited_bytes: sum(|f| f.jited_bytes),
            machine_instructions: self.functions.iter().map(|f| f.machine_instructions).sum(),
        }
    }
}

/// Reads the JITed image, the function boundaries and names of the program `fd`.
pub fn read(fd: BorrowedFd<'_>) -> Result<Jited> {
    let raw_fd = fd.as_raw_fd() as u32;
    let mut sizes = ProgramInfo::default();
    get_info(raw_fd, &mut sizes)?;
    ensure!(sizes.jited_prog_len > 0, "the program is not JITed (net.core.bpf_jit_enable is 0?)");
    let mut image = vec![0u8; sizes.jited_prog_len as usize];
    let mut lengths = vec![0u32; sizes.nr_jited_func_lens as usize];
    let mut functions = vec![FunctionInfo::default(); sizes.nr_func_info as usize];
    let mut info = ProgramInfo {
        jited_prog_len: image.len() as u32,
        jited_prog_insns: image.as_mut_ptr() as u64,
        nr_jited_func_lens: lengths.len() as u32,
        jited_func_lens: lengths.as_mut_ptr() as u64,
        nr_func_info: functions.len() as u32,
        func_info_rec_size: size_of::<FunctionInfo>() as u32,
        func_info: functions.as_mut_ptr() as u64,
        ..ProgramInfo::default()
    };
    get_info(raw_fd, &mut info)?;
    // The kernel clears the pointers instead of copying when raw dumps are not allowed.
    ensure!(info.jited_prog_insns != 0 && (lengths.is_empty() || info.jited_func_lens != 0), "the kernel withheld the JITed image (kernel.kptr_restrict, or not root)");
    if lengths.is_empty() {
        lengths.push(image.len() as u32);
    }
    let names = function_names(info.btf_id, &functions, lengths.len());
    let bpf_counts = bpf_instruction_counts(&functions, info.xlated_prog_len / 8, lengths.len());
    let mut start = 0usize;
    let mut found = Vec::new();
    for (index, &length) in lengths.iter().enumerate() {
        let end = start + length as usize;
        let code = image.get(start..end).context("function lengths beyond the image")?;
        found.push(Function {
            name: names[index].clone(),
            bpf_instructions: bpf_counts[index],
            jited_bytes: length,
            machine_instructions: count_machine_instructions(code),
        });
        start = end;
    }
    Ok(Jited { functions: found, verified_instructions: info.verified_insns })
}

/// Function `i` runs from `functions[i]`'s offset to the next one's (the last to the end);
/// without `func_info` the whole program is one function.
fn bpf_instruction_counts(functions: &[FunctionInfo], total: u32, count: usize) -> Vec<u32> {
    if functions.len() != count {
        return if count == 1 { vec![total] } else { vec![0; count] };
    }
    let starts: Vec<u32> = functions.iter().map(|f| f.instruction_offset).collect();
    starts.iter().enumerate().map(|(index, &start)| starts.get(index + 1).copied().unwrap_or(total).saturating_sub(start)).collect()
}

/// The names `func_info` gives the functions, from the program's BTF; `function <n>` where
/// there is none.
fn function_names(btf_id: u32, functions: &[FunctionInfo], count: usize) -> Vec<String> {
    let fallback = || (0..count).map(|index| format!("function {index}")).collect();
    if btf_id == 0 || functions.len() != count {
        return fallback();
    }
    let Ok(btf) = program_btf(btf_id) else { return fallback() };
    functions.iter().enumerate().map(|(index, f)| btf.function_name(f.type_id).unwrap_or_else(|_| format!("function {index}"))).collect()
}

fn program_btf(id: u32) -> Result<Btf> {
    let mut by_id = [id, 0, 0, 0];
    let fd = sys::owned_fd(sys::bpf(BPF_BTF_GET_FD_BY_ID, &mut by_id).context("BPF_BTF_GET_FD_BY_ID")?);
    let mut sizes = BtfInfo::default();
    get_info(fd.as_raw_fd() as u32, &mut sizes)?;
    let mut bytes = vec![0u8; sizes.btf_size as usize];
    let mut info = BtfInfo { btf: bytes.as_mut_ptr() as u64, btf_size: bytes.len() as u32, ..BtfInfo::default() };
    get_info(fd.as_raw_fd() as u32, &mut info)?;
    Btf::parse(&bytes)
}

#[cfg(target_arch = "x86_64")]
fn count_machine_instructions(code: &[u8]) -> Option<u32> {
    let mut decoder = iced_x86::Decoder::new(64, code, iced_x86::DecoderOptions::NONE);
    let mut count = 0;
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return None;
        }
        count += 1;
    }
    Some(count)
}

#[cfg(not(target_arch = "x86_64"))]
fn count_machine_instructions(_code: &[u8]) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn counts_x86_instructions() {
        // push rbp; mov rbp, rsp; xor eax, eax; leave; ret
        assert_eq!(count_machine_instructions(&[0x55, 0x48, 0x89, 0xe5, 0x31, 0xc0, 0xc9, 0xc3]), Some(5));
        // A truncated instruction is not counted as one.
        assert_eq!(count_machine_instructions(&[0x48, 0x89]), None);
    }

    #[test]
    fn functions_span_to_the_next_start() {
        let functions = [FunctionInfo { instruction_offset: 0, type_id: 1 }, FunctionInfo { instruction_offset: 700, type_id: 2 }];
        assert_eq!(bpf_instruction_counts(&functions, 1000, 2), [700, 300]);
        assert_eq!(bpf_instruction_counts(&[], 1000, 1), [1000]);
    }

    #[test]
    fn totals_add_up() {
        let function = |name: &str, machine| Function { name: name.to_string(), bpf_instructions: 10, jited_bytes: 40, machine_instructions: machine };
        let jited = Jited { functions: vec![function("failover", Some(12)), function("monitor", Some(3))], verified_instructions: 0 };
        assert_eq!(jited.total().machine_instructions, Some(15));
        assert_eq!(jited.total().jited_bytes, 80);
        let jited = Jited { functions: vec![function("failover", Some(12)), function("monitor", None)], verified_instructions: 0 };
        assert_eq!(jited.total().machine_instructions, None);
    }
}
