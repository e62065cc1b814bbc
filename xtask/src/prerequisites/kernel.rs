//! Kernel features the project needs — BTF, XDP, network namespaces, veth — each proved
//! cheaply on the running kernel. They cannot be installed, only reported.

use std::{
    ffi::CStr,
    fs,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
};

use super::{
    report::{Finding, Kind, Status},
    system::find_program,
};
use crate::bpf_abi::{Instruction, ProgramLoad, BPF_PROG_TYPE_XDP};

const BTF: &str = "/sys/kernel/btf/vmlinux";
const NETWORK_NAMESPACE: &str = "/proc/self/ns/net";

/// The running kernel's release (`uname -r`), and every feature.
pub fn check(root: bool) -> Vec<Finding> {
    vec![
        Finding::new(Kind::Kernel, "kernel", Status::Found(release())),
        file_feature("BTF", BTF, "CONFIG_DEBUG_INFO_BTF"),
        xdp(root),
        file_feature("netns", NETWORK_NAMESPACE, "CONFIG_NET_NS"),
        veth(root),
    ]
}

/// `uname -r`.
fn release() -> String {
    // SAFETY: uname fills the struct we pass; an all-zero utsname is valid.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a pointer to a utsname we own.
    if unsafe { libc::uname(&mut name) } != 0 {
        return format!("unknown ({})", std::io::Error::last_os_error());
    }
    // SAFETY: uname NUL-terminates the field.
    unsafe { CStr::from_ptr(name.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn file_feature(name: &str, path: &str, config: &str) -> Finding {
    let status = if Path::new(path).exists() {
        Status::Found(path.to_owned())
    } else {
        Status::Missing(format!("no {path}: the kernel needs {config}=y"))
    };
    Finding::new(Kind::Kernel, name, status)
}

const BPF_PROG_LOAD: libc::c_long = 5;
const XDP_PASS: i32 = 2;

/// Loads `r0 = XDP_PASS; exit` as an XDP program and closes it: the verifier and the program
/// type exist. Without root the kernel refuses, which proves nothing either way.
fn xdp(root: bool) -> Finding {
    let program = [
        // BPF_ALU64 | BPF_MOV | BPF_K: r0 = XDP_PASS.
        Instruction {
            code: 0xb7,
            registers: 0,
            offset: 0,
            immediate: XDP_PASS,
        },
        // BPF_JMP | BPF_EXIT.
        Instruction {
            code: 0x95,
            registers: 0,
            offset: 0,
            immediate: 0,
        },
    ];
    let license = c"GPL";
    let attribute = ProgramLoad {
        program_type: BPF_PROG_TYPE_XDP,
        instruction_count: program.len() as u32,
        instructions: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgramLoad::default()
    };
    // SAFETY: the attribute and what it points to outlive the call; the size is the struct's.
    let descriptor = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attribute as *const ProgramLoad,
            std::mem::size_of::<ProgramLoad>(),
        )
    };
    let status = if descriptor >= 0 {
        // SAFETY: the kernel just gave us this descriptor and nothing else holds it.
        unsafe { libc::close(descriptor as libc::c_int) };
        Status::Found("loaded a two-instruction XDP program".to_owned())
    } else {
        let error = std::io::Error::last_os_error();
        let refused = matches!(error.raw_os_error(), Some(libc::EPERM | libc::EACCES));
        if refused && !root {
            Status::Unchecked(format!("loading an XDP program needs root ({error})"))
        } else {
            Status::Missing(format!("BPF_PROG_LOAD of an XDP program failed: {error}"))
        }
    };
    Finding::new(Kind::Kernel, "XDP", status)
}

/// As root: creates a veth pair in a network namespace of its own that vanishes with the
/// process (a module is loaded on demand). Without root: a loaded module or the driver's symbols.
fn veth(root: bool) -> Finding {
    let status = if root {
        create_veth_pair()
    } else if Path::new("/sys/module/veth").exists() {
        Status::Found("module loaded".to_owned())
    } else if fs::read_to_string("/proc/kallsyms")
        .is_ok_and(|symbols| symbols.contains(" veth_xmit"))
    {
        Status::Found("built into the kernel".to_owned())
    } else {
        Status::Unchecked("creating a veth pair to prove it needs root".to_owned())
    };
    Finding::new(Kind::Kernel, "veth", status)
}

fn create_veth_pair() -> Status {
    let Some(ip) = find_program("ip") else {
        return Status::Unchecked("creating a veth pair needs ip (iproute2)".to_owned());
    };
    let mut command = Command::new(ip);
    command
        .args([
            "link", "add", "doctor0", "type", "veth", "peer", "name", "doctor1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: unshare is a plain system call, safe between fork and exec. The child gets a
    // network namespace of its own, which (with the pair) disappears when it exits.
    unsafe {
        command.pre_exec(|| match libc::unshare(libc::CLONE_NEWNET) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    match command.output() {
        Ok(output) if output.status.success() => {
            Status::Found("created a veth pair in a throwaway namespace".to_owned())
        }
        Ok(output) => Status::Missing(format!(
            "`ip link add ... type veth` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) => Status::Missing(format!("creating a veth pair in a new namespace: {error}")),
    }
}
