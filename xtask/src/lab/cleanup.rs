//! The removal of everything a lab run leaves: its own at the end, a crashed earlier run's at
//! the start, kept runs on `--cleanup` (processes in its namespaces, the daemons' pinned data
//! planes and runtime files, the namespaces, the lab directory).

use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    control::{
        instance_name, output_with_timeout, run_dir, run_of, Programs, BPF_ROOT, COMMAND_TIMEOUT,
        LAB_ROOT, RUN_ROOT,
    },
    topology,
};

/// Whether process `pid` is a live lab (an xtask process); a pid reused by something else counts
/// as dead.
fn lab_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    if unsafe { libc::kill(pid as libc::pid_t, 0) } != 0 {
        return false;
    }
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|name| name.trim() == "xtask")
}

/// The pids of every lab run that left something behind: namespaces, lab directories, daemon
/// runtime directories or pins.
fn runs_left() -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for name in netlab::list_namespaces()? {
        pids.extend(topology::namespace_pid(&name));
    }
    for root in [LAB_ROOT, RUN_ROOT, BPF_ROOT] {
        let Ok(entries) = fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            pids.extend(name.to_str().and_then(run_of));
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// Removes what earlier lab runs left: all of it with `include_kept` (`--cleanup`), otherwise
/// only runs that died without `--keep`. Returns the instances removed.
pub fn cleanup_runs(programs: Option<&Programs>, include_kept: bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for pid in runs_left()? {
        if pid == std::process::id() || lab_alive(pid) {
            continue;
        }
        if !include_kept && run_dir(pid).join("kept").exists() {
            eprintln!(
                "lab: {} was kept with --keep; `cargo xtask lab --cleanup` removes it",
                instance_name(pid)
            );
            continue;
        }
        cleanup_run(programs, pid)?;
        removed.push(instance_name(pid));
    }
    Ok(removed)
}

/// The daemon instances run `pid` left (pins or runtime files), each with the namespace of its
/// load balancer: `lab-<pid>-lb3` ran in `folab-lb3-<pid>`, and `lab-<pid>` (labs from before
/// the election) in none. Found on disk, so that every lab's load balancers are covered
/// (two in the election lab, up to three in the scale-out lab).
fn instances_of(pid: u32) -> Vec<(String, Option<String>)> {
    let run = instance_name(pid);
    let mut instances: Vec<(String, Option<String>)> = [BPF_ROOT, RUN_ROOT]
        .iter()
        .filter_map(|root| fs::read_dir(root).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| run_of(name) == Some(pid))
        .map(|name| {
            let lb = name
                .strip_prefix(&run)
                .and_then(|rest| rest.strip_prefix('-'))
                .map(|role| topology::namespace_name(role, pid));
            (name, lb)
        })
        .collect();
    instances.sort();
    instances.dedup();
    instances
}

/// Removes everything of run `pid`: processes in its namespaces, the daemons' pinned data planes
/// and runtime files, the namespaces, the lab directory.
pub fn cleanup_run(programs: Option<&Programs>, pid: u32) -> Result<()> {
    let namespaces: Vec<String> = netlab::list_namespaces()?
        .into_iter()
        .filter(|name| topology::namespace_pid(name) == Some(pid))
        .collect();
    for name in &namespaces {
        for process in netlab::namespace_pids(name).unwrap_or_default() {
            // SAFETY: plain kill(2); these are the lab's daemon, backends and decap programs.
            unsafe { libc::kill(process, libc::SIGKILL) };
        }
    }
    // Give the killed processes a moment to release the namespaces and their sockets.
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end
        && namespaces
            .iter()
            .any(|name| !netlab::namespace_pids(name).unwrap_or_default().is_empty())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let can_teardown = programs.is_some_and(|programs| {
        programs
            .ctl_subcommands()
            .unwrap_or_default()
            .iter()
            .any(|name| name == "teardown")
    });
    for (instance, lb) in instances_of(pid) {
        let paths = [BPF_ROOT, RUN_ROOT].map(|root| Path::new(root).join(&instance));
        if !paths.iter().any(|path| path.exists()) {
            continue;
        }
        if let (Some(programs), true) = (programs, can_teardown) {
            let mut command = Command::new(&programs.failover_ctl);
            command.args(["--instance", &instance, "teardown"]);
            // Detaching names the interface inside the load balancer's namespace.
            if let Some(lb) = lb.filter(|lb| namespaces.contains(lb)) {
                command.args(["--netns", &lb]);
            }
            if let Err(error) = output_with_timeout(command, COMMAND_TIMEOUT) {
                eprintln!("lab: teardown of {instance}: {error:#}");
            }
        }
        // Whatever teardown left (or all of it, without a failover-ctl that can tear down):
        // unpinning the links detaches the programs, unpinning the maps frees them.
        for path in paths.iter().filter(|path| path.exists()) {
            fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for name in &namespaces {
        netlab::delete_namespace(name).with_context(|| format!("deleting namespace {name}"))?;
    }
    let dir = run_dir(pid);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}
