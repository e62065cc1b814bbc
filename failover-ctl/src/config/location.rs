//! From a key path to a line and back: the span-carrying TOML tree locates each problem.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::Problem;

/// Turns byte offsets into 1-based lines of one file.
pub(super) struct Locator<'a> {
    pub(super) text: &'a str,
    pub(super) file_name: &'a str,
}

impl Locator<'_> {
    pub(super) fn problem_at(
        &self,
        span: Option<Range<usize>>,
        path: String,
        message: &str,
    ) -> Problem {
        let offset = span.map_or(0, |span| span.start.min(self.text.len()));
        let line = self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&byte| byte == b'\n')
            .count()
            + 1;
        Problem {
            file: self.file_name.to_owned(),
            line,
            path,
            message: message.to_owned(),
        }
    }
}

/// One step of a key path.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `vip[1].backend[0].weight` into keys and indexes.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next() {
            steps.push(Step::Key(key));
        }
        for index in pieces {
            if let Ok(index) = index.trim_end_matches(']').parse() {
                steps.push(Step::Index(index));
            }
        }
    }
    steps
}

/// Span of the deepest part of `path` present in the file: the key itself when it is there,
/// otherwise its nearest enclosing table or array element.
pub(super) fn locate(tree: &Spanned<DeTable<'_>>, path: &str) -> Option<Range<usize>> {
    let mut table = Some(tree.get_ref());
    let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
    let mut found = None;
    for step in steps(path) {
        let value = match step {
            Step::Key(name) => {
                let entry =
                    table.and_then(|table| table.iter().find(|(key, _)| key.get_ref() == name));
                let Some((key, value)) = entry else { break };
                found = Some(key.span());
                value
            }
            Step::Index(index) => {
                let Some(value) = array.and_then(|array| array.get(index)) else {
                    break;
                };
                found = Some(element_span(value));
                value
            }
        };
        table = value.get_ref().as_table();
        array = value.get_ref().as_array().map(|array| &array[..]);
    }
    found
}

/// Where an array element starts. The span toml gives an `[[array]]` element may not cover
/// its header, so the element's span is used only when it starts before its first key.
fn element_span(value: &Spanned<DeValue<'_>>) -> Range<usize> {
    let first_key = value.get_ref().as_table().and_then(|table| {
        table
            .iter()
            .map(|(key, _)| key.span())
            .min_by_key(|span| span.start)
    });
    match first_key {
        Some(key) if key.start < value.span().start => key,
        _ => value.span(),
    }
}

/// Key path of the deepest key or value whose span contains `offset`.
pub(super) fn path_at(tree: &Spanned<DeTable<'_>>, offset: usize) -> Option<String> {
    let mut path = String::new();
    table_path(tree.get_ref(), offset, &mut path).then_some(path)
}

fn table_path(table: &DeTable<'_>, offset: usize, path: &mut String) -> bool {
    for (key, value) in table.iter() {
        let length = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        if value_path(value, offset, path) || key.span().contains(&offset) {
            return true;
        }
        path.truncate(length);
    }
    false
}

fn value_path(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut String) -> bool {
    match value.get_ref() {
        DeValue::Table(table) => table_path(table, offset, path) || value.span().contains(&offset),
        DeValue::Array(array) => {
            for (index, element) in array.iter().enumerate() {
                let length = path.len();
                path.push_str(&format!("[{index}]"));
                if value_path(element, offset, path) {
                    return true;
                }
                path.truncate(length);
            }
            value.span().contains(&offset)
        }
        _ => value.span().contains(&offset),
    }
}
