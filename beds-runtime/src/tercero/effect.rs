//! What a write event does to maintained counts: a record counts for the owner its
//! reference `by` names when the count's filter holds on it, so an event moves one from
//! the owner `before` counted for to the owner `after` counts for.

use serde_json::{Map, Value as Json};

use crate::events::WriteEvent;
use crate::meta::{CondOp, CountMeta, DomainMeta, LiteralValue, Operand};
use crate::store::{CounterMarks, EventEffect, counter_name};

/// The counter changes of `event` for every maintained count of its template, but none
/// for a counter whose backfill already counted it (`seq` at or below its mark).
pub(crate) fn effect(
    domains: &[&'static DomainMeta],
    marks: &CounterMarks,
    event: &WriteEvent,
) -> EventEffect {
    let mut deltas = Vec::new();
    for domain in domains.iter().filter(|d| d.name == event.domain) {
        let counts = domain
            .templates
            .iter()
            .flat_map(|t| t.counts)
            .filter(|c| c.maintained && c.template == event.template);
        for count in counts {
            let name = counter_name(domain, count);
            if marks.get(&name).is_some_and(|mark| event.seq <= *mark) {
                continue;
            }
            if let Some(owner) = event
                .before
                .as_ref()
                .and_then(Json::as_object)
                .and_then(|r| counted_for(count, r))
            {
                deltas.push((name.clone(), owner, -1));
            }
            if let Some(owner) = event
                .after
                .as_ref()
                .and_then(Json::as_object)
                .and_then(|r| counted_for(count, r))
            {
                deltas.push((name, owner, 1));
            }
        }
    }
    EventEffect {
        id: event.id.to_string(),
        deltas,
    }
}

/// The owner `record` counts for, as counter-table text: none when its reference is
/// empty or the filter does not hold.
fn counted_for(count: &CountMeta, record: &Map<String, Json>) -> Option<String> {
    if !count.filter.iter().all(|c| holds(c, record)) {
        return None;
    }
    match record.get(count.by)? {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Counts compare single fields with literals by equality (checked at build time).
fn holds(c: &crate::meta::ConditionMeta, record: &Map<String, Json>) -> bool {
    let value = record.get(c.path[0]);
    match (&c.op, &c.operand) {
        (CondOp::Eq, Operand::Literal(LiteralValue::Bool(b))) => value == Some(&Json::Bool(*b)),
        (CondOp::Eq, Operand::Literal(LiteralValue::Enum(v))) => {
            value.and_then(Json::as_str) == Some(*v)
        }
        _ => unreachable!("count filters compare a field with a literal"),
    }
}
