//! Program probe: a backend is healthy when a configured program exits with status 0.
//!
//! The program runs as its script user (uid, primary gid, no supplementary groups) and leads a
//! process group of its own; when the attempt ends, however it ends (exit, failure, timeout),
//! the whole group is killed, so a script that leaves `sleep 1000 &` behind leaves nothing.

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    io::{unix::AsyncFd, AsyncRead, AsyncReadExt},
    process::{Child, Command},
};

use super::ProbeError;
use crate::config::{effective_uid, ScriptUser};

/// How much of the program's standard error is kept for the result's detail.
const STDERR_LIMIT: usize = 256;

/// How long standard error is still read after the program ended and its group was killed. A
/// descendant that left the group (setsid) and holds the pipe would otherwise keep the attempt
/// open until its timeout.
const STDERR_GRACE: Duration = Duration::from_millis(100);

/// Runs `argv` directly, never through a shell, as `user`; the caller bounds it with a timeout.
///
/// Dropping this future (the timeout) kills the program's process group, so nothing it started
/// outlives its attempt.
pub async fn probe(argv: &[String], user: &ScriptUser) -> Result<String, ProbeError> {
    let Some((program, arguments)) = argv.split_first() else {
        return Err(ProbeError::EmptyCommand);
    };
    let start_failed = |source| ProbeError::Start {
        program: program.clone(),
        source,
    };
    let mut command = Command::new(program);
    command
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    run_as(&mut command, user);
    let mut attempt = Attempt::start(&mut command).map_err(start_failed)?;
    // Reading standard error while waiting keeps a talkative program from blocking on a full pipe.
    let reader = read_head(attempt.child.stderr.take());
    tokio::pin!(reader);
    let wait_failed = |source| ProbeError::Wait {
        program: program.clone(),
        source,
    };
    let stderr = tokio::select! {
        exited = attempt.exited() => {
            exited.map_err(wait_failed)?;
            attempt.kill_group();
            tokio::time::timeout(STDERR_GRACE, &mut reader).await.unwrap_or_default()
        }
        stderr = &mut reader => {
            attempt.exited().await.map_err(wait_failed)?;
            attempt.kill_group();
            stderr
        }
    };
    let status = attempt.reap().await.map_err(wait_failed)?;
    if !status.success() {
        return Err(ProbeError::Exit {
            program: program.clone(),
            status,
            stderr,
        });
    }
    Ok(format!("{program} exited with status 0"))
}

/// Makes the child take `user`'s identity before exec: supplementary groups cleared, then the
/// primary gid, then the uid (the order in which each step is still permitted). A daemon that is
/// not root runs the program as itself when `user` is who it runs as; otherwise the switch fails
/// and the attempt with it (the configuration refuses that case at load). Also for the
/// elections' notify programs.
pub(crate) fn run_as(command: &mut Command, user: &ScriptUser) {
    let euid = effective_uid();
    if euid != 0 && user.uid == euid {
        return;
    }
    let (uid, gid) = (user.uid, user.gid);
    let check = |result: libc::c_int| if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
    // SAFETY: the closure runs in the forked child before exec and makes only async-signal-safe
    // system calls; it allocates nothing and touches no lock.
    unsafe {
        command.pre_exec(move || {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))
        });
    }
}

/// A started program, leader of its own process group (whose id is its pid), and a pidfd that
/// becomes readable when it exits. Until the program is reaped its pid, and so the group id,
/// cannot be reused, so killing the group never reaches a stranger; after reaping, it is not
/// killed again.
struct Attempt {
    child: Child,
    exit: AsyncFd<OwnedFd>,
    /// The group to kill on drop; `None` once the leader is reaped.
    group: Option<libc::pid_t>,
}

impl Attempt {
    fn start(command: &mut Command) -> io::Result<Self> {
        let child = command.spawn()?;
        let pid = child.id().ok_or_else(|| io::Error::other("the program was reaped before its pid was read"))?;
        let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
        // SAFETY: the AsyncFd owns the descriptor, which nothing else closes or replaces.
        match pidfd_open(pid).and_then(|pidfd| unsafe { AsyncFd::register(pidfd) }.map_err(io::Error::from)) {
            Ok(exit) => Ok(Self { child, exit, group: Some(pid) }),
            Err(error) => {
                // The child, not yet reaped, still holds the group id.
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                Err(error)
            }
        }
    }

    /// Waits until the program has exited, without reaping it.
    async fn exited(&self) -> io::Result<()> {
        self.exit.readable().await.map(|_| ())
    }

    fn kill_group(&self) {
        if let Some(group) = self.group {
            // SAFETY: kill has no memory-safety preconditions; ESRCH (the group is empty) is fine.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
    }

    /// Reaps the exited program, after which its group is no longer ours to kill.
    async fn reap(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await;
        self.group = None;
        status
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        // Before the child's own drop (kill_on_drop) sends SIGKILL to the leader alone.
        self.kill_group();
    }
}

/// A pidfd for `pid` (Linux 5.3): readable when the process exits, and it keeps no zombie alive.
fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The first [`STDERR_LIMIT`] bytes of `stream`, the rest read and thrown away.
async fn read_head(stream: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut head = Vec::with_capacity(STDERR_LIMIT);
    let _ = (&mut stream)
        .take(STDERR_LIMIT as u64)
        .read_to_end(&mut head)
        .await;
    let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&head).trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, SocketAddr},
        path::{Path, PathBuf},
        time::{Duration, Instant},
    };

    use crate::config::ScriptUser;
    use crate::probe::{probe_once, ExecSpec, ProbeSpec};

    const TIMEOUT: Duration = Duration::from_millis(300);

    fn user(name: &str) -> ScriptUser {
        ScriptUser::lookup(name).unwrap().unwrap_or_else(|| panic!("no user {name} on this host"))
    }

    fn spec_as(user: ScriptUser, argv: &[&str]) -> ProbeSpec {
        ProbeSpec::Exec(ExecSpec {
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            argv: argv.iter().map(|&argument| argument.to_owned()).collect(),
            user,
        })
    }

    /// A probe as the default script user.
    fn spec(argv: &[&str]) -> ProbeSpec {
        spec_as(user("nobody"), argv)
    }

    /// A file name in the temporary directory, unique to this test run and call; removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(what: &str) -> Self {
            static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Self(std::env::temp_dir().join(format!("failover-exec-{what}-{}-{n}", std::process::id())))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Whether process `pid` is still running (not gone, not a zombie awaiting its reaper).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|text| {
            !text.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    }

    /// The running processes whose process group is `group`.
    fn members(group: u32) -> Vec<u32> {
        let mut members = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // After "comm)": state, ppid, pgrp.
            let fields: Vec<&str> = text.rsplit(')').next().unwrap_or("").split_whitespace().collect();
            if fields.first() != Some(&"Z") && fields.get(2).and_then(|field| field.parse().ok()) == Some(group) {
                members.push(pid);
            }
        }
        members
    }

    /// Waits (bounded) until neither the sleeper nor any member of the attempt's group runs.
    async fn assert_group_gone(pids: &Path) {
        let text = std::fs::read_to_string(pids).unwrap();
        let mut numbers = text.split_whitespace().map(|number| number.parse::<u32>().unwrap());
        let (group, sleeper) = (numbers.next().unwrap(), numbers.next().unwrap());
        let start = Instant::now();
        while running(sleeper) || !members(group).is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "sleeper {sleeper} running: {}, group {group}: {:?}",
                running(sleeper),
                members(group)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn true_succeeds() {
        let result = probe_once(&spec(&["true"]), Duration::from_secs(5)).await;
        assert!(result.success, "{}", result.detail);
    }

    #[tokio::test]
    async fn false_fails() {
        let result = probe_once(&spec(&["false"]), Duration::from_secs(5)).await;
        assert!(!result.success);
        assert!(result.detail.contains("false"), "{}", result.detail);
    }

    #[tokio::test]
    async fn standard_error_is_kept_in_the_detail() {
        let result = probe_once(
            &spec(&["ls", "/nonexistent-failover-probe-path"]),
            Duration::from_secs(5),
        )
        .await;
        assert!(!result.success);
        assert!(
            result.detail.contains("nonexistent-failover-probe-path"),
            "{}",
            result.detail
        );
    }

    #[tokio::test]
    async fn missing_program_fails() {
        let result = probe_once(&spec(&["/nonexistent/failover-check"]), TIMEOUT).await;
        assert!(!result.success);
        assert!(
            result.detail.contains("failover-check"),
            "{}",
            result.detail
        );
    }

    #[tokio::test]
    async fn empty_command_fails() {
        let result = probe_once(&spec(&[]), TIMEOUT).await;
        assert!(!result.success);
    }

    #[tokio::test]
    async fn a_hanging_program_is_killed_at_the_timeout() {
        let start = Instant::now();
        let result = probe_once(&spec(&["sleep", "10"]), TIMEOUT).await;
        let elapsed = start.elapsed();
        assert!(!result.success);
        assert!(elapsed < TIMEOUT * 5, "{elapsed:?}");
    }

    /// The identity the program sees: uid, gid, and how many supplementary groups it kept.
    const IDENTITY: &str = "set -- $(sed -n 's/^Groups://p' /proc/self/status); \
                            echo \"uid=$(id -u) gid=$(id -g) supplementary=$#\" >&2; exit 1";

    #[tokio::test]
    async fn the_program_runs_as_its_user_without_supplementary_groups() {
        // The test process gets a supplementary group, so that a child keeping it would show.
        let group: libc::gid_t = 4242;
        // SAFETY: a one-element array, valid for the call.
        assert_eq!(unsafe { libc::setgroups(1, &group) }, 0, "{}", std::io::Error::last_os_error());
        for name in ["nobody", "daemon", "root"] {
            let user = user(name);
            let expected = format!("uid={} gid={} supplementary=0", user.uid, user.gid);
            let result = probe_once(&spec_as(user, &["sh", "-c", IDENTITY]), Duration::from_secs(5)).await;
            assert!(!result.success);
            assert!(result.detail.contains(&expected), "{name}: expected {expected:?} in {}", result.detail);
        }
    }

    #[tokio::test]
    async fn the_killed_program_does_not_outlive_its_attempt() {
        // The shell (test only) writes its process id, then becomes `sleep` under the same id.
        let pid_file = Scratch::new("pid");
        let script = format!("echo $$ > '{}'; exec sleep 10", pid_file.0.display());
        let result = probe_once(&spec(&["sh", "-c", &script]), TIMEOUT).await;
        assert!(!result.success);
        let pid: u32 = std::fs::read_to_string(&pid_file.0).unwrap().trim().parse().unwrap();
        let start = Instant::now();
        while running(pid) {
            assert!(start.elapsed() < TIMEOUT * 5, "{pid} still running");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_child_left_behind_by_a_successful_program_is_killed() {
        let pids = Scratch::new("group");
        // $$ is the shell, leader of the attempt's group; $! the sleeper it leaves behind.
        let script = format!("sleep 1000 & echo \"$$ $!\" > '{}'; exit 0", pids.0.display());
        let start = Instant::now();
        let result = probe_once(&spec(&["sh", "-c", &script]), Duration::from_secs(3)).await;
        assert!(result.success, "{}", result.detail);
        // The sleeper holds standard error: the attempt ends with the program, not at its
        // timeout (3 s), since killing the group closes the pipe.
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
        assert_group_gone(&pids.0).await;
    }

    #[tokio::test]
    async fn a_child_of_a_program_killed_at_its_timeout_is_killed() {
        let pids = Scratch::new("group");
        // The sleeper closes the pipe (standard error), so only the group kill can end it.
        let script = format!("sleep 1000 2>&- & echo \"$$ $!\" > '{}'; wait", pids.0.display());
        let start = Instant::now();
        let result = probe_once(&spec(&["sh", "-c", &script]), TIMEOUT).await;
        assert!(!result.success);
        assert!(start.elapsed() < TIMEOUT * 3, "{:?}", start.elapsed());
        assert_group_gone(&pids.0).await;
    }

    #[tokio::test]
    async fn a_failing_program_leaves_no_child_either() {
        let pids = Scratch::new("group");
        let script = format!("sleep 1000 2>&- & echo \"$$ $!\" > '{}'; exit 3", pids.0.display());
        let result = probe_once(&spec(&["sh", "-c", &script]), Duration::from_secs(3)).await;
        assert!(!result.success);
        assert!(result.detail.contains("exit status: 3"), "{}", result.detail);
        assert_group_gone(&pids.0).await;
    }
}
