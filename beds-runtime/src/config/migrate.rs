//! Config versions (wiki/migrations.md#configuration-versions). Each version's changes are
//! one step that rewrites a file of the version before; [`MOVED`] lists the keys the steps
//! moved, so that an old key met in a file or a variable names its new place.
//!
//! `beds config migrate` edits the file's text line by line where it can, so its comments
//! and layout survive, and checks the edit against the same step applied to the parsed
//! tree; when the two disagree (flow mappings, anchors) it writes the tree instead.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value as Yaml};

use super::CONFIG_VERSION;

/// A key a version moved or renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Its path before, e.g. `admin.heartbeat`.
    pub from: &'static str,
    /// Its path since, e.g. `telemetry.heartbeat`.
    pub to: &'static str,
    /// The config version that moved it.
    pub since: u32,
}

/// Every key moved since version 1.
pub const MOVED: &[Moved] = &[
    // Every node publishes heartbeats, not only the admin: the setting is the node's.
    Moved {
        from: "admin.heartbeat",
        to: "telemetry.heartbeat",
        since: 2,
    },
    // Schema migrations are the DBA's (wiki/migrations.md): a node creates what is missing
    // (`create`) or only checks (`verify`); a boolean could not say the second.
    Moved {
        from: "database.apply_schema",
        to: "database.schema",
        since: 2,
    },
    Moved {
        from: "admin.database.apply_schema",
        to: "admin.database.schema",
        since: 2,
    },
];

/// The moved key at `path` (dotted), if it is one.
pub fn moved(path: &str) -> Option<&'static Moved> {
    MOVED.iter().find(|m| m.from == path)
}

/// The first moved key present in a configuration tree.
pub fn first_moved(tree: &Yaml) -> Option<&'static Moved> {
    MOVED
        .iter()
        .find(|m| lookup(tree, &m.from.split('.').collect::<Vec<_>>()).is_some())
}

/// Why a file could not be migrated.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not YAML: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{path}: the top level must be a mapping of keys")]
    NotAMapping { path: PathBuf },
    #[error(
        "{path}: `version` is {found}, but this build knows versions 1 to {CONFIG_VERSION}; a newer beds wrote it"
    )]
    Newer { path: PathBuf, found: u64 },
    #[error("{path}: `version` must be a whole number, found {found}")]
    BadVersion { path: PathBuf, found: String },
    #[error(
        "{path}: `{key}` must be true or false to be migrated, found {found}; fix it, then migrate again"
    )]
    BadValue {
        path: PathBuf,
        key: &'static str,
        found: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One file, migrated (or found current).
#[derive(Debug)]
pub struct Migrated {
    pub path: PathBuf,
    /// Its version before (an overlay takes its base's).
    pub from: u32,
    /// What each step changed, one line each.
    pub changes: Vec<String>,
    /// The new text.
    pub text: String,
    /// Whether the text is the original's edited in place (comments kept) or the migrated
    /// tree written anew.
    pub comments_kept: bool,
}

impl Migrated {
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// Migrates a base file and the overlays beside it (`<stem>.<env>.yaml`) to
/// [`CONFIG_VERSION`], without writing anything.
pub fn plan(base: &Path) -> Result<Vec<Migrated>, MigrateError> {
    let first = migrate_file(base, None)?;
    let from = first.from;
    let mut files = vec![first];
    for overlay in overlays(base) {
        files.push(migrate_file(&overlay, Some(from))?);
    }
    Ok(files)
}

/// Writes the changed files of a plan, each original kept beside it as `<file>.v<from>`.
pub fn write(files: &[Migrated]) -> Result<Vec<PathBuf>, MigrateError> {
    let mut kept = Vec::new();
    for file in files.iter().filter(|f| f.changed()) {
        let backup = PathBuf::from(format!("{}.v{}", file.path.display(), file.from));
        std::fs::copy(&file.path, &backup).map_err(|source| MigrateError::Write {
            path: backup.clone(),
            source,
        })?;
        let temp = PathBuf::from(format!("{}.migrating", file.path.display()));
        std::fs::write(&temp, &file.text)
            .and_then(|()| std::fs::rename(&temp, &file.path))
            .map_err(|source| MigrateError::Write {
                path: file.path.clone(),
                source,
            })?;
        kept.push(backup);
    }
    Ok(kept)
}

/// The overlays of `base` that exist, sorted.
fn overlays(base: &Path) -> Vec<PathBuf> {
    let stem = base.file_stem().and_then(|s| s.to_str()).unwrap_or("beds");
    let dir = base.parent().filter(|d| !d.as_os_str().is_empty());
    let Ok(entries) = std::fs::read_dir(dir.unwrap_or(Path::new("."))) else {
        return Vec::new();
    };
    let prefix = format!("{stem}.");
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&prefix) && n.ends_with(".yaml") && n.len() > prefix.len() + 5
            })
        })
        .collect();
    found.sort();
    found
}

/// Migrates one file. A base file without `version` is version 1 (the key was optional
/// there); an overlay without one takes `base_version`.
fn migrate_file(path: &Path, base_version: Option<u32>) -> Result<Migrated, MigrateError> {
    let original = std::fs::read_to_string(path).map_err(|source| MigrateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut tree: Yaml = serde_yaml::from_str(&original).map_err(|source| MigrateError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    if tree.is_null() {
        tree = Yaml::Mapping(Mapping::new());
    }
    let Yaml::Mapping(map) = &mut tree else {
        return Err(MigrateError::NotAMapping {
            path: path.to_path_buf(),
        });
    };
    let overlay = base_version.is_some();
    let from = match map.get("version") {
        None => base_version.unwrap_or(1),
        Some(Yaml::Number(n)) => match n.as_u64() {
            Some(v) if (1..=u64::from(CONFIG_VERSION)).contains(&v) => v as u32,
            Some(v) => {
                return Err(MigrateError::Newer {
                    path: path.to_path_buf(),
                    found: v,
                });
            }
            None => {
                return Err(MigrateError::BadVersion {
                    path: path.to_path_buf(),
                    found: n.to_string(),
                });
            }
        },
        Some(other) => {
            return Err(MigrateError::BadVersion {
                path: path.to_path_buf(),
                found: format!("{other:?}"),
            });
        }
    };
    let mut changes = Vec::new();
    let mut text = original.clone();
    for version in from..CONFIG_VERSION {
        let step = STEPS[version as usize - 1];
        step(map, &mut changes).map_err(|(key, found)| MigrateError::BadValue {
            path: path.to_path_buf(),
            key,
            found,
        })?;
        text = edit_text(&text, version + 1);
    }
    if from < CONFIG_VERSION && !overlay {
        let now = Yaml::Number(CONFIG_VERSION.into());
        if map.insert("version".into(), now).is_none() {
            changes.push(format!("version: (none, read as 1) → {CONFIG_VERSION}"));
        } else {
            changes.push(format!("version: {from} → {CONFIG_VERSION}"));
        }
        text = set_version(&text);
    }
    // The in-place edit is kept only if it says exactly what the tree says.
    let edited: Option<Yaml> = serde_yaml::from_str(&text).ok();
    let comments_kept = edited.as_ref() == Some(&tree)
        || (edited == Some(Yaml::Null) && tree == Yaml::Mapping(Mapping::new()));
    if !comments_kept {
        text = serde_yaml::to_string(&tree).expect("a YAML tree serialises");
    }
    Ok(Migrated {
        path: path.to_path_buf(),
        from,
        changes,
        text,
        comments_kept,
    })
}

/// A step rewrites a tree of version N into N + 1, noting each change; on a value it
/// cannot carry over it names the key and the value.
type Step = fn(&mut Mapping, &mut Vec<String>) -> Result<(), (&'static str, String)>;

/// `STEPS[N - 1]` migrates version N.
const STEPS: &[Step] = &[v1_to_v2];

/// Version 2: `admin.heartbeat` → `telemetry.heartbeat`; `apply_schema: true|false` →
/// `schema: create|verify` in `database` and `admin.database`.
fn v1_to_v2(map: &mut Mapping, changes: &mut Vec<String>) -> Result<(), (&'static str, String)> {
    for m in MOVED.iter().filter(|m| m.since == 2) {
        let from: Vec<&str> = m.from.split('.').collect();
        let Some(value) = take(map, &from) else {
            continue;
        };
        let value = if m.from.ends_with("apply_schema") {
            match value {
                Yaml::Bool(true) => Yaml::String("create".into()),
                Yaml::Bool(false) => Yaml::String("verify".into()),
                other => return Err((m.from, format!("{other:?}"))),
            }
        } else {
            value
        };
        changes.push(format!(
            "{}: {} → {}: {}",
            m.from,
            scalar(&from_value_of(m, &value)),
            m.to,
            scalar(&value)
        ));
        put(map, &m.to.split('.').collect::<Vec<_>>(), value);
    }
    Ok(())
}

/// The value as the old key held it, for the change note.
fn from_value_of(m: &Moved, now: &Yaml) -> Yaml {
    match (m.from.ends_with("apply_schema"), now.as_str()) {
        (true, Some("create")) => Yaml::Bool(true),
        (true, Some(_)) => Yaml::Bool(false),
        _ => now.clone(),
    }
}

fn scalar(v: &Yaml) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

fn lookup<'a>(tree: &'a Yaml, path: &[&str]) -> Option<&'a Yaml> {
    path.iter().try_fold(tree, |node, key| node.get(*key))
}

/// Removes the value at `path`, and any section it leaves empty.
fn take(map: &mut Mapping, path: &[&str]) -> Option<Yaml> {
    match path {
        [] => None,
        [last] => map.remove(*last),
        [first, rest @ ..] => {
            let Yaml::Mapping(inner) = map.get_mut(*first)? else {
                return None;
            };
            let taken = take(inner, rest);
            if inner.is_empty() {
                map.remove(*first);
            }
            taken
        }
    }
}

fn put(map: &mut Mapping, path: &[&str], value: Yaml) {
    match path {
        [] => {}
        [last] => {
            map.insert((*last).into(), value);
        }
        [first, rest @ ..] => {
            let slot = map
                .entry((*first).into())
                .or_insert_with(|| Yaml::Mapping(Mapping::new()));
            if !slot.is_mapping() {
                *slot = Yaml::Mapping(Mapping::new());
            }
            if let Yaml::Mapping(inner) = slot {
                put(inner, rest, value);
            }
        }
    }
}

/// A block-style line `key: rest` at some indentation.
struct Line<'a> {
    indent: usize,
    key: &'a str,
    rest: &'a str,
}

fn parse_line(line: &str) -> Option<Line<'_>> {
    let body = line.trim_start();
    if body.starts_with('#') || body.starts_with('-') {
        return None;
    }
    let (key, rest) = body.split_once(':')?;
    key.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then_some(Line {
            indent: line.len() - body.len(),
            key,
            rest,
        })
}

/// The dotted path of every block-style key line (None for other lines).
fn paths(lines: &[&str]) -> Vec<Option<String>> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    lines
        .iter()
        .map(|line| {
            let parsed = parse_line(line)?;
            while stack.last().is_some_and(|(i, _)| *i >= parsed.indent) {
                stack.pop();
            }
            let path = stack
                .iter()
                .map(|(_, k)| k.as_str())
                .chain([parsed.key])
                .collect::<Vec<_>>()
                .join(".");
            stack.push((parsed.indent, parsed.key.to_string()));
            Some(path)
        })
        .collect()
}

/// The text edit of the step to `version`, for block-style files: renames in place, moves
/// a key (with the comment lines right above it) to the end of its new section.
fn edit_text(text: &str, version: u32) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for m in MOVED.iter().filter(|m| m.since == version) {
        let borrowed: Vec<&str> = lines.iter().map(String::as_str).collect();
        let found = paths(&borrowed);
        let Some(at) = found.iter().position(|p| p.as_deref() == Some(m.from)) else {
            continue;
        };
        let (from_parent, _) = m.from.rsplit_once('.').expect("moved keys are nested");
        let (to_parent, to_key) = m.to.rsplit_once('.').expect("moved keys are nested");
        let line = parse_line(&lines[at]).expect("a key line");
        let value = line.rest.trim();
        let (value, comment) = match value.split_once(" #") {
            Some((v, c)) => (v.trim(), format!(" #{c}")),
            None => (value, String::new()),
        };
        let value = match (m.from.ends_with("apply_schema"), value) {
            (true, "true") => "create",
            (true, "false") => "verify",
            (_, v) => v,
        }
        .to_string();
        let indent = line.indent;
        if from_parent == to_parent {
            lines[at] = format!("{}{to_key}: {value}{comment}", " ".repeat(indent));
            continue;
        }
        // The comment lines right above the key describe it: they move with it.
        let mut start = at;
        while start > 0 && lines[start - 1].trim_start().starts_with('#') {
            start -= 1;
        }
        let mut moved: Vec<String> = lines.drain(start..=at).collect();
        let last = moved.len() - 1;
        moved[last] = format!("{}{to_key}: {value}{comment}", " ".repeat(indent));
        drop_if_empty(&mut lines, from_parent);
        let borrowed: Vec<&str> = lines.iter().map(String::as_str).collect();
        let found = paths(&borrowed);
        match found.iter().position(|p| p.as_deref() == Some(to_parent)) {
            Some(section) => {
                let depth = to_parent.split('.').count();
                let mut end = section + 1;
                while end < lines.len() {
                    let inside = match &found[end] {
                        Some(p) => p.split('.').count() > depth,
                        // Blank and comment lines belong to the section if a key of it follows.
                        None => found[end + 1..]
                            .iter()
                            .flatten()
                            .next()
                            .is_some_and(|p| p.split('.').count() > depth),
                    };
                    if !inside {
                        break;
                    }
                    end += 1;
                }
                let child = lines[section + 1..end]
                    .iter()
                    .filter_map(|l| parse_line(l))
                    .map(|l| l.indent)
                    .next()
                    .unwrap_or(indent);
                let reindented = moved
                    .iter()
                    .map(|l| format!("{}{}", " ".repeat(child), l.trim_start()));
                lines.splice(end..end, reindented);
            }
            None => {
                lines.push(format!("{to_parent}:"));
                lines.extend(moved.iter().map(|l| format!("  {}", l.trim_start())));
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Removes the header line of section `path` when no key is left under it.
fn drop_if_empty(lines: &mut Vec<String>, path: &str) {
    let borrowed: Vec<&str> = lines.iter().map(String::as_str).collect();
    let found = paths(&borrowed);
    let Some(at) = found.iter().position(|p| p.as_deref() == Some(path)) else {
        return;
    };
    let depth = path.split('.').count();
    let has_child = found[at + 1..]
        .iter()
        .flatten()
        .next()
        .is_some_and(|p| p.split('.').count() > depth);
    if !has_child && parse_line(&lines[at]).is_some_and(|l| l.rest.trim().is_empty()) {
        lines.remove(at);
    }
}

/// Sets the top-level `version:` line to [`CONFIG_VERSION`], or adds one after the leading
/// comments.
fn set_version(text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match lines.iter().position(|l| l.starts_with("version:")) {
        Some(at) => {
            let comment = lines[at]
                .split_once(" #")
                .map(|(_, c)| format!(" #{c}"))
                .unwrap_or_default();
            lines[at] = format!("version: {CONFIG_VERSION}{comment}");
        }
        None => {
            let at = lines
                .iter()
                .position(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
                .unwrap_or(lines.len());
            lines.insert(at, format!("version: {CONFIG_VERSION}"));
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "\
# a node (version 1)
version: 1
role: appServer
database:
  driver: sqlite
  # create what is missing
  apply_schema: false
admin:
  prefetch: 8
  # status every
  heartbeat: 500ms # fast
  stuck_after: 30s
telemetry:
  listen: 127.0.0.1:0
log:
  filter: info
";

    fn migrate_text(text: &str) -> Migrated {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beds.yaml");
        std::fs::write(&path, text).unwrap();
        migrate_file(&path, None).unwrap()
    }

    #[test]
    fn a_v1_file_is_rewritten_in_place_with_its_comments() {
        let m = migrate_text(V1);
        assert!(m.comments_kept, "{}", m.text);
        assert_eq!(
            m.text,
            "\
# a node (version 1)
version: 2
role: appServer
database:
  driver: sqlite
  # create what is missing
  schema: verify
admin:
  prefetch: 8
  stuck_after: 30s
telemetry:
  listen: 127.0.0.1:0
  # status every
  heartbeat: 500ms # fast
log:
  filter: info
"
        );
        assert_eq!(
            m.changes,
            [
                "admin.heartbeat: 500ms → telemetry.heartbeat: 500ms",
                "database.apply_schema: false → database.schema: verify",
                "version: 1 → 2"
            ]
        );
    }

    #[test]
    fn flow_mappings_are_migrated_through_the_tree() {
        let m = migrate_text("version: 1\nadmin: { heartbeat: 1s, prefetch: 2 }\n");
        assert!(!m.comments_kept);
        let tree: Yaml = serde_yaml::from_str(&m.text).unwrap();
        assert_eq!(tree["telemetry"]["heartbeat"], Yaml::String("1s".into()));
        assert_eq!(tree["admin"].get("heartbeat"), None);
        assert_eq!(tree["version"], Yaml::Number(2.into()));
    }

    #[test]
    fn a_missing_section_is_added_and_a_current_file_is_left_alone() {
        let m = migrate_text("version: 1\nadmin:\n  heartbeat: 3s\n");
        assert!(m.comments_kept, "{}", m.text);
        assert_eq!(m.text, "version: 2\ntelemetry:\n  heartbeat: 3s\n");
        let current = migrate_text("version: 2\ntelemetry:\n  heartbeat: 3s\n");
        assert!(!current.changed());
    }

    #[test]
    fn a_newer_or_odd_file_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beds.yaml");
        std::fs::write(&path, "version: 9\n").unwrap();
        assert!(matches!(
            migrate_file(&path, None),
            Err(MigrateError::Newer { found: 9, .. })
        ));
        std::fs::write(&path, "version: 1\ndatabase: { apply_schema: maybe }\n").unwrap();
        let e = migrate_file(&path, None).unwrap_err().to_string();
        assert!(e.contains("database.apply_schema"), "{e}");
    }

    #[test]
    fn overlays_take_their_base_version_and_keep_no_version_key() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("beds.yaml");
        std::fs::write(&base, "version: 1\n").unwrap();
        std::fs::write(
            dir.path().join("beds.prod.yaml"),
            "admin:\n  heartbeat: 5s\n",
        )
        .unwrap();
        let plan = plan(&base).unwrap();
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[1].from, 1);
        assert_eq!(plan[1].text, "telemetry:\n  heartbeat: 5s\n");
        let kept = write(&plan).unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), "version: 1\n");
        assert!(plan.iter().all(|m| m.changed()));
    }
}
