//! Private network namespaces for tests, benchmarks and the lab: unique names per run, guards
//! that delete them on drop (also when a test panics), cleanup of namespaces left by crashed
//! runs, veth pairs, and running code or commands inside a namespace; and what a test needs
//! from the host, with the rule for skipping without it ([`prerequisite`]); BIRD routers for the
//! scale-out tests and lab ([`bird`]).
//!
//! Tests and benchmarks only ever send traffic to addresses inside namespaces made here.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};

pub mod bird;
pub mod http;
pub mod prerequisite;

/// Every namespace this crate makes starts with this, followed by `<tag>-<pid>-<n>`.
pub const PREFIX: &str = "fo";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace deleted when dropped.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

fn run(command: &mut Command) -> Result<Output> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output)
}

/// Deletes namespaces of this prefix whose creating process is gone (a crashed earlier run).
pub fn cleanup_stale() -> Result<()> {
    let list = run(Command::new("ip").args(["netns", "list"]))?;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let mut parts = name.split('-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.nth(1).and_then(|p| p.parse::<i32>().ok()) else { continue };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = run(Command::new("ip").args(["netns", "delete", name]));
        }
    }
    Ok(())
}

impl Namespace {
    /// Creates `fo-<tag>-<pid>-<n>` (tag: a short word, no dashes).
    pub fn create(tag: &str) -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}-{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let namespace = Self { name };
        namespace.ip("link set lo up")?;
        Ok(namespace)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command to run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs a command inside the namespace and fails on a non-zero exit.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let (program, args) = argv.split_first().context("empty command")?;
        run(self.command(program).args(args))
    }

    /// Runs `ip <args>` inside the namespace (`args` split on whitespace).
    pub fn ip(&self, args: &str) -> Result<()> {
        let argv: Vec<&str> = std::iter::once("ip").chain(args.split_whitespace()).collect();
        self.exec(&argv).map(drop)
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it opens and interfaces it
    /// names belong to the namespace (sockets keep it after the thread ends).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns on this thread only, with a namespace fd we own.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns into {}: {}", self.name, std::io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in namespace {} panicked", self.name))?
        })
    }

    /// The interface index of `interface` inside the namespace.
    pub fn if_index(&self, interface: &str) -> Result<u32> {
        let name = std::ffi::CString::new(interface)?;
        // SAFETY: valid C string.
        let index = self.enter(|| unsafe { libc::if_nametoindex(name.as_ptr()) })?;
        if index == 0 {
            bail!("no interface {interface} in {}", self.name);
        }
        Ok(index)
    }

    /// The MAC address of `interface` inside the namespace.
    pub fn mac(&self, interface: &str) -> Result<[u8; 6]> {
        let output = self.exec(&["cat", &format!("/sys/class/net/{interface}/address")])?;
        parse_mac(String::from_utf8_lossy(&output.stdout).trim())
    }
}

impl Namespace {
    /// Creates a namespace named exactly `name`, deleted when dropped, for callers that name
    /// their namespaces and clean up after crashed runs themselves (the lab, whose namespaces
    /// may outlive it with `--keep`, so [`cleanup_stale`] must not match them).
    pub fn create_named(name: &str) -> Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let namespace = Self { name: name.to_owned() };
        namespace.ip("link set lo up")?;
        Ok(namespace)
    }

    /// Gives up the guard without deleting the namespace; returns its name.
    pub fn keep(self) -> String {
        let name = self.name.clone();
        std::mem::forget(self);
        name
    }
}

/// The names of all network namespaces (`ip netns list`).
pub fn list_namespaces() -> Result<Vec<String>> {
    let list = run(Command::new("ip").args(["netns", "list"]))?;
    Ok(String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// The processes running in namespace `name` (`ip netns pids`).
pub fn namespace_pids(name: &str) -> Result<Vec<i32>> {
    let list = run(Command::new("ip").args(["netns", "pids", name]))?;
    Ok(String::from_utf8_lossy(&list.stdout).split_whitespace().filter_map(|pid| pid.parse().ok()).collect())
}

/// Deletes namespace `name` (one not held by a [`Namespace`] guard).
pub fn delete_namespace(name: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "delete", name])).map(drop)
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace also removes its veth ends and detaches their programs.
        let _ = run(Command::new("ip").args(["netns", "delete", &self.name]));
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {text:?}"))?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("bad MAC {text:?}"))
}

/// Creates a veth pair with `a_name` in `a` and `b_name` in `b`, both up.
pub fn veth(a: &Namespace, a_name: &str, b: &Namespace, b_name: &str) -> Result<()> {
    // Create in `a` with the peer there too, then move the peer: names only need to be unique
    // inside the namespace.
    a.ip(&format!("link add {a_name} type veth peer name {b_name}"))?;
    a.ip(&format!("link set {b_name} netns {}", b.name()))?;
    a.ip(&format!("link set {a_name} up"))?;
    b.ip(&format!("link set {b_name} up"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("02:00:0a:ff:10:01").unwrap(), [2, 0, 0x0a, 0xff, 0x10, 1]);
        assert!(parse_mac("02:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
    }
}
