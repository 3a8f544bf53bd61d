//! The tree of one conversation's lineage records, as `beds lineage` prints it: each
//! record under its parent (the record whose id is its causation id), siblings in time
//! order, offsets from the earliest record. A pure function of the records.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use uuid::Uuid;

use super::Record;

/// One printed line: a record, how deep it sits, and whether its parent is missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    pub record: &'a Record,
    pub level: usize,
    /// It names a parent that is not among the records (lost, dropped or not yet stored):
    /// shown at the root level.
    pub orphan: bool,
    /// Microseconds after the earliest record.
    pub offset_us: i64,
}

/// The records in tree order: roots (no causation, or a missing parent) by time, each
/// followed by its descendants depth-first, children by time. Every record appears once,
/// duplicates and cycles included.
pub fn tree(records: &[Record]) -> Vec<Line<'_>> {
    let ids: HashSet<Uuid> = records.iter().map(|r| r.id).collect();
    let start = records.iter().map(|r| r.at).min();
    let mut children: HashMap<Uuid, Vec<&Record>> = HashMap::new();
    let mut roots = Vec::new();
    for r in records {
        match r.causation_id {
            Some(parent) if ids.contains(&parent) && parent != r.id => {
                children.entry(parent).or_default().push(r)
            }
            _ => roots.push(r),
        }
    }
    let by_time = |a: &&Record, b: &&Record| a.at.cmp(&b.at).then(a.id.cmp(&b.id));
    roots.sort_by(by_time);
    for list in children.values_mut() {
        list.sort_by(by_time);
    }
    let offset =
        |r: &Record| start.map_or(0, |s| (r.at - s).num_microseconds().unwrap_or(i64::MAX));
    let mut out = Vec::with_capacity(records.len());
    let mut placed = HashSet::new();
    let mut stack: Vec<(&Record, usize)> = roots.into_iter().rev().map(|r| (r, 0)).collect();
    loop {
        while let Some((r, level)) = stack.pop() {
            if !placed.insert(r.id) {
                continue;
            }
            out.push(Line {
                record: r,
                level,
                orphan: level == 0 && r.causation_id.is_some_and(|p| p != r.id),
                offset_us: offset(r),
            });
            if let Some(kids) = children.get(&r.id) {
                stack.extend(kids.iter().rev().map(|k| (*k, level + 1)));
            }
        }
        // A cycle has no root: its earliest unplaced record opens it, marked.
        match records
            .iter()
            .filter(|r| !placed.contains(&r.id))
            .min_by(|a, b| by_time(a, b))
        {
            Some(r) => stack.push((r, 0)),
            None => break,
        }
    }
    out
}

/// The tree as text, one line per record: type, name, node, outcome, offset and duration.
pub fn render(records: &[Record]) -> String {
    let mut out = String::new();
    for line in tree(records) {
        let r = line.record;
        let duration = r
            .duration_us
            .map_or("-".to_string(), |us| format!("{:.3}ms", us as f64 / 1000.0));
        let _ = writeln!(
            out,
            "{indent}{mark}{kind} {name}  node={node}  outcome={outcome}  +{offset:.3}ms  took={duration}  id={id}",
            indent = "  ".repeat(line.level),
            mark = if line.orphan { "(orphan) " } else { "" },
            kind = r.kind_of.name(),
            name = r.name,
            node = r.origin.node,
            outcome = r.outcome.as_deref().unwrap_or("-"),
            offset = line.offset_us as f64 / 1000.0,
            id = r.id,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Origin;
    use crate::lineage::RecordType;

    fn record(kind: RecordType, id: u128, parent: Option<u128>, at_us: i64) -> Record {
        let at = chrono::DateTime::from_timestamp_micros(1_800_000_000_000_000 + at_us).unwrap();
        Record::new(
            kind,
            Uuid::from_u128(id),
            Uuid::from_u128(1),
            parent.map(Uuid::from_u128),
            0,
            Origin {
                service: "beds".into(),
                node: "n1".into(),
                env: "test".into(),
            },
            format!("r{id}"),
            at,
        )
    }

    fn shape(records: &[Record]) -> Vec<(u128, usize, bool, i64)> {
        tree(records)
            .iter()
            .map(|l| (l.record.id.as_u128(), l.level, l.orphan, l.offset_us))
            .collect()
    }

    #[test]
    fn records_nest_under_their_parents_in_time_order() {
        let records = vec![
            record(RecordType::Invalidation, 5, Some(3), 900),
            record(RecordType::Reply, 2, Some(1), 500),
            record(RecordType::Event, 3, Some(1), 700),
            record(RecordType::Request, 1, None, 0),
            record(RecordType::Effect, 4, Some(3), 800),
        ];
        assert_eq!(
            shape(&records),
            vec![
                (1, 0, false, 0),
                (2, 1, false, 500),
                (3, 1, false, 700),
                (4, 2, false, 800),
                (5, 2, false, 900),
            ]
        );
    }

    #[test]
    fn orphans_are_shown_at_the_root_level_marked() {
        let records = vec![
            record(RecordType::Request, 1, None, 100),
            record(RecordType::Effect, 4, Some(3), 50),
            record(RecordType::Effect, 6, Some(4), 60),
        ];
        assert_eq!(
            shape(&records),
            vec![(4, 0, true, 0), (6, 1, false, 10), (1, 0, false, 50)]
        );
        let text = render(&records);
        assert!(text.starts_with("(orphan) effect r4  node=n1"), "{text}");
        assert!(
            text.lines().nth(1).unwrap().starts_with("  effect r6"),
            "{text}"
        );
    }

    #[test]
    fn duplicates_and_cycles_print_each_record_once() {
        let records = vec![
            record(RecordType::Effect, 7, Some(8), 10),
            record(RecordType::Effect, 8, Some(7), 20),
            record(RecordType::Request, 1, None, 0),
            record(RecordType::Request, 1, None, 0),
        ];
        let lines = shape(&records);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], (1, 0, false, 0));
        assert_eq!(lines[1], (7, 0, true, 10));
        assert_eq!(lines[2], (8, 1, false, 20));
    }

    #[test]
    fn no_records_no_lines() {
        assert!(tree(&[]).is_empty());
        assert_eq!(render(&[]), "");
    }
}
