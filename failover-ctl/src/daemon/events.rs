//! The event log: every transition with its timestamps, appended to `events.jsonl` so that
//! `failover-ctl events` reads it with the daemon stopped, and kept bounded.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use super::status::Event;

/// Events kept in memory and, after a compaction, in the file.
pub const KEEP: usize = 2000;

pub struct EventLog {
    path: PathBuf,
    file: Option<File>,
    recent: VecDeque<Event>,
    lines_in_file: usize,
}

/// Reads the events in `path`, oldest first; unreadable lines are skipped (a line cut by a crash).
pub fn read(path: &Path) -> io::Result<Vec<Event>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut events = Vec::new();
    for line in BufReader::new(file).lines() {
        if let Ok(event) = serde_json::from_str::<Event>(&line?) {
            events.push(event);
        }
    }
    Ok(events)
}

impl EventLog {
    /// Opens (or creates) the log at `path`, keeping the history an earlier daemon left.
    pub fn open(path: &Path) -> io::Result<Self> {
        let existing = read(path)?;
        let lines_in_file = existing.len();
        let skip = existing.len().saturating_sub(KEEP);
        let mut log = Self {
            path: path.to_path_buf(),
            file: None,
            recent: existing.into_iter().skip(skip).collect(),
            lines_in_file,
        };
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        // A line torn by a crash must not swallow the next event.
        let text_ends_cleanly = fs::read(path).map(|bytes| bytes.last().is_none_or(|b| *b == b'\n'))?;
        if !text_ends_cleanly {
            file.write_all(b"\n")?;
        }
        log.file = Some(file);
        Ok(log)
    }

    /// Appends `event`. A failed write is logged, never fatal: the data plane matters more.
    pub fn record(&mut self, event: Event) {
        tracing::info!(kind = %event.kind, vip = ?event.vip, backend = ?event.backend, "{}", event.detail);
        if let Err(error) = self.append(&event) {
            tracing::warn!("writing {} failed: {error}", self.path.display());
        }
        self.recent.push_back(event);
        while self.recent.len() > KEEP {
            self.recent.pop_front();
        }
    }

    fn append(&mut self, event: &Event) -> io::Result<()> {
        if self.lines_in_file >= 2 * KEEP {
            self.compact()?;
        }
        let mut line = serde_json::to_string(event).map_err(io::Error::other)?;
        line.push('\n');
        if let Some(file) = self.file.as_mut() {
            file.write_all(line.as_bytes())?;
        }
        self.lines_in_file += 1;
        Ok(())
    }

    /// Rewrites the file with the recent events only (write then rename: never a torn file).
    fn compact(&mut self) -> io::Result<()> {
        let temporary = self.path.with_extension("jsonl.tmp");
        let mut text = String::new();
        for event in &self.recent {
            text.push_str(&serde_json::to_string(event).map_err(io::Error::other)?);
            text.push('\n');
        }
        fs::write(&temporary, text)?;
        fs::rename(&temporary, &self.path)?;
        self.file = Some(OpenOptions::new().append(true).open(&self.path)?);
        self.lines_in_file = self.recent.len();
        Ok(())
    }

    pub fn recent(&self) -> impl Iterator<Item = &Event> {
        self.recent.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> Event {
        Event { at: n, kind: "failover".into(), detail: format!("event {n}"), ..Event::default() }
    }

    #[test]
    fn events_survive_a_reopen_and_the_file_stays_bounded() {
        let dir = std::env::temp_dir().join(format!("failover-events-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let _ = fs::remove_file(&path);
        let mut log = EventLog::open(&path).unwrap();
        for n in 0..(2 * KEEP as u64 + 10) {
            log.record(event(n));
        }
        drop(log);
        let events = read(&path).unwrap();
        assert!(events.len() <= 2 * KEEP, "{} lines", events.len());
        assert_eq!(events.last().unwrap().at, 2 * KEEP as u64 + 9);
        // A torn last line (a crash mid-write) is skipped, the rest read.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"at\": 1, \"ki").unwrap();
        let reopened = EventLog::open(&path).unwrap();
        assert_eq!(reopened.recent().last().unwrap().at, 2 * KEEP as u64 + 9);
        fs::remove_dir_all(&dir).unwrap();
    }
}
