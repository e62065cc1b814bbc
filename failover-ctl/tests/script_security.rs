//! Script security end to end (issue 12): `failover-ctl check` and `failover-ctl run` refuse a
//! configuration whose exec program or own file others may change, naming file:line and the
//! path; a loaded configuration's exec probes run as `script_user`, or as their own `user`.
//! Real files in a private root-owned 0755 directory under `/run` (the temporary directory is
//! world-writable, which the rule refuses on the way to a program), removed on drop.

use std::{
    os::unix::fs::{chown, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use failover_ctl::{
    config::{self, ScriptUser},
    probe,
};

/// An interface that does not exist: were a refused file accepted by mistake, `run` would stop at
/// attaching rather than touch a real interface.
const HEAD: &str = "\
instance = \"script-security-test\"
interfaces = [\"fo-absent0\"]
[next_hop]
mac = \"02:00:00:00:00:01\"
[tunnel]
source_v4 = \"192.0.2.0/24\"
[[vip]]
name = \"web\"
address = \"203.0.113.1\"
port = 80
protocol = \"tcp\"
";

/// A backend (three lines) whose exec probe runs `program` with `extra` keys.
fn backend(address: &str, program: &Path, extra: &str) -> String {
    format!(
        "[[vip.backend]]\naddress = \"{address}\"\nprobe = {{ kind = \"exec\", argv = [\"{}\"]{extra} }}\n",
        program.display()
    )
}

/// A private directory, root's, mode 0755, under `/run`; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/run/failover-script-security-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        set_mode(&path, 0o755);
        Self(path)
    }

    fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        set_mode(&path, mode);
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `failover-ctl ARGUMENTS`, killed if it takes longer than ten seconds.
fn failover_ctl(arguments: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_failover-ctl"))
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("failover-ctl {arguments:?} did not end within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_refuses_a_world_writable_script_naming_file_line_and_path() {
    let scratch = Scratch::new();
    let script = scratch.file("check.sh", "#!/bin/sh\nexit 0\n", 0o777);
    let file = scratch.file("failover.toml", &format!("{HEAD}{}", backend("198.51.100.1", &script, "")), 0o644);
    let output = failover_ctl(&["check", &file.display().to_string()]);
    assert!(!output.status.success(), "check accepted it: {}", String::from_utf8_lossy(&output.stdout));
    let expected = format!(
        "{}:14: vip[0].backend[0].probe.argv: {} is writable by everyone (mode 0777)",
        file.display(),
        script.display()
    );
    assert!(stderr(&output).contains(&expected), "{expected:?} not in {}", stderr(&output));

    // The same file once the script is root's alone.
    set_mode(&script, 0o755);
    let output = failover_ctl(&["check", &file.display().to_string()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains(": ok (1 VIPs, 1 backends)"));
}

#[test]
fn check_refuses_a_configuration_others_may_write() {
    let scratch = Scratch::new();
    let script = scratch.file("check.sh", "#!/bin/sh\nexit 0\n", 0o755);
    let file = scratch.file("failover.toml", &format!("{HEAD}{}", backend("198.51.100.1", &script, "")), 0o664);
    chown(&file, None, Some(1000)).unwrap();
    let output = failover_ctl(&["check", &file.display().to_string()]);
    assert!(!output.status.success());
    let expected = format!("{0}:1: {0} is writable by group 1000 (mode 0664)", file.display());
    assert!(stderr(&output).contains(&expected), "{expected:?} not in {}", stderr(&output));
}

#[test]
fn run_refuses_to_start_with_a_script_others_may_change() {
    let scratch = Scratch::new();
    let scripts = scratch.0.join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    set_mode(&scripts, 0o775);
    chown(&scripts, None, Some(1000)).unwrap();
    let script = scripts.join("check.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    set_mode(&script, 0o755);
    let file = scratch.file("failover.toml", &format!("{HEAD}{}", backend("198.51.100.1", &script, "")), 0o644);
    let output = failover_ctl(&["run", "--config", &file.display().to_string()]);
    assert!(!output.status.success());
    let expected = format!(
        "{}:14: vip[0].backend[0].probe.argv: {} is writable by group 1000 (mode 0775) (on the way to {})",
        file.display(),
        scripts.display(),
        script.display()
    );
    assert!(stderr(&output).contains(&expected), "{expected:?} not in {}", stderr(&output));
}

#[tokio::test]
async fn exec_probes_run_as_script_user_or_their_own_user() {
    let scratch = Scratch::new();
    // Fails on purpose, so that the result's detail carries what it printed.
    let script = scratch.file("identity.sh", "#!/bin/sh\necho \"uid=$(id -u) gid=$(id -g)\" >&2\nexit 1\n", 0o755);
    let text = format!(
        "script_user = \"daemon\"\n{HEAD}{}{}",
        backend("198.51.100.1", &script, ""),
        backend("198.51.100.2", &script, ", user = \"nobody\"")
    );
    let file = scratch.file("failover.toml", &text, 0o644);
    let config = config::load(&file).unwrap();
    let backends = &config.vips[0].backends;
    for (backend, name) in backends.iter().zip(["daemon", "nobody"]) {
        let user = ScriptUser::lookup(name).unwrap().unwrap();
        let (spec, _) = probe::from_config(&backend.probe, backend.address).unwrap();
        let result = probe::probe_once(&spec, Duration::from_secs(5)).await;
        assert!(!result.success);
        let expected = format!("uid={} gid={}", user.uid, user.gid);
        assert!(result.detail.contains(&expected), "{name}: {expected:?} not in {}", result.detail);
    }
}
