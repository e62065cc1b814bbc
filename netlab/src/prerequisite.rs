//! What a test needs from the host (root, a program from a Debian package), and the one place
//! that decides whether a test without it skips or fails.
//!
//! A test skips only when it runs without root outside CI: it prints `skipped: not root (...)`
//! and appends a line to the file named by `FAILOVER_TEST_SKIP_LOG`, which `cargo xtask test`
//! counts and reports, so no skip passes silently. In CI (`CI` set) the same test fails, and as
//! root a missing program fails with its name and package: `cargo xtask test` installs them, so
//! a missing one is a broken machine, not a reason to pass.

use std::{
    env,
    ffi::OsStr,
    fs::OpenOptions,
    io::Write as _,
    path::{Path, PathBuf},
};

/// The environment variable naming the file skips are appended to.
pub const SKIP_LOG: &str = "FAILOVER_TEST_SKIP_LOG";

/// True when the test may go on as root. Without root: panics in CI, else prints why the test
/// skips, records the skip and returns false. `test_needs` says what root is needed for, e.g.
/// "namespaces, BPF".
pub fn root(test_needs: &str) -> bool {
    if is_root() {
        return true;
    }
    let reason = format!("not root ({test_needs})");
    if in_ci() {
        panic!("this test needs root ({test_needs}) and CI is set: run the tests as root");
    }
    skip(&reason);
    false
}

/// True when `program` (from the Debian package `package`) is on PATH. When it is missing: as
/// root or in CI, panics naming the program, the package and `cargo xtask doctor`; otherwise
/// skips as [`root`] does.
pub fn require_program(program: &str, package: &str) -> bool {
    if find_program(program).is_some() {
        return true;
    }
    if is_root() || in_ci() {
        panic!("{}", missing_program_message(program, package));
    }
    skip(&format!(
        "not root ({program} missing: Debian package {package})"
    ));
    false
}

/// The panic message for a missing program.
pub fn missing_program_message(program: &str, package: &str) -> String {
    format!(
        "`{program}` is not on PATH: install the Debian package {package} \
         (`cargo xtask test` installs it; `cargo xtask doctor` lists what is missing)"
    )
}

/// The path of `program` in one of PATH's directories, as `Command::new(program)` would find it.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    find_in(program, env::split_paths(&path))
}

/// The first `directory/program` that is an executable file.
pub fn find_in(program: &str, directories: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    directories
        .into_iter()
        .map(|directory| directory.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `CI` asks for strictness: set to anything but empty, `0` or `false`.
pub fn ci_value_is_set(value: Option<&OsStr>) -> bool {
    value.is_some_and(|value| !matches!(value.to_str(), Some("" | "0" | "false")))
}

fn in_ci() -> bool {
    ci_value_is_set(env::var_os("CI").as_deref())
}

/// Says why the current test skips, on stderr and, when `FAILOVER_TEST_SKIP_LOG` is set, in
/// that file (one line per skip; a failure to write it is reported, never ignored).
fn skip(reason: &str) {
    eprintln!("skipped: {reason}");
    let Some(log) = env::var_os(SKIP_LOG) else {
        return;
    };
    let line = skip_line(&current_test(), reason);
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        // One write call per line: appends from concurrent test processes do not interleave.
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(error) = written {
        panic!(
            "recording the skip in {} ({SKIP_LOG}): {error}",
            Path::new(&log).display()
        );
    }
}

/// One line of the skip log.
pub fn skip_line(test: &str, reason: &str) -> String {
    let reason = reason.replace('\n', " ");
    format!("{test}: skipped: {reason}\n")
}

/// `<test binary> <test name>`: libtest names each test's thread after the test.
fn current_test() -> String {
    let binary = env::current_exe()
        .ok()
        .and_then(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "unknown binary".to_owned());
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed test");
    format!("{binary} {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_counts_when_set_to_something() {
        assert!(!ci_value_is_set(None));
        assert!(!ci_value_is_set(Some(OsStr::new(""))));
        assert!(!ci_value_is_set(Some(OsStr::new("false"))));
        assert!(!ci_value_is_set(Some(OsStr::new("0"))));
        assert!(ci_value_is_set(Some(OsStr::new("true"))));
        assert!(ci_value_is_set(Some(OsStr::new("1"))));
    }

    #[test]
    fn skip_lines_are_single_lines() {
        assert_eq!(
            skip_line("daemon weights", "not root (namespaces)"),
            "daemon weights: skipped: not root (namespaces)\n"
        );
        assert_eq!(skip_line("t", "a\nb"), "t: skipped: a b\n");
    }

    #[test]
    fn missing_programs_are_named_with_their_package() {
        let message = missing_program_message("ethtool", "ethtool");
        assert!(message.contains("`ethtool`"), "{message}");
        assert!(message.contains("Debian package ethtool"), "{message}");
        assert!(message.contains("cargo xtask doctor"), "{message}");
    }

    #[test]
    fn finds_executables_only() {
        let directory = env::temp_dir().join(format!("netlab-find-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let plain = directory.join("plain");
        std::fs::write(&plain, "").unwrap();
        let tool = directory.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let found = find_in("tool", [PathBuf::from("/nonexistent"), directory.clone()]);
        let not_executable = find_in("plain", [directory.clone()]);
        std::fs::remove_dir_all(&directory).unwrap();
        assert_eq!(found, Some(tool));
        assert_eq!(not_executable, None);
    }
}
