//! Tests of who exec probes and notify programs run as and of what `load` checks on the host: real files with real
//! owners and modes (the suite runs as root), in a private directory under `/run` (root's, 0755,
//! not world-writable like the temporary directory), removed on drop.

use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{tests::BASE, *};

/// Eight lines (7 to 14 after [`BASE`]): a VIP whose backend's exec probe (line 14) is `probe`.
fn vip(probe: &str) -> String {
    format!(
        "[[vip]]\nname = \"web\"\naddress = \"203.0.113.1\"\nport = 80\nprotocol = \"tcp\"\n\
         [[vip.backend]]\naddress = \"198.51.100.1\"\nprobe = {{ kind = \"exec\", {probe} }}\n"
    )
}

/// A file using `program` in its one exec probe.
fn config_running(program: &Path) -> String {
    format!("{BASE}{}", vip(&format!("argv = [\"{}\", \"--flag\"]", program.display())))
}

/// A private directory owned by root, mode 0755, under `/run`; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        Self::under(Path::new("/run"))
    }

    fn under(parent: &Path) -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("failover-security-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        set_mode(&path, 0o755);
        Self(path)
    }

    fn directory(&self, name: &str, mode: u32) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir(&path).unwrap();
        set_mode(&path, mode);
        path
    }

    fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        set_mode(&path, mode);
        path
    }

    /// An executable script at `name`, mode `mode`.
    fn script(&self, name: &str, mode: u32) -> PathBuf {
        self.file(name, "#!/bin/sh\nexit 0\n", mode)
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

fn user(name: &str) -> ScriptUser {
    ScriptUser::lookup(name).unwrap().unwrap()
}

/// The problems `load` reports for `file`.
fn load_problems(file: &Path) -> Vec<String> {
    match load(file) {
        Ok(config) => panic!("expected an error, loaded {config:?}"),
        Err(ConfigError::Invalid { problems }) => problems.iter().map(Problem::to_string).collect(),
        Err(error) => panic!("unexpected error {error}"),
    }
}

/// The one exec probe of a loaded file: its argv and user.
fn exec_probe(config: &Config) -> (Vec<String>, ScriptUser) {
    match &config.vips[0].backends[0].probe.check {
        Check::Exec { argv, user } => (argv.clone(), user.clone()),
        other => panic!("not an exec probe: {other:?}"),
    }
}

#[test]
fn a_root_owned_script_on_a_root_only_path_loads_and_runs_as_nobody() {
    let scratch = Scratch::new();
    let script = scratch.script("check.sh", 0o755);
    let file = scratch.file("failover.toml", &config_running(&script), 0o644);
    let config = load(&file).unwrap();
    assert_eq!(config.script_user, "nobody");
    let (argv, runs_as) = exec_probe(&config);
    assert_eq!(argv, [script.display().to_string(), "--flag".to_owned()]);
    assert_eq!(runs_as, user("nobody"));
}

#[test]
fn a_root_group_may_write() {
    let scratch = Scratch::new();
    let directory = scratch.directory("scripts", 0o775);
    let script = directory.join("check.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    set_mode(&script, 0o775);
    let file = scratch.file("failover.toml", &config_running(&script), 0o664);
    load(&file).unwrap();
}

#[test]
fn a_world_writable_script_is_refused_with_its_line_and_path() {
    let scratch = Scratch::new();
    let script = scratch.script("check.sh", 0o777);
    let file = scratch.file("failover.toml", &config_running(&script), 0o644);
    assert_eq!(
        load_problems(&file),
        [format!(
            "{}:14: vip[0].backend[0].probe.argv: {} is writable by everyone (mode 0777); only root may be able \
             to change it",
            file.display(),
            script.display()
        )]
    );
}

#[test]
fn a_script_of_a_group_other_than_root_that_may_write_it_is_refused() {
    let scratch = Scratch::new();
    let script = scratch.script("check.sh", 0o775);
    chown(&script, None, Some(1000)).unwrap();
    let file = scratch.file("failover.toml", &config_running(&script), 0o644);
    let problems = load_problems(&file);
    let expected = format!("{} is writable by group 1000 (mode 0775)", script.display());
    assert!(problems[0].contains(&expected), "{problems:?}");
}

#[test]
fn a_script_owned_by_another_user_is_refused_even_read_only() {
    let scratch = Scratch::new();
    let script = scratch.script("check.sh", 0o555);
    chown(&script, Some(1000), None).unwrap();
    let file = scratch.file("failover.toml", &config_running(&script), 0o644);
    let problems = load_problems(&file);
    let expected = format!("{} belongs to uid 1000, not root (mode 0555)", script.display());
    assert!(problems[0].contains(&expected), "{problems:?}");
}

#[test]
fn a_group_writable_directory_on_the_path_is_refused() {
    let scratch = Scratch::new();
    let directory = scratch.directory("scripts", 0o775);
    chown(&directory, None, Some(1000)).unwrap();
    let script = directory.join("check.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    set_mode(&script, 0o755);
    let file = scratch.file("failover.toml", &config_running(&script), 0o644);
    let expected = format!(
        "{}:14: vip[0].backend[0].probe.argv: {} is writable by group 1000 (mode 0775) (on the way to {}); only \
         root may be able to change it",
        file.display(),
        directory.display(),
        script.display()
    );
    assert_eq!(load_problems(&file), [expected]);
}

#[test]
fn a_sticky_world_writable_directory_is_refused_on_the_way_to_a_script() {
    let scratch = Scratch::new();
    let shared = scratch.directory("shared", 0o1777);
    let inner = shared.join("scripts");
    std::fs::create_dir(&inner).unwrap();
    set_mode(&inner, 0o755);
    let script = inner.join("check.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    set_mode(&script, 0o755);
    let file = scratch.file("failover.toml", &config_running(&script), 0o644);
    let problems = load_problems(&file);
    let expected = format!(
        "{} is writable by everyone (mode 1777, the sticky bit notwithstanding: the program runs long after this check)",
        shared.display()
    );
    assert!(problems[0].contains(&expected), "{problems:?}");
}

#[test]
fn a_configuration_under_the_sticky_temporary_directory_loads() {
    let temporary = std::env::temp_dir();
    let mode = std::fs::metadata(&temporary).unwrap().permissions().mode();
    assert_eq!(mode & 0o1002, 0o1002, "{} is expected sticky and world-writable", temporary.display());
    let scripts = Scratch::new();
    let script = scripts.script("check.sh", 0o755);
    let scratch = Scratch::under(&temporary);
    let file = scratch.file("failover.toml", &config_running(&script), 0o644);
    load(&file).unwrap();
}

#[test]
fn a_configuration_others_may_write_is_refused_at_line_one() {
    let scratch = Scratch::new();
    let script = scratch.script("check.sh", 0o755);
    let file = scratch.file("failover.toml", &config_running(&script), 0o664);
    chown(&file, None, Some(1000)).unwrap();
    assert_eq!(
        load_problems(&file),
        [format!(
            "{0}:1: {0} is writable by group 1000 (mode 0664); only root may be able to change it",
            file.display()
        )]
    );
    set_mode(&file, 0o646);
    chown(&file, None, Some(0)).unwrap();
    let problems = load_problems(&file);
    assert!(problems[0].contains("is writable by everyone (mode 0646)"), "{problems:?}");
}

#[test]
fn a_configuration_in_a_directory_others_may_write_is_refused() {
    let scratch = Scratch::new();
    let script = scratch.script("check.sh", 0o755);
    let directory = scratch.directory("etc", 0o757);
    let file = directory.join("failover.toml");
    std::fs::write(&file, config_running(&script)).unwrap();
    set_mode(&file, 0o644);
    let problems = load_problems(&file);
    let expected = format!("{}:1: {} is writable by everyone (mode 0757) (on the way to", file.display(), directory.display());
    assert!(problems[0].starts_with(&expected), "{problems:?}");
}

#[test]
fn a_symbolic_link_is_checked_where_it_leads() {
    let scratch = Scratch::new();
    let unsafe_directory = scratch.directory("unsafe", 0o777);
    let target = unsafe_directory.join("check.sh");
    std::fs::write(&target, "#!/bin/sh\n").unwrap();
    set_mode(&target, 0o755);
    let link = scratch.0.join("check.sh");
    // Relative, through `..`: resolved against the link's own directory.
    symlink(Path::new("../").join(scratch.0.file_name().unwrap()).join("unsafe/check.sh"), &link).unwrap();
    let file = scratch.file("failover.toml", &config_running(&link), 0o644);
    let problems = load_problems(&file);
    let expected = format!("{} is writable by everyone (mode 0777) (on the way to {})", unsafe_directory.display(), link.display());
    assert!(problems[0].contains(&expected), "{problems:?}");
    set_mode(&unsafe_directory, 0o755);
    let config = load(&file).unwrap();
    // The probe runs the path as written; the link and its target were both checked.
    assert_eq!(exec_probe(&config).0[0], link.display().to_string());
}

#[test]
fn a_bare_program_name_runs_the_file_path_finds() {
    let scratch = Scratch::new();
    let file = scratch.file("failover.toml", &format!("{BASE}{}", vip("argv = [\"true\"]")), 0o644);
    let config = load(&file).unwrap();
    let program = PathBuf::from(&exec_probe(&config).0[0]);
    assert!(program.is_absolute() && program.ends_with("true"), "{}", program.display());
    assert!(program.is_file());
}

#[test]
fn a_program_that_cannot_be_found_is_refused() {
    let scratch = Scratch::new();
    let cases = [
        ("argv = [\"/nonexistent/failover-check\"]", "/nonexistent does not exist"),
        ("argv = [\"failover-no-such-program\"]", "program \"failover-no-such-program\" is not found in PATH"),
        ("argv = [\"scripts/check.sh\"]", "program \"scripts/check.sh\" is a relative path"),
    ];
    for (probe, expected) in cases {
        let file = scratch.file("failover.toml", &format!("{BASE}{}", vip(probe)), 0o644);
        let problems = load_problems(&file);
        let prefix = format!("{}:14: vip[0].backend[0].probe.argv: {expected}", file.display());
        assert!(problems.len() == 1 && problems[0].starts_with(&prefix), "{prefix:?} not in {problems:?}");
    }
}

#[test]
fn a_program_its_user_cannot_run_is_refused() {
    let scratch = Scratch::new();
    let private = scratch.script("private.sh", 0o700);
    let file = scratch.file("failover.toml", &config_running(&private), 0o644);
    let problems = load_problems(&file);
    let expected = format!("user \"nobody\" (uid 65534, gid 65534) cannot execute {} (mode 0700)", private.display());
    assert!(problems[0].contains(&expected), "{problems:?}");

    let unreadable = scratch.script("unreadable.sh", 0o711);
    let file = scratch.file("failover.toml", &config_running(&unreadable), 0o644);
    let problems = load_problems(&file);
    assert!(problems[0].contains("cannot read the script"), "{problems:?}");

    let closed = scratch.directory("closed", 0o700);
    let script = closed.join("check.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    set_mode(&script, 0o755);
    let file = scratch.file("failover.toml", &config_running(&script), 0o644);
    let problems = load_problems(&file);
    let expected = format!("cannot enter {} (mode 0700) on the way to {}", closed.display(), script.display());
    assert!(problems[0].contains(&expected), "{problems:?}");

    // Root may run what nobody may not.
    let text = format!("script_user = \"root\"\n{}", config_running(&private));
    let file = scratch.file("failover.toml", &text, 0o644);
    assert_eq!(exec_probe(&load(&file).unwrap()).1, user("root"));
}

#[test]
fn an_exec_probe_of_an_election_track_is_checked_too() {
    let scratch = Scratch::new();
    let script = scratch.script("check.sh", 0o777);
    let text = format!(
        "{BASE}{}[[election]]\nname = \"edge\"\ninterface = \"eth0\"\nvrid = 1\naddresses = [\"192.0.2.100\"]\n\
         vips = [\"web\"]\n[[election.track]]\naddress = \"192.0.2.1\"\nprobe = {{ kind = \"exec\", argv = [\"{}\"] }}\n",
        vip("argv = [\"true\"]"),
        script.display()
    );
    let file = scratch.file("failover.toml", &text, 0o644);
    let problems = load_problems(&file);
    let expected = format!("{}:23: election[0].track[0].probe.argv: {} is writable by everyone", file.display(), script.display());
    assert!(problems.len() == 1 && problems[0].starts_with(&expected), "{expected:?} not in {problems:?}");
}

#[test]
fn a_probe_user_overrides_script_user() {
    let text = format!(
        "script_user = \"daemon\"\n{BASE}{}[[vip.backend]]\naddress = \"198.51.100.2\"\n\
         probe = {{ kind = \"exec\", argv = [\"true\"], user = \"nobody\" }}\n",
        vip("argv = [\"true\"]")
    );
    let config = parse(&text, "test.toml").unwrap();
    assert_eq!(config.script_user, "daemon");
    let users: Vec<ScriptUser> = config.vips[0]
        .backends
        .iter()
        .map(|backend| match &backend.probe.check {
            Check::Exec { user, .. } => user.clone(),
            other => panic!("not an exec probe: {other:?}"),
        })
        .collect();
    assert_eq!(users, [user("daemon"), user("nobody")]);
}

#[test]
fn an_unknown_user_is_refused_with_its_line() {
    let global = format!("script_user = \"failover-no-such-user\"\n{BASE}{}", vip("argv = [\"true\"]"));
    assert_eq!(
        super::tests::problems(&global),
        ["test.toml:1: script_user: no user \"failover-no-such-user\" on this host"]
    );
    let own = format!("{BASE}{}", vip("argv = [\"true\"], user = \"failover-no-such-user\""));
    assert_eq!(
        super::tests::problems(&own),
        ["test.toml:14: vip[0].backend[0].probe.user: no user \"failover-no-such-user\" on this host"]
    );
}

#[test]
fn a_daemon_that_is_not_root_runs_programs_only_as_itself() {
    let scratch = Scratch::new();
    let script = scratch.script("check.sh", 0o755);
    let path = scratch.file("failover.toml", &config_running(&script), 0o644);
    let mut config = parse(&config_running(&script), "failover.toml").unwrap();
    let problems = security::check(&mut config, &path, 1000);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "vip[0].backend[0].probe.user");
    assert!(
        problems[0].1.starts_with("the program would run as \"nobody\" (uid 65534), but failover-ctl runs as uid 1000"),
        "{problems:?}"
    );
    // The user it runs as: nothing to switch, nothing to refuse.
    assert_eq!(security::check(&mut config, &path, 65534), []);
}

/// A file whose group runs `program` as its notify (line 21), with `extra` lines after it.
fn config_notifying(program: &Path, extra: &str) -> String {
    format!(
        "{BASE}[[vip]]\nname = \"web\"\naddress = \"203.0.113.1\"\nport = 80\nprotocol = \"tcp\"\n\
         [[vip.backend]]\naddress = \"198.51.100.1\"\nprobe = {{ kind = \"tcp\" }}\n\
         [[election]]\nname = \"edge\"\ninterface = \"eth1\"\nvrid = 51\naddresses = [\"10.0.0.1\"]\nvips = [\"web\"]\n\
         notify = [\"{}\", \"--flag\"]\n{extra}",
        program.display()
    )
}

#[test]
fn a_notify_program_runs_as_the_script_user_or_its_own() {
    let scratch = Scratch::new();
    let script = scratch.script("notify.sh", 0o755);
    let file = scratch.file("failover.toml", &config_notifying(&script, ""), 0o644);
    let config = load(&file).unwrap();
    assert_eq!(config.elections[0].notify, [script.display().to_string(), "--flag".to_owned()]);
    assert_eq!(config.elections[0].notify_user, Some(user("nobody")));
    let file = scratch.file("root.toml", &config_notifying(&script, "notify_user = \"root\"\n"), 0o644);
    assert_eq!(load(&file).unwrap().elections[0].notify_user, Some(user("root")));
}

#[test]
fn a_world_writable_notify_program_is_refused_with_its_line_and_path() {
    let scratch = Scratch::new();
    let script = scratch.script("notify.sh", 0o777);
    let file = scratch.file("failover.toml", &config_notifying(&script, ""), 0o644);
    assert_eq!(
        load_problems(&file),
        [format!(
            "{}:21: election[0].notify: {} is writable by everyone (mode 0777); only root may be able to change it",
            file.display(),
            script.display()
        )]
    );
}

#[test]
fn a_notify_user_needs_a_notify_and_an_existing_user() {
    let scratch = Scratch::new();
    let script = scratch.script("notify.sh", 0o755);
    let text = config_notifying(&script, "notify_user = \"no-such-user-here\"\n");
    let file = scratch.file("failover.toml", &text, 0o644);
    let problems = load_problems(&file);
    assert!(problems.iter().any(|problem| problem.ends_with(":22: election[0].notify_user: no user \"no-such-user-here\" on this host")), "{problems:?}");
    let text = text.replace(&format!("notify = [\"{}\", \"--flag\"]\n", script.display()), "");
    let file = scratch.file("without.toml", &text, 0o644);
    let problems = load_problems(&file);
    assert!(
        problems.iter().any(|problem| problem.ends_with("election[0].notify_user: set without `notify`: there is no program to run as this user")),
        "{problems:?}"
    );
}
