//! Debian packages (proved by the program each installs, versioned by dpkg) and the bpffs
//! mount: checked, and installed / mounted with apt-get and mount(2).

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::report::{disk_status, parse_dpkg_status, Finding, Kind, Status, BPFFS};
use crate::command::{self, probe};

/// A Debian package a task needs, and the program whose presence proves it is installed.
pub struct Package {
    /// The Debian package name, for apt-get and dpkg.
    pub name: &'static str,
    /// A program the package installs, looked up on PATH (and the sbin directories).
    pub program: &'static str,
    /// What it is needed for, for the doctor.
    pub used_for: &'static str,
}

/// bpffs's `f_type` in statfs (linux/magic.h `BPF_FS_MAGIC`); libc does not define it.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// Directories searched after PATH: a non-root PATH often lacks the sbin directories where
/// Debian puts ip, sysctl, ethtool and bpftool.
const SBIN: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// Where `program` is, on PATH or in an sbin directory.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let directories = std::env::split_paths(&path).chain(SBIN.iter().map(PathBuf::from));
    netlab::prerequisite::find_in(program, directories)
}

/// The package's state: found with its dpkg version when its program is there.
pub fn check_package(package: &Package) -> Finding {
    let status = match (find_program(package.program), dpkg_version(package.name)) {
        (Some(_), Some(version)) => Status::Found(version),
        (Some(path), None) => {
            Status::Found(format!("{} (not from a Debian package)", path.display()))
        }
        (None, Some(version)) => Status::Missing(format!(
            "dpkg has {} {version}, but `{}` is not on PATH",
            package.name, package.program
        )),
        (None, None) => Status::Missing(format!(
            "`{}` not found ({})",
            package.program, package.used_for
        )),
    };
    Finding::new(Kind::Package, package.name, status)
}

/// The installed version dpkg reports, or `None` (not installed, or no dpkg).
fn dpkg_version(package: &str) -> Option<String> {
    let output =
        probe(Command::new("dpkg-query").args(["-W", "-f=${Status}\t${Version}", package]))?;
    parse_dpkg_status(&output)
}

/// Whether apt-get can be run.
pub fn has_apt_get() -> bool {
    find_program("apt-get").is_some()
}

/// `apt-get update` once, then one `apt-get install` of every package in `missing`; then checks
/// that each package's program is there.
pub fn install(missing: &[&Package]) -> Result<()> {
    for package in missing {
        eprintln!(
            "xtask: installing {} (Debian package {})",
            package.program, package.name
        );
    }
    let apt_get = || {
        let mut command = Command::new("apt-get");
        command.env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    command::run(apt_get().arg("update"))?;
    command::run(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(missing.iter().map(|package| package.name)),
    )?;
    let still: Vec<String> = missing
        .iter()
        .filter(|package| find_program(package.program).is_none())
        .map(|package| format!("{} (from {})", package.program, package.name))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get installed the packages, but these programs are still not found: {}",
            still.join(", ")
        );
    }
    Ok(())
}

/// Whether bpffs is mounted at /sys/fs/bpf.
pub fn check_bpffs() -> Finding {
    let status = match filesystem_magic(Path::new(BPFFS)) {
        Ok(magic) if magic == BPF_FS_MAGIC => Status::Found(format!("mounted at {BPFFS}")),
        Ok(magic) => Status::Missing(format!(
            "not mounted at {BPFFS} (the file system there has magic {magic:#x})"
        )),
        Err(error) => Status::Missing(format!("{error:#}")),
    };
    Finding::new(Kind::Mount, "bpffs", status)
}

/// Free space in the directory cargo builds into (or the nearest existing parent of it).
pub fn check_disk(target: &Path) -> Finding {
    let existing = target.ancestors().find(|path| path.exists()).unwrap_or(target);
    let status = match free_bytes(existing) {
        Ok(free) => disk_status(free, &target.display().to_string()),
        Err(error) => Status::Unchecked(format!("{error:#}")),
    };
    Finding::new(Kind::Disk, "build space", status)
}

/// The bytes an unprivileged writer may still use on the file system holding `path`.
fn free_bytes(path: &Path) -> Result<u64> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs only writes into the struct we pass; an all-zero statvfs is valid.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a pointer to a statvfs we own.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        let error = std::io::Error::last_os_error();
        bail!("statvfs {}: {error}", path.display());
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The `f_type` statfs reports for `path`.
fn filesystem_magic(path: &Path) -> Result<u32> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs only writes into the struct we pass; an all-zero statfs is valid.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a pointer to a statfs we own.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        let error = std::io::Error::last_os_error();
        bail!("statfs {}: {error}", path.display());
    }
    // f_type is a signed word whose width depends on the target; magics are 32-bit.
    Ok(stat.f_type as u32)
}

/// Mounts bpffs at /sys/fs/bpf (`mount -t bpf bpf /sys/fs/bpf`).
pub fn mount_bpffs() -> Result<()> {
    let source = c"bpf";
    let target = CString::new(BPFFS)?;
    // SAFETY: valid C strings; no data argument.
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        return Err(error).with_context(|| format!("mounting bpffs at {BPFFS}"));
    }
    eprintln!("xtask: mounted bpffs at {BPFFS}");
    Ok(())
}
