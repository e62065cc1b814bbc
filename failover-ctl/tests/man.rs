//! The man pages `cargo xtask dist` packages, as the binary writes them (`failover-ctl man
//! --dir DIR`): one page per visible command, the main page listing them all, every page
//! well-formed roff (checked here line by line, and by groff with every warning on).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// A private directory, removed on drop.
struct Pages(PathBuf);

impl Pages {
    fn write() -> Self {
        static WRITES: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!("failover-man-{}-{}", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        let output = Command::new(env!("CARGO_BIN_EXE_failover-ctl")).arg("man").arg("--dir").arg(&dir).output().unwrap();
        assert!(output.status.success(), "failover-ctl man: {}", String::from_utf8_lossy(&output.stderr));
        Self(dir)
    }

    fn names(&self) -> BTreeSet<String> {
        std::fs::read_dir(&self.0).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).unwrap_or_else(|error| panic!("{name}: {error}"))
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The commands `failover-ctl --help` lists (clap's own `help` aside).
fn visible_commands() -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_failover-ctl")).arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    let section = help.split("Commands:").nth(1).expect("a Commands section").split("\n\n").next().unwrap();
    section
        .lines()
        .filter_map(|line| line.strip_prefix("  ")?.split_whitespace().next().map(str::to_string))
        .filter(|name| name != "help")
        .collect()
}

/// The roff requests clap_mangen writes (the man macros and the few groff requests of its
/// preamble); anything else would be a typo or text mistaken for a request.
const REQUESTS: [&str; 10] = ["ie", "el", "TH", "SH", "TP", "IP", "PP", "RS", "RE", "br"];

/// Checks one page line by line: a title first, NAME and SYNOPSIS sections, known requests
/// only, font escapes that return to roman on the line they start, no stray escapes.
fn check_roff(name: &str, page: &str) {
    let title = page.lines().find(|line| line.starts_with(".TH")).unwrap_or_else(|| panic!("{name}: no .TH"));
    let stem = name.strip_suffix(".1").unwrap();
    assert!(title.starts_with(&format!(".TH {stem} 1 ")), "{name}: title {title:?}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION"] {
        assert!(page.lines().any(|line| line == section), "{name}: no {section}");
    }
    let after_name = page.split(".SH NAME\n").nth(1).unwrap().lines().next().unwrap();
    assert!(after_name.starts_with(&format!("{} \\- ", stem.replace('-', "\\-"))), "{name}: NAME line {after_name:?}");
    for (number, line) in page.lines().enumerate() {
        let at = format!("{name}:{}", number + 1);
        if let Some(request) = line.strip_prefix('.') {
            let word = request.split_whitespace().next().unwrap_or("");
            assert!(REQUESTS.contains(&word), "{at}: unknown request {line:?}");
        }
        assert!(!line.starts_with('\''), "{at}: a line starting with ' is a request: {line:?}");
        let opened = line.matches("\\fB").count() + line.matches("\\fI").count();
        let closed = line.matches("\\fR").count();
        assert!(opened == closed, "{at}: {opened} font changes, {closed} back to roman: {line:?}");
        for (index, _) in line.match_indices('\\') {
            let next = &line[index + 1..];
            let known = ["-", "f", "(", "*", "n", "&", "e", "\\"].iter().any(|escape| next.starts_with(escape));
            let escaped = index > 0 && line[..index].ends_with('\\');
            assert!(known || escaped, "{at}: unknown escape in {line:?}");
        }
    }
}

#[test]
fn one_valid_page_per_visible_command() {
    let pages = Pages::write();
    let names = pages.names();
    let commands = visible_commands();
    assert!(commands.len() >= 15 && commands.iter().any(|name| name == "monitor"), "commands from --help: {commands:?}");
    let main = pages.read("failover-ctl.1");
    for command in &commands {
        let page = format!("failover-ctl-{command}.1");
        assert!(names.contains(&page), "no page for {command}: {names:?}");
        let listed = format!("failover\\-ctl\\-{}(1)", command.replace('-', "\\-"));
        assert!(main.lines().any(|line| line == listed), "the main page does not list {command}");
    }
    assert!(!names.contains("failover-ctl-man.1"), "the hidden man command has no page");
    assert!(!names.contains("failover-ctl-help.1"), "no page for clap's help");
    for name in &names {
        check_roff(name, &pages.read(name));
    }
    let monitor = pages.read("failover-ctl-monitor.1");
    for option in ["\\fB\\-\\-vip\\fR", "\\fB\\-\\-client\\fR", "\\fB\\-\\-backend\\fR", "\\fB\\-\\-rate\\fR"] {
        assert!(monitor.contains(option), "monitor page lacks {option}");
    }
}

#[test]
fn groff_renders_every_page_without_a_warning() {
    if !netlab::prerequisite::require_program("groff", "groff-base") {
        return;
    }
    let pages = Pages::write();
    for name in pages.names() {
        let path: &Path = &pages.0.join(&name);
        let output = Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(path).output().unwrap();
        let warnings = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() && warnings.is_empty(), "{name}: groff -ww says:\n{warnings}");
    }
}
