//! `--against REV`: resolves REV to a commit, builds that commit's load-balancer object in a temporary git worktree (removed right after the build, also on error or Ctrl-C; those left by a killed run are removed first) and caches it by commit, so the next run against the same commit builds nothing.
//!
//! The object is built the way failover-ctl's build script builds it (nightly, `-Z
//! build-std=core`, bpfel-unknown-none, release, `-Cdebuginfo=2 -Clink-arg=--btf`), by the same
//! nested cargo, without building failover-ctl itself: that would compile every host
//! dependency again for one object. A test keeps these settings in step with build.rs.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::command::{self, describe};

// failover-ctl/build.rs's nested build; `build_settings_match_failover_ctl` checks them.
const TOOLCHAIN: &str = "nightly";
const TARGET: &str = "bpfel-unknown-none";
const RUSTFLAGS: [&str; 2] = ["-Cdebuginfo=2", "-Clink-arg=--btf"];
/// The load balancer's binary in failover-ebpf.
const PROGRAM_BINARY: &str = "failover";

/// Another revision's load-balancer object, ready to load.
pub struct Revision {
    /// As the user wrote it (`HEAD~3`, a tag, a hash).
    pub name: String,
    pub commit: String,
    pub object: Vec<u8>,
    /// Whether the object came from the cache rather than a build in this run.
    pub cached: bool,
}

/// Everything `--against` keeps, under the target directory: `objects/<commit>/failover`, the
/// nested build's target directory, and `worktrees/<pid>` while a build runs.
fn base_directory() -> Result<PathBuf> {
    Ok(command::target_dir()?.join("bench-against"))
}

fn cached_object(base: &Path, commit: &str) -> PathBuf {
    base.join("objects").join(commit).join(PROGRAM_BINARY)
}

/// Resolves `name`, then returns its object from the cache or builds it.
pub fn prepare(name: &str) -> Result<Revision> {
    let root = command::workspace_root()?;
    let base = base_directory()?;
    remove_stale_worktrees(&root, &base)?;
    let commit = resolve(&root, name)?;
    let cached = cached_object(&base, &commit);
    if cached.is_file() {
        let object = fs::read(&cached).with_context(|| format!("reading {}", cached.display()))?;
        return Ok(Revision { name: name.to_string(), commit, object, cached: true });
    }
    let object = {
        let interrupt = InterruptGuard::install();
        let worktree = Worktree::add(&root, &base.join("worktrees").join(std::process::id().to_string()), &commit)?;
        let built = build(&worktree.path, &base.join("ebpf-target"), &interrupt).with_context(|| format!("building the eBPF object of {name} ({commit})"))?;
        fs::read(&built).with_context(|| format!("reading {}", built.display()))?
        // The worktree goes here, before anything is measured.
    };
    let directory = cached.parent().context("the cache path has a parent")?;
    fs::create_dir_all(directory).with_context(|| format!("creating {}", directory.display()))?;
    // Written aside and renamed, so a run killed mid-write leaves no truncated object to reuse.
    let partial = directory.join(format!("{PROGRAM_BINARY}.partial"));
    fs::write(&partial, &object).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, &cached).with_context(|| format!("renaming {} to {}", partial.display(), cached.display()))?;
    Ok(Revision { name: name.to_string(), commit, object, cached: false })
}

/// The full hash of the commit `name` names, or an error that says why it names none.
fn resolve(root: &Path, name: &str) -> Result<String> {
    check_name(name)?;
    let output = Command::new("git")
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
        .arg(format!("{name}^{{commit}}"))
        .current_dir(root)
        .output()
        .context("running git rev-parse")?;
    let commit = String::from_utf8_lossy(&output.stdout).trim().to_string();
    ensure!(output.status.success() && !commit.is_empty(), "--against {name}: not a commit of this repository (`git rev-parse --verify {name}^{{commit}}` found none)");
    Ok(commit)
}

/// Rejects what git could read as an option or what is empty, before asking git.
fn check_name(name: &str) -> Result<()> {
    ensure!(!name.trim().is_empty(), "--against needs a revision (HEAD~3, a tag, a commit hash)");
    ensure!(!name.starts_with('-'), "--against {name}: a revision does not start with '-'");
    Ok(())
}

/// A detached worktree of one commit, removed on drop (even half-made).
struct Worktree {
    root: PathBuf,
    path: PathBuf,
}

impl Worktree {
    fn add(root: &Path, path: &Path, commit: &str) -> Result<Self> {
        // From here on, whatever `git worktree add` leaves is removed on drop.
        let worktree = Self { root: root.to_path_buf(), path: path.to_path_buf() };
        let parent = path.parent().context("a worktree path has a parent")?;
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let mut add = Command::new("git");
        add.args(["worktree", "add", "--quiet", "--detach"]).arg(path).arg(commit).current_dir(root);
        let output = add.output().with_context(|| format!("running `{}`", describe(&add)))?;
        ensure!(output.status.success(), "`{}` failed: {}", describe(&add), String::from_utf8_lossy(&output.stderr).trim());
        Ok(worktree)
    }
}

impl Drop for Worktree {
    fn drop(&mut self) {
        remove_worktree(&self.root, &self.path);
    }
}

fn remove_worktree(root: &Path, path: &Path) {
    let removed = Command::new("git").args(["worktree", "remove", "--force", "--force"]).arg(path).current_dir(root).output();
    if path.exists() {
        if let Err(error) = fs::remove_dir_all(path) {
            eprintln!("warning: could not remove the worktree {}: {error}", path.display());
        }
    }
    // Forgets the registration of a directory removed by hand or never finished.
    let pruned = Command::new("git").args(["worktree", "prune"]).current_dir(root).output();
    if !matches!((&removed, &pruned), (Ok(_), Ok(_))) {
        eprintln!("warning: git could not be run to unregister the worktree {}", path.display());
    }
}

/// Removes the worktrees of runs that are gone (killed before their cleanup could run). Only
/// `worktrees/<pid>` under this task's own directory is ever touched.
fn remove_stale_worktrees(root: &Path, base: &Path) -> Result<()> {
    let directory = base.join("worktrees");
    let Ok(entries) = fs::read_dir(&directory) else { return Ok(()) };
    let names: Vec<String> = entries.filter_map(|entry| entry.ok()?.file_name().into_string().ok()).collect();
    let own = fs::read_to_string("/proc/self/comm").unwrap_or_default();
    let alive = |pid: u32| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm == own);
    for name in stale(&names, std::process::id(), alive) {
        let path = directory.join(&name);
        eprintln!("removing the worktree {} left by an interrupted run", path.display());
        remove_worktree(root, &path);
    }
    Ok(())
}

/// Which of the worktree directories `names` belong to runs no longer alive: a name is the
/// pid of the run that made it; another process with that pid only counts when it is this
/// same program (`alive` checks the name). Names that are not pids are left alone.
fn stale(names: &[String], own_pid: u32, alive: impl Fn(u32) -> bool) -> Vec<String> {
    names
        .iter()
        .filter(|name| name.parse::<u32>().is_ok_and(|pid| pid != own_pid && !alive(pid)))
        .cloned()
        .collect()
}

/// Runs the nested cargo build in `worktree`'s failover-ebpf and returns the object's path.
fn build(worktree: &Path, target_dir: &Path, interrupt: &InterruptGuard) -> Result<PathBuf> {
    let ebpf = worktree.join("failover-ebpf");
    ensure!(ebpf.join("Cargo.toml").is_file(), "that commit has no failover-ebpf/Cargo.toml");
    let mut command = nested_command("rustup");
    command
        .args(["run", TOOLCHAIN, "cargo", "build", "--release", "--bin", PROGRAM_BINARY, "--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(&ebpf)
        .env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS.join("\x1f"))
        .env("RUSTUP_AUTO_INSTALL", "0")
        // Standard output is the benchmark's (JSON lines with --json): cargo's goes aside.
        .stdout(std::io::stderr());
    eprintln!("$ (in {}) {}", ebpf.display(), describe(&command));
    let status = command.status().with_context(|| format!("starting `{}`", describe(&command)))?;
    ensure!(!interrupt.interrupted(), "interrupted");
    if !status.success() {
        bail!("`{}` failed ({status}); its output is above", describe(&command));
    }
    let object = target_dir.join(TARGET).join("release").join(PROGRAM_BINARY);
    ensure!(object.is_file(), "the build succeeded but left no {}", object.display());
    Ok(object)
}

/// A command with the user's environment minus what `cargo run` set for this process: the
/// same rule as failover-ctl/build.rs's `nested_command` (its doc says which variable broke
/// what). Variables that configure cargo for the user (home, network, registries, terminal)
/// stay.
fn nested_command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_outer_build_variable) {
            command.env_remove(name);
        }
    }
    command
}

fn is_outer_build_variable(name: &str) -> bool {
    const KEEP_PREFIXES: [&str; 6] = ["CARGO_HOME", "CARGO_NET_", "CARGO_HTTP_", "CARGO_REGISTRIES_", "CARGO_REGISTRY_", "CARGO_TERM_"];
    const REMOVE: [&str; 17] = [
        "CARGO", "RUSTC", "RUSTDOC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTC_LINKER", "RUSTFLAGS", "RUSTDOCFLAGS", "RUSTUP_TOOLCHAIN", "OUT_DIR", "TARGET", "HOST",
        "PROFILE", "OPT_LEVEL", "DEBUG", "NUM_JOBS", "LD_LIBRARY_PATH",
    ];
    if name.starts_with("CARGO_") || name.starts_with("__CARGO") {
        return !KEEP_PREFIXES.iter().any(|prefix| name.starts_with(prefix));
    }
    REMOVE.contains(&name)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// While alive, Ctrl-C (SIGINT) and SIGTERM no longer kill this process: they are noted, the
/// build (which gets Ctrl-C itself, from the terminal) ends, and the worktree is removed on the
/// way out. The previous handlers come back on drop.
struct InterruptGuard {
    previous: [(libc::c_int, libc::sigaction); 2],
}

impl InterruptGuard {
    fn install() -> Self {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let install = |signal| {
            // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which
            // is async-signal-safe; `previous` receives the old action.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = note_interrupt as *const () as libc::sighandler_t;
                let mut previous: libc::sigaction = std::mem::zeroed();
                libc::sigaction(signal, &action, &mut previous);
                (signal, previous)
            }
        };
        Self { previous: [install(libc::SIGINT), install(libc::SIGTERM)] }
    }

    fn interrupted(&self) -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        for (signal, previous) in &self.previous {
            // SAFETY: restores an action sigaction returned.
            unsafe { libc::sigaction(*signal, previous, std::ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_settings_match_failover_ctl() {
        let script = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../failover-ctl/build.rs")).unwrap();
        assert!(script.contains(&format!("const TOOLCHAIN: &str = \"{TOOLCHAIN}\";")));
        assert!(script.contains(&format!("const TARGET: &str = \"{TARGET}\";")));
        let flags = RUSTFLAGS.map(|flag| format!("\"{flag}\"")).join(", ");
        assert!(script.contains(&format!("const RUSTFLAGS: [&str; 2] = [{flags}];")), "failover-ctl/build.rs changed its flags: {flags}");
        assert!(script.contains("\"build-std=core\""));
        assert!(script.contains(&format!("\"{PROGRAM_BINARY}\"")));
    }

    #[test]
    fn only_dead_runs_worktrees_are_stale() {
        let names = ["100", "200", "300", "notes", "-1"].map(String::from);
        // 100 is alive, 200 is gone, 300 is this run.
        let found = stale(&names, 300, |pid| pid == 100);
        assert_eq!(found, ["200"]);
    }

    #[test]
    fn revision_names_that_git_could_misread_are_refused() {
        assert!(check_name("").is_err());
        assert!(check_name("  ").is_err());
        assert!(check_name("--output=/tmp/x").is_err());
        assert!(check_name("HEAD~20").is_ok());
        assert!(check_name("v1.0").is_ok());
    }

    #[test]
    fn a_bad_revision_is_a_clear_error() {
        let root = command::workspace_root().unwrap();
        let error = resolve(&root, "no-such-revision-anywhere").unwrap_err().to_string();
        assert!(error.contains("not a commit of this repository"), "{error}");
        let head = resolve(&root, "HEAD").unwrap();
        assert_eq!(head.len(), 40);
    }

    #[test]
    fn cargo_run_variables_do_not_reach_the_nested_build() {
        for name in ["CARGO", "CARGO_MANIFEST_DIR", "CARGO_PKG_NAME", "RUSTC", "LD_LIBRARY_PATH", "RUSTUP_TOOLCHAIN", "__CARGO_FIX_YOLO"] {
            assert!(is_outer_build_variable(name), "{name}");
        }
        for name in ["CARGO_HOME", "CARGO_NET_OFFLINE", "CARGO_TERM_COLOR", "PATH", "HOME", "RUSTUP_HOME"] {
            assert!(!is_outer_build_variable(name), "{name}");
        }
    }
}
