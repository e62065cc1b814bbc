//! Build script: compiles the eBPF programs in failover-ebpf with nightly and bpf-linker, and puts the objects in OUT_DIR for `objects.rs` to embed.
//!
//! The eBPF crate needs a nightly toolchain (`-Z build-std=core` for `bpfel-unknown-none`), so it
//! is built by a nested cargo rather than as a dependency. The nested build runs on every change to
//! the eBPF or common sources, so a plain `cargo build` never embeds a stale object.

use std::{
    env,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// The binaries of failover-ebpf that `objects.rs` embeds; each is copied to `$OUT_DIR/<name>`.
const PROGRAMS: [&str; 2] = ["failover", "failover-decap"];

const TOOLCHAIN: &str = "nightly";
const TARGET: &str = "bpfel-unknown-none";
const LINKER: &str = "bpf-linker";
const LINKER_VERSION: &str = "0.10.4";

/// Rust flags of the nested build, joined by 0x1f as CARGO_ENCODED_RUSTFLAGS expects. Debug info
/// lets bpf-linker emit BTF (`--btf`), which BTF maps (`#[btf_map]`) need and which gives the
/// verifier and bpftool type and line information; aya 0.14 loads such objects.
const RUSTFLAGS: [&str; 2] = ["-Cdebuginfo=2", "-Clink-arg=--btf"];

fn main() {
    // Print the error alone: returning it from `main` adds a backtrace whenever RUST_BACKTRACE is
    // set, which buries the one line that says what to do.
    if let Err(error) = run() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR is not set")?);
    let root = manifest_dir
        .parent()
        .context("failover-ctl has no parent directory")?;
    let ebpf_dir = root.join("failover-ebpf");
    let common_dir = root.join("failover-common");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR is not set")?);

    watch(&ebpf_dir, &common_dir);
    check_toolchain()?;

    // A target directory of its own: the outer cargo holds the lock on its own one for as long as
    // this script runs, so sharing it would deadlock.
    let target_dir = out_dir.join("ebpf-target");
    build(&ebpf_dir, &target_dir)?;

    let built_dir = target_dir.join(TARGET).join("release");
    for program in PROGRAMS {
        let source = built_dir.join(program);
        let destination = out_dir.join(program);
        fs::copy(&source, &destination).with_context(|| {
            format!(
                "failed to copy eBPF object {} to {} (does failover-ebpf still have a binary named `{program}`?)",
                source.display(),
                destination.display()
            )
        })?;
    }
    Ok(())
}

/// Tells cargo to run this script again when anything the eBPF objects are built from changes,
/// and only then: an unchanged tree skips the nested build entirely.
fn watch(ebpf_dir: &Path, common_dir: &Path) {
    let mut paths = vec![
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ];
    // Only when present: cargo treats a missing watched file as changed on every build.
    let lock = ebpf_dir.join("Cargo.lock");
    if lock.exists() {
        paths.push(lock);
    }
    for path in paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Fails with one message naming what is missing and how to install it, before the nested build
/// can fail with a less helpful one.
fn check_toolchain() -> Result<()> {
    let mut missing = Vec::new();
    match nightly_sysroot() {
        None => missing.push("the nightly toolchain (and its rust-src component)".to_owned()),
        Some(sysroot) => {
            // `-Z build-std` compiles `core` from these sources.
            if !sysroot
                .join("lib/rustlib/src/rust/library/core/Cargo.toml")
                .is_file()
            {
                missing.push("the rust-src component of the nightly toolchain".to_owned());
            }
        }
    }
    match linker_version() {
        None => missing.push(format!("{LINKER} on PATH")),
        Some(version) if version != LINKER_VERSION => {
            println!("cargo:warning={LINKER} {version} found, but failover is built and tested with {LINKER_VERSION}; `cargo xtask build-ebpf` installs it");
        }
        Some(_) => {}
    }
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "cannot build the eBPF programs: missing {}.\n\
         Run `cargo xtask build-ebpf`, which installs them, or by hand:\n    \
         rustup toolchain install {TOOLCHAIN}\n    \
         rustup component add rust-src --toolchain {TOOLCHAIN}\n    \
         cargo install {LINKER} --version {LINKER_VERSION} --locked",
        missing.join(" and ")
    )
}

/// The nightly toolchain's sysroot, or `None` when rustup or the toolchain is missing.
fn nightly_sysroot() -> Option<PathBuf> {
    let output = nested_command("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        // Report a missing toolchain rather than have rustup download one from a build script.
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let sysroot = String::from_utf8(output.stdout).ok()?;
    Some(PathBuf::from(sysroot.trim()))
}

/// The version bpf-linker reports (`bpf-linker 0.10.4`), or `None` when it is not on PATH.
fn linker_version() -> Option<String> {
    let output = nested_command(LINKER).arg("--version").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    text.split_whitespace().nth(1).map(str::to_owned)
}

fn build(ebpf_dir: &Path, target_dir: &Path) -> Result<()> {
    let mut command = nested_command("rustup");
    // `rustup run` rather than `cargo +nightly`: the `cargo` first on PATH is not always
    // rustup's proxy, and only the proxy understands `+nightly`.
    command
        .args([
            "run",
            TOOLCHAIN,
            "cargo",
            "build",
            "--release",
            "--bins",
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(ebpf_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS.join("\x1f"))
        .env("RUSTUP_AUTO_INSTALL", "0");
    // Honour the outer `-j`; the nested cargo cannot share the outer jobserver (see nested_command).
    if let Some(jobs) = env::var_os("NUM_JOBS") {
        command.arg("--jobs").arg(jobs);
    }

    let text = describe(&command);
    let output = command
        .output()
        .with_context(|| format!("failed to start `{text}`"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        eprintln!("{stderr}");
        bail!(
            "building the eBPF programs failed ({}); the nested cargo's output is above.\n\
             command (in {}): {text}",
            output.status,
            ebpf_dir.display()
        );
    }
    forward_warnings(&stderr);
    Ok(())
}

/// `command`'s program and arguments as one would type them (its Debug form lists every removed
/// environment variable).
fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy()];
    words.extend(command.get_args().map(OsStr::to_string_lossy));
    words.join(" ")
}

/// Cargo hides a successful build script's output, so repeat the nested build's compiler
/// warnings, each with its location, as warnings of this package.
fn forward_warnings(stderr: &str) {
    let mut lines = stderr.lines().peekable();
    while let Some(line) = lines.next() {
        // Skip cargo's closing summary ("warning: `failover-ebpf` (bin ...) generated 1 warning").
        if !line.starts_with("warning") || line.starts_with("warning: `") {
            continue;
        }
        let location = lines
            .next_if(|next| next.trim_start().starts_with("-->"))
            .map(str::trim)
            .unwrap_or_default();
        println!("cargo:warning=failover-ebpf: {line} {location}");
    }
}

/// A command whose environment is the user's, without what the outer cargo set for this script.
///
/// Those variables describe the outer, host build. Seen to break the nested build:
/// - RUSTC: cargo then compiles with the outer stable rustc, and `-Z build-std` looks for rust-src
///   in the stable sysroot ("library/Cargo.lock does not exist");
/// - RUSTC_WORKSPACE_WRAPPER (set by `cargo clippy`): the stable clippy-driver reports the
///   stable sysroot, with the same result;
/// - CARGO_MAKEFLAGS: the outer jobserver, whose file descriptors are closed here ("failed to
///   connect to jobserver", a warning on every build).
///
/// Removed because they would select or configure the wrong thing: RUSTUP_TOOLCHAIN and RUSTDOC
/// (the outer toolchain), RUSTC_WRAPPER and RUSTC_LINKER (chosen for the host build), RUSTFLAGS,
/// CARGO_ENCODED_RUSTFLAGS and CARGO_BUILD_RUSTFLAGS (host flags), CARGO_TARGET_DIR (the locked
/// outer directory), LD_LIBRARY_PATH (the outer target directory and stable's libLLVM:
/// bpf-linker loads the first libLLVM on that path; rustup puts nightly's first, and stable's
/// must not be a fallback), and every other CARGO_* as well as OUT_DIR, TARGET, HOST, PROFILE,
/// OPT_LEVEL, DEBUG and NUM_JOBS: facts about this host package that nested build scripts would
/// see wherever the nested cargo sets none (CARGO_CFG_UNIX, for one, which bpf lacks).
///
/// Variables that configure cargo for the user (CARGO_HOME, network, registries, terminal) stay.
fn nested_command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if is_outer_build_variable(name) {
            command.env_remove(name);
        }
    }
    command
}

fn is_outer_build_variable(name: &str) -> bool {
    const KEEP_PREFIXES: [&str; 6] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
    ];
    const REMOVE: [&str; 17] = [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTUP_TOOLCHAIN",
        "OUT_DIR",
        "TARGET",
        "HOST",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "LD_LIBRARY_PATH",
    ];
    if name.starts_with("CARGO_") || name.starts_with("__CARGO") {
        return !KEEP_PREFIXES.iter().any(|prefix| name.starts_with(prefix));
    }
    REMOVE.contains(&name)
}
