//! Client compatibility between releases: a domain's contract (each template's fields with
//! type, constraints and required-ness; each query's parameters) recorded in a committed
//! file after a release (`beds check --record`), and what `beds check` finds when the
//! compiled declarations are compared with it: changes that break clients, and changes
//! made without a new domain `version` (wiki/migrations.md#breaking-changes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::meta::{DomainMeta, FieldKind, FieldMeta, ParamKind};

/// A domain's recorded contract: `<domains dir>/<domain>.fingerprint.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contract {
    pub domain: String,
    pub version: u32,
    pub templates: BTreeMap<String, TemplateContract>,
    pub queries: BTreeMap<String, QueryContract>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateContract {
    /// The template's contract hash: any change a client could notice changes it.
    pub fingerprint: String,
    pub fields: BTreeMap<String, FieldContract>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldContract {
    #[serde(rename = "type")]
    pub ty: String,
    /// A create must carry it (not optional, no default, not set by the server).
    pub required: bool,
    /// Lengths of strings and texts, values of numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryContract {
    pub params: BTreeMap<String, ParamContract>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamContract {
    #[serde(rename = "type")]
    pub ty: String,
    pub required: bool,
    pub list: bool,
}

/// Why a recorded contract could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a recorded contract: {source}; restore it from version control, or rewrite it from the current declarations with `beds check --record`"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// What the comparison of the declarations with the recorded contract found.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    /// Changes that break a client written against the recorded contract.
    pub breaking: Vec<String>,
    /// The contract changed at all (breaking or not).
    pub changed: bool,
    pub recorded_version: u32,
    pub version: u32,
}

impl Report {
    /// The contract changed but the domain's `version` did not.
    pub fn version_unchanged(&self) -> bool {
        self.changed && self.version == self.recorded_version
    }
}

/// The file holding `domain`'s recorded contract in `dir`.
pub fn path(dir: &Path, domain: &str) -> PathBuf {
    dir.join(format!("{domain}.fingerprint.json"))
}

/// The recorded contract of `domain`, `None` when there is none yet (its first version).
pub fn read(dir: &Path, domain: &str) -> Result<Option<Contract>, CompatError> {
    let path = path(dir, domain);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CompatError::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| CompatError::Parse { path, source })
}

/// Records `contract` in `dir`, returning the file written.
pub fn record(dir: &Path, contract: &Contract) -> Result<PathBuf, CompatError> {
    let path = path(dir, &contract.domain);
    let text = serde_json::to_string_pretty(contract).expect("a contract serializes") + "\n";
    std::fs::write(&path, text).map_err(|source| CompatError::Io {
        action: "write",
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// The contract of a compiled domain.
pub fn contract(d: &DomainMeta) -> Contract {
    Contract {
        domain: d.name.to_string(),
        version: d.version,
        templates: d
            .templates
            .iter()
            .filter(|t| !t.internal)
            .map(|t| {
                let fields = t.fields.iter().map(|f| (f.name.to_string(), field(f)));
                (
                    t.name.to_string(),
                    TemplateContract {
                        fingerprint: t.fingerprint.to_string(),
                        fields: fields.collect(),
                    },
                )
            })
            .collect(),
        queries: d
            .queries
            .iter()
            .map(|q| {
                let params = q.params.iter().map(|p| {
                    let ty = match p.kind {
                        ParamKind::Field(f) => kind_name(&f.kind),
                        ParamKind::Id(t) => format!("id of {}", t.name),
                        ParamKind::Token(set) => format!("token of {}", set.name),
                    };
                    let param = ParamContract {
                        ty,
                        required: !p.optional,
                        list: p.list,
                    };
                    (p.name.to_string(), param)
                });
                (
                    q.name.to_string(),
                    QueryContract {
                        params: params.collect(),
                    },
                )
            })
            .collect(),
    }
}

fn kind_name(kind: &FieldKind) -> String {
    match kind {
        FieldKind::String { .. } => "string".into(),
        FieldKind::Text { .. } => "text".into(),
        FieldKind::Integer { .. } => "integer".into(),
        FieldKind::BigInt { .. } => "bigint".into(),
        FieldKind::Float { .. } => "float".into(),
        FieldKind::Bool => "bool".into(),
        FieldKind::Timestamp => "timestamp".into(),
        FieldKind::Date => "date".into(),
        FieldKind::Uuid => "uuid".into(),
        FieldKind::Enum { .. } => "enum".into(),
        FieldKind::Json => "json".into(),
        FieldKind::Ref { template, .. } => format!("ref to {template}"),
    }
}

fn field(f: &FieldMeta) -> FieldContract {
    let mut c = FieldContract {
        ty: kind_name(&f.kind),
        required: !f.optional && f.default.is_none() && f.set.is_none(),
        min: None,
        max: None,
        pattern: None,
        values: None,
    };
    // Bounds are compared as numbers; declared bounds are small enough to be exact.
    match f.kind {
        FieldKind::String { min, max, pattern } => {
            c.min = Some(f64::from(min));
            c.max = Some(f64::from(max));
            c.pattern = pattern.map(str::to_string);
        }
        FieldKind::Text { max } => c.max = max.map(f64::from),
        FieldKind::Integer { min, max } | FieldKind::BigInt { min, max } => {
            c.min = Some(min as f64);
            c.max = Some(max as f64);
        }
        FieldKind::Float { min, max } => {
            c.min = min;
            c.max = max;
        }
        FieldKind::Enum { values } => {
            c.values = Some(values.iter().map(|v| v.to_string()).collect());
        }
        _ => {}
    }
    c
}

/// The changes from `recorded` to `current` that break clients of `recorded`.
pub fn compare(recorded: &Contract, current: &Contract) -> Report {
    let mut breaking = Vec::new();
    for (name, old) in &recorded.templates {
        let Some(new) = current.templates.get(name) else {
            breaking.push(format!("template {name} was removed"));
            continue;
        };
        for (f, was) in &old.fields {
            match new.fields.get(f) {
                None => breaking.push(format!("field {name}.{f} was removed")),
                Some(is) => narrowed(&format!("field {name}.{f}"), was, is, &mut breaking),
            }
        }
        for (f, is) in &new.fields {
            if is.required && !old.fields.contains_key(f) {
                breaking.push(format!(
                    "field {name}.{f} is new and required: creates of older clients lack it"
                ));
            }
        }
    }
    for (name, old) in &recorded.queries {
        let Some(new) = current.queries.get(name) else {
            breaking.push(format!("query {name} was removed"));
            continue;
        };
        for (p, was) in &old.params {
            let at = format!("parameter {p} of query {name}");
            match new.params.get(p) {
                None => breaking.push(format!("{at} was removed")),
                Some(is) => {
                    if is.ty != was.ty || is.list != was.list {
                        breaking.push(format!(
                            "{at} changed type from {} to {}",
                            shown(was),
                            shown(is)
                        ));
                    }
                    if is.required && !was.required {
                        breaking.push(format!("{at} became required"));
                    }
                }
            }
        }
        for (p, is) in &new.params {
            if is.required && !old.params.contains_key(p) {
                breaking.push(format!("parameter {p} of query {name} is new and required"));
            }
        }
    }
    Report {
        breaking,
        changed: without_version(recorded) != without_version(current),
        recorded_version: recorded.version,
        version: current.version,
    }
}

fn without_version(
    c: &Contract,
) -> (
    &BTreeMap<String, TemplateContract>,
    &BTreeMap<String, QueryContract>,
) {
    (&c.templates, &c.queries)
}

fn shown(p: &ParamContract) -> String {
    if p.list {
        format!("a list of {}", p.ty)
    } else {
        p.ty.clone()
    }
}

/// What narrows a field: another type, tighter bounds or pattern, fewer enum values,
/// optional become required.
fn narrowed(at: &str, was: &FieldContract, is: &FieldContract, out: &mut Vec<String>) {
    if was.ty != is.ty {
        out.push(format!("{at} changed type from {} to {}", was.ty, is.ty));
        return;
    }
    let bound = |b: Option<f64>| b.map_or("none".to_string(), |v| v.to_string());
    let raised = match (was.min, is.min) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => b > a,
        _ => false,
    };
    if raised {
        out.push(format!(
            "{at} minimum raised from {} to {}",
            bound(was.min),
            bound(is.min)
        ));
    }
    let lowered = match (was.max, is.max) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => b < a,
        _ => false,
    };
    if lowered {
        out.push(format!(
            "{at} maximum lowered from {} to {}",
            bound(was.max),
            bound(is.max)
        ));
    }
    if is.pattern.is_some() && is.pattern != was.pattern {
        out.push(format!(
            "{at} pattern changed from {} to {}",
            was.pattern.as_deref().unwrap_or("none"),
            is.pattern.as_deref().unwrap_or("none")
        ));
    }
    if let (Some(old), Some(new)) = (&was.values, &is.values) {
        let gone: Vec<&str> = old
            .iter()
            .filter(|v| !new.contains(v))
            .map(String::as_str)
            .collect();
        if !gone.is_empty() {
            out.push(format!("{at} no longer accepts {}", gone.join(", ")));
        }
    }
    if is.required && !was.required {
        out.push(format!("{at} became required"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(min: f64, max: f64) -> FieldContract {
        FieldContract {
            ty: "string".into(),
            required: true,
            min: Some(min),
            max: Some(max),
            pattern: None,
            values: None,
        }
    }

    fn contract(
        fields: Vec<(&str, FieldContract)>,
        params: Vec<(&str, ParamContract)>,
    ) -> Contract {
        let template = TemplateContract {
            fingerprint: "0".into(),
            fields: fields
                .into_iter()
                .map(|(n, f)| (n.to_string(), f))
                .collect(),
        };
        let query = QueryContract {
            params: params
                .into_iter()
                .map(|(n, p)| (n.to_string(), p))
                .collect(),
        };
        Contract {
            domain: "d".into(),
            version: 1,
            templates: [("member".to_string(), template)].into(),
            queries: [("by_tag".to_string(), query)].into(),
        }
    }

    fn param(ty: &str, required: bool) -> ParamContract {
        ParamContract {
            ty: ty.into(),
            required,
            list: false,
        }
    }

    /// The base every case changes one thing of.
    fn base() -> Contract {
        let mut level = string(0.0, 0.0);
        level.ty = "enum".into();
        level.min = None;
        level.max = None;
        level.values = Some(vec!["low".into(), "high".into()]);
        let mut bio = string(0.0, 160.0);
        bio.required = false;
        contract(
            vec![
                ("handle", string(3.0, 15.0)),
                ("level", level),
                ("bio", bio),
            ],
            vec![
                ("tag", param("string", true)),
                ("since", param("timestamp", false)),
            ],
        )
    }

    fn breaking(change: impl FnOnce(&mut Contract)) -> Vec<String> {
        let mut current = base();
        change(&mut current);
        compare(&base(), &current).breaking
    }

    fn member(c: &mut Contract) -> &mut BTreeMap<String, FieldContract> {
        &mut c.templates.get_mut("member").unwrap().fields
    }

    fn query(c: &mut Contract) -> &mut BTreeMap<String, ParamContract> {
        &mut c.queries.get_mut("by_tag").unwrap().params
    }

    #[test]
    fn every_breaking_kind_is_reported() {
        assert_eq!(
            breaking(|c| c.templates.clear()),
            ["template member was removed"]
        );
        assert_eq!(
            breaking(|c| drop(member(c).remove("bio"))),
            ["field member.bio was removed"]
        );
        assert_eq!(
            breaking(|c| member(c).get_mut("handle").unwrap().max = Some(10.0)),
            ["field member.handle maximum lowered from 15 to 10"]
        );
        assert_eq!(
            breaking(|c| member(c).get_mut("handle").unwrap().min = Some(4.0)),
            ["field member.handle minimum raised from 3 to 4"]
        );
        assert_eq!(
            breaking(|c| member(c).get_mut("handle").unwrap().pattern = Some("^[a-z]+$".into())),
            ["field member.handle pattern changed from none to ^[a-z]+$"]
        );
        assert_eq!(
            breaking(|c| member(c).get_mut("level").unwrap().values = Some(vec!["high".into()])),
            ["field member.level no longer accepts low"]
        );
        assert_eq!(
            breaking(|c| member(c).get_mut("bio").unwrap().required = true),
            ["field member.bio became required"]
        );
        assert_eq!(
            breaking(|c| member(c).get_mut("bio").unwrap().ty = "text".into()),
            ["field member.bio changed type from string to text"]
        );
        assert_eq!(
            breaking(|c| drop(member(c).insert("age".into(), string(0.0, 3.0)))),
            ["field member.age is new and required: creates of older clients lack it"]
        );
        assert_eq!(
            breaking(|c| c.queries.clear()),
            ["query by_tag was removed"]
        );
        assert_eq!(
            breaking(|c| drop(query(c).remove("tag"))),
            ["parameter tag of query by_tag was removed"]
        );
        assert_eq!(
            breaking(|c| query(c).get_mut("since").unwrap().required = true),
            ["parameter since of query by_tag became required"]
        );
    }

    #[test]
    fn widening_is_not_breaking_but_is_a_change() {
        let mut current = base();
        member(&mut current).get_mut("handle").unwrap().max = Some(30.0);
        let mut bio = string(0.0, 10.0);
        bio.required = false;
        member(&mut current).insert("nickname".into(), bio);
        query(&mut current).insert("limit".into(), param("integer", false));
        let report = compare(&base(), &current);
        assert!(report.breaking.is_empty(), "{:?}", report.breaking);
        assert!(report.changed && report.version_unchanged());
        current.version = 2;
        assert!(!compare(&base(), &current).version_unchanged());
        assert!(!compare(&base(), &base()).changed);
    }
}
