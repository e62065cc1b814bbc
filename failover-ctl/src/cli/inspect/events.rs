//! `events`: the daemon's event log (`events.jsonl`), newest last, with failover timings.

use anyhow::Context;
use serde::Serialize;

use super::{
    instance::missing_instance,
    render::{emit, emit_json, micros, utc, Table},
    Target,
};
use crate::{
    daemon::{events, status::Event},
    pin::PinnedView,
};


#[derive(Serialize)]
pub(super) struct EventView {
    /// `at` as UTC.
    pub(super) time: String,
    #[serde(flatten)]
    event: Event,
}

impl From<Event> for EventView {
    fn from(event: Event) -> Self {
        Self { time: utc(event.at), event }
    }
}

impl std::ops::Deref for EventView {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

#[derive(Serialize)]
struct EventsView {
    instance: String,
    total: usize,
    events: Vec<EventView>,
}

pub fn events(target: &Target, limit: usize) -> anyhow::Result<()> {
    let paths = &target.paths;
    let path = paths.events();
    if !path.exists() && !PinnedView::exists(paths) {
        return Err(missing_instance(paths));
    }
    let all = events::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let total = all.len();
    let recent: Vec<EventView> = all.into_iter().skip(total.saturating_sub(limit)).map(EventView::from).collect();
    if target.json {
        return emit_json(&EventsView { instance: paths.instance.clone(), total, events: recent });
    }
    if recent.is_empty() {
        let why = if path.exists() { "" } else { " (no event log yet)" };
        return emit(&format!("no events{why} in {}\n", path.display()));
    }
    let mut table = Table::new(&["TIME", "KIND", "VIP", "BACKEND", "DETAIL"]);
    for event in &recent {
        let mut detail = event.detail.clone();
        if let Some(timings) = &event.timings {
            detail.push_str(&format!(
                " [to {}: health bit +{}, table +{} after the verdict; probe at {}]",
                timings.to,
                micros(timings.health_written_us),
                micros(timings.table_published_us),
                utc(timings.probe_at)
            ));
        }
        table.row(vec![
            event.time.clone(),
            event.kind.clone(),
            event.vip.clone().unwrap_or_else(|| "-".into()),
            event.backend.clone().unwrap_or_else(|| "-".into()),
            detail,
        ]);
    }
    let mut text = table.render();
    if total > recent.len() {
        text.push_str(&format!("last {} of {} events\n", recent.len(), total));
    }
    emit(&text)
}
