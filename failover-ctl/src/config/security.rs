//! What [`load`](super::load) checks on the host: the configuration file, every exec probe's
//! program and every group's notify program can be changed by root alone, each program exists where the probe will look for it
//! and its user may run it, and a daemon that is not root runs programs only as itself.
//!
//! A program or configuration that another user can change is a privilege escalation: the
//! daemon runs as root (keepalived's `enable_script_security` lesson). "Can change" covers the
//! file and every directory the kernel walks through to reach it, symbolic links followed: a
//! non-root owner (who can chmod), a group-writable entry whose group is not root, a
//! world-writable entry. A sticky world-writable directory such as `/tmp` is accepted on the way
//! to the configuration file, which is read right after the check and cannot be replaced there
//! by another user while it belongs to root; it is refused on the way to a program, which runs
//! long after the check: once the entry goes (a tmp cleaner, a reboot), anyone may create the
//! name the daemon keeps running.

use std::ffi::OsString;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Check, Config, ScriptUser};

/// Symbolic links followed on one path before giving up, as the kernel's limit (ELOOP).
const MAX_LINKS: usize = 40;

/// Why a file is reached: read once now, or run by a user from now on.
#[derive(Clone, Copy)]
enum Purpose<'a> {
    Read,
    Run(&'a ScriptUser),
}

/// The host's problems with `config` loaded from `config_path` by a process of
/// `effective_uid`, as (key path, message); a bare program name in an exec probe's `argv` is
/// replaced by the absolute path checked, so the probe runs that file and no other.
pub(super) fn check(config: &mut Config, config_path: &Path, effective_uid: u32) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Err(message) = trusted(config_path, Purpose::Read) {
        // The file as a whole: line 1, no key.
        problems.push((String::new(), message));
    }
    for (path, user_key, argv, user) in programs(config) {
        if effective_uid != 0 && user.uid != effective_uid {
            problems.push((
                user_key,
                format!(
                    "the program would run as {:?} (uid {}), but failover-ctl runs as uid {effective_uid} and only \
                     root can run a program as another user: run as root, or set script_user (or this probe's \
                     `user`, this group's `notify_user`) to the user failover-ctl runs as",
                    user.name, user.uid
                ),
            ));
        }
        let Some(program) = argv.first_mut().filter(|program| !program.is_empty()) else {
            continue; // Reported by the rules on the text.
        };
        let checked = resolve(program).and_then(|file| trusted(&file, Purpose::Run(user)).map(|_| file));
        match checked {
            Ok(file) => *program = file.to_string_lossy().into_owned(),
            Err(message) => problems.push((path, message)),
        }
    }
    problems
}

/// Every program the daemon runs, as (key of its argv, key of its user, argv, user): exec
/// probes of backends, then of election tracks, then the groups' notify programs.
fn programs(config: &mut Config) -> Vec<(String, String, &mut Vec<String>, &ScriptUser)> {
    let mut probes: Vec<(String, &mut Check)> = Vec::new();
    let mut notifies = Vec::new();
    for (vip_index, vip) in config.vips.iter_mut().enumerate() {
        for (index, backend) in vip.backends.iter_mut().enumerate() {
            probes.push((format!("vip[{vip_index}].backend[{index}].probe"), &mut backend.probe.check));
        }
    }
    for (election_index, election) in config.elections.iter_mut().enumerate() {
        for (index, track) in election.tracks.iter_mut().enumerate() {
            if let super::TrackKind::Probe { probe, .. } = &mut track.kind {
                probes.push((format!("election[{election_index}].track[{index}].probe"), &mut probe.check));
            }
        }
        if let Some(user) = &election.notify_user {
            let path = format!("election[{election_index}]");
            notifies.push((format!("{path}.notify"), format!("{path}.notify_user"), &mut election.notify, user));
        }
    }
    let mut programs: Vec<(String, String, &mut Vec<String>, &ScriptUser)> = probes
        .into_iter()
        .filter_map(|(path, check)| match check {
            Check::Exec { argv, user } => Some((format!("{path}.argv"), format!("{path}.user"), argv, &*user)),
            _ => None,
        })
        .collect();
    programs.extend(notifies);
    programs
}

/// The file a program name runs: an absolute path as it is, a bare name through PATH (the
/// daemon's own, absolute entries only, as execvp would search them).
fn resolve(program: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        if !program.starts_with('/') {
            return Err(format!(
                "program {program:?} is a relative path: give an absolute path (or a bare name found in PATH), \
                 the daemon's working directory is not where it was written"
            ));
        }
        return Ok(PathBuf::from(program));
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&search)
        .filter(|directory| directory.is_absolute())
        .map(|directory| directory.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| format!("program {program:?} is not found in PATH ({})", search.to_string_lossy()))
}

/// Checks `path` for `purpose`, and returns nothing or why it is not to be trusted.
fn trusted(path: &Path, purpose: Purpose<'_>) -> Result<(), String> {
    let absolute = std::path::absolute(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let walk = traversal(&absolute)?;
    let sticky_accepted = matches!(purpose, Purpose::Read);
    let reached = walk.last().map(|(entry, _)| entry.clone()).unwrap_or_default();
    for (entry, metadata) in &walk {
        if let Some(reason) = writable_by_others(metadata, sticky_accepted) {
            let via = if *entry == reached { String::new() } else { format!(" (on the way to {})", absolute.display()) };
            return Err(format!("{} {reason}{via}; only root may be able to change it", entry.display()));
        }
    }
    let Purpose::Run(user) = purpose else {
        return Ok(());
    };
    let Some(((file, metadata), directories)) = walk.split_last() else {
        return Ok(());
    };
    if !metadata.is_file() {
        return Err(format!("program {} is not a regular file", file.display()));
    }
    let who = format!("user {:?} (uid {}, gid {})", user.name, user.uid, user.gid);
    for (directory, metadata) in directories {
        if !permits(metadata, user, 0o1) {
            return Err(format!(
                "{who} cannot enter {} (mode {:04o}) on the way to {}",
                directory.display(),
                mode(metadata),
                file.display()
            ));
        }
    }
    if !permits(metadata, user, 0o1) {
        return Err(format!("{who} cannot execute {} (mode {:04o})", file.display(), mode(metadata)));
    }
    // A script is read by its interpreter as that user; a binary needs no read permission.
    if is_script(file) && !permits(metadata, user, 0o4) {
        return Err(format!("{who} cannot read the script {} (mode {:04o})", file.display(), mode(metadata)));
    }
    Ok(())
}

/// Every directory walked through to reach `path` and the entry reached, each with its own
/// metadata: symbolic links are followed (their targets' directories walked in turn), never
/// returned themselves, since a link cannot be changed, only replaced through its directory.
fn traversal(path: &Path) -> Result<Vec<(PathBuf, Metadata)>, String> {
    let metadata = |entry: &Path| {
        std::fs::symlink_metadata(entry).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => format!("{} does not exist", entry.display()),
            _ => format!("{}: {error}", entry.display()),
        })
    };
    let root = PathBuf::from("/");
    let mut walk = vec![(root.clone(), metadata(&root)?)];
    let mut current = root.clone();
    // Components still to walk, the next one last.
    let mut pending: Vec<OsString> = components(path);
    let mut links = 0;
    while let Some(component) = pending.pop() {
        if component == "." {
            continue;
        }
        if component == ".." {
            current.pop();
            continue;
        }
        let next = current.join(&component);
        let entry = metadata(&next)?;
        if entry.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(format!("{}: more than {MAX_LINKS} symbolic links", path.display()));
            }
            let target = std::fs::read_link(&next).map_err(|error| format!("{}: {error}", next.display()))?;
            if target.is_absolute() {
                current = root.clone();
            }
            pending.extend(components(&target));
            continue;
        }
        walk.push((next.clone(), entry));
        current = next;
    }
    Ok(walk)
}

/// The names in `path` after its root, last first (the order [`traversal`] pops them).
fn components(path: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = path
        .components()
        .filter_map(|component| match component {
            std::path::Component::Normal(name) => Some(name.to_owned()),
            std::path::Component::ParentDir => Some(OsString::from("..")),
            std::path::Component::CurDir => Some(OsString::from(".")),
            std::path::Component::RootDir | std::path::Component::Prefix(_) => None,
        })
        .collect();
    names.reverse();
    names
}

/// Why someone other than root can change the entry, if anyone can.
fn writable_by_others(metadata: &Metadata, sticky_accepted: bool) -> Option<String> {
    let mode = mode(metadata);
    if metadata.uid() != 0 {
        // The owner can chmod it writable whatever its mode says.
        return Some(format!("belongs to uid {}, not root (mode {mode:04o})", metadata.uid()));
    }
    // A sticky directory owned by root lets no one rename or remove another user's entries.
    let sticky = metadata.is_dir() && mode & 0o1000 != 0;
    if sticky && sticky_accepted {
        return None;
    }
    let note = if sticky { ", the sticky bit notwithstanding: the program runs long after this check" } else { "" };
    if mode & 0o020 != 0 && metadata.gid() != 0 {
        return Some(format!("is writable by group {} (mode {mode:04o}{note})", metadata.gid()));
    }
    if mode & 0o002 != 0 {
        return Some(format!("is writable by everyone (mode {mode:04o}{note})"));
    }
    None
}

/// Whether `user` has the permission `bit` (0o4 read, 0o1 execute or enter) on the entry, with
/// its uid and primary gid only: the probe clears the supplementary groups.
fn permits(metadata: &Metadata, user: &ScriptUser, bit: u32) -> bool {
    let mode = mode(metadata);
    if user.uid == 0 {
        // Root reads and enters anything, and executes a file that has any execute bit.
        return bit != 0o1 || metadata.is_dir() || mode & 0o111 != 0;
    }
    let shift = if metadata.uid() == user.uid {
        6
    } else if metadata.gid() == user.gid {
        3
    } else {
        0
    };
    (mode >> shift) & bit != 0
}

fn mode(metadata: &Metadata) -> u32 {
    metadata.mode() & 0o7777
}

/// Whether the file starts with `#!`, so that its interpreter must read it.
fn is_script(file: &Path) -> bool {
    let mut start = [0_u8; 2];
    std::fs::File::open(file).and_then(|mut opened| opened.read_exact(&mut start)).is_ok() && start == *b"#!"
}
