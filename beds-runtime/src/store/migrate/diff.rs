//! The differences between a live schema and the declared one.

use std::fmt;

use super::{Column, Index, Schema};

/// One difference. "New" means declared but missing from the database (additive);
/// "dropped" means present in the database but not declared; dropped and retyped are
/// destructive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    NewTable(String),
    NewColumn {
        table: String,
        column: Column,
    },
    NewIndex {
        table: String,
        name: String,
        index: Index,
    },
    /// A declared foreign key or check the existing table lacks.
    NewConstraint {
        table: String,
        text: String,
    },
    DroppedTable(String),
    DroppedColumn {
        table: String,
        column: String,
    },
    DroppedIndex {
        table: String,
        name: String,
    },
    DroppedConstraint {
        table: String,
        text: String,
    },
    /// The column exists with another type or nullability.
    Retyped {
        table: String,
        live: Column,
        declared: Column,
    },
    /// The index exists with other columns or uniqueness.
    ChangedIndex {
        table: String,
        name: String,
        live: Index,
        declared: Index,
    },
}

impl Change {
    /// Whether resolving it destroys data (or an index a query may depend on).
    pub fn destructive(&self) -> bool {
        matches!(
            self,
            Change::DroppedTable(_)
                | Change::DroppedColumn { .. }
                | Change::DroppedIndex { .. }
                | Change::DroppedConstraint { .. }
                | Change::Retyped { .. }
                | Change::ChangedIndex { .. }
        )
    }

    /// Tables and indexes the declarations do not know may be the DBA's own (another
    /// role's tables, a tuning index): a node serves beside them.
    pub(super) fn tolerated_at_start(&self) -> bool {
        matches!(self, Change::DroppedTable(_) | Change::DroppedIndex { .. })
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::NewTable(t) => write!(f, "missing table {t}"),
            Change::NewColumn { table, column } => {
                write!(f, "missing column {table}.{} ({column})", column.name)
            }
            Change::NewIndex { table, name, index } => {
                write!(f, "missing index {name} on {table} {index}")
            }
            Change::NewConstraint { table, text } => {
                write!(f, "missing constraint on {table}: {text}")
            }
            Change::DroppedTable(t) => write!(f, "table {t} is not declared (drop)"),
            Change::DroppedColumn { table, column } => {
                write!(f, "column {table}.{column} is not declared (drop)")
            }
            Change::DroppedIndex { table, name } => {
                write!(f, "index {name} on {table} is not declared (drop)")
            }
            Change::DroppedConstraint { table, text } => {
                write!(f, "constraint on {table} is not declared: {text}")
            }
            Change::Retyped {
                table,
                live,
                declared,
            } => write!(
                f,
                "column {table}.{} is {live} in the database but declared {declared} (retype)",
                live.name
            ),
            Change::ChangedIndex {
                table,
                name,
                live,
                declared,
            } => write!(
                f,
                "index {name} on {table} is {live} in the database but declared {declared} (rebuild)"
            ),
        }
    }
}

/// What turns `live` into `expected`, tables in name order. Column defaults are not
/// compared: every insert of BEDS names every column, so a database default never decides
/// a stored value (a migration adding a required column leaves its default behind).
pub fn compare(live: &Schema, expected: &Schema) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, want) in &expected.tables {
        let Some(have) = live.tables.get(name) else {
            out.push(Change::NewTable(name.clone()));
            continue;
        };
        let mut added = Vec::new();
        for col in &want.columns {
            match have.columns.iter().find(|c| c.name == col.name) {
                None => {
                    added.push(col.name.as_str());
                    out.push(Change::NewColumn {
                        table: name.clone(),
                        column: col.clone(),
                    });
                }
                Some(c) if c.ty != col.ty || c.not_null != col.not_null => {
                    out.push(Change::Retyped {
                        table: name.clone(),
                        live: c.clone(),
                        declared: col.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        for col in &have.columns {
            if !want.columns.iter().any(|c| c.name == col.name) {
                out.push(Change::DroppedColumn {
                    table: name.clone(),
                    column: col.name.clone(),
                });
            }
        }
        for (index, def) in &want.indexes {
            match have.indexes.get(index) {
                None => out.push(Change::NewIndex {
                    table: name.clone(),
                    name: index.clone(),
                    index: def.clone(),
                }),
                Some(h) if h != def => out.push(Change::ChangedIndex {
                    table: name.clone(),
                    name: index.clone(),
                    live: h.clone(),
                    declared: def.clone(),
                }),
                Some(_) => {}
            }
        }
        for index in have.indexes.keys() {
            if !want.indexes.contains_key(index) {
                out.push(Change::DroppedIndex {
                    table: name.clone(),
                    name: index.clone(),
                });
            }
        }
        // A reference of a new column comes with the column's definition.
        let by_new_column = |text: &str| added.iter().any(|c| mentions(text, c));
        for text in want.constraints.difference(&have.constraints) {
            if !by_new_column(text) {
                out.push(Change::NewConstraint {
                    table: name.clone(),
                    text: text.clone(),
                });
            }
        }
        for text in have.constraints.difference(&want.constraints) {
            out.push(Change::DroppedConstraint {
                table: name.clone(),
                text: text.clone(),
            });
        }
    }
    for name in live.tables.keys() {
        if !expected.tables.contains_key(name) {
            out.push(Change::DroppedTable(name.clone()));
        }
    }
    out
}

/// Whether a constraint's text names `column` as a whole word.
fn mentions(text: &str, column: &str) -> bool {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|word| word == column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::migrate::Table;

    fn col(name: &str, ty: &str, not_null: bool) -> Column {
        Column {
            name: name.into(),
            ty: ty.into(),
            not_null,
            default: None,
        }
    }

    fn schema(tables: Vec<(&str, Table)>) -> Schema {
        Schema {
            tables: tables
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect(),
        }
    }

    #[test]
    fn every_kind_of_difference_is_found() {
        let mut users = Table {
            columns: vec![col("id", "TEXT", true), col("bio", "TEXT", false)],
            ..Table::default()
        };
        users.indexes.insert(
            "users_bio_idx".into(),
            Index {
                unique: false,
                columns: vec!["bio".into()],
            },
        );
        users
            .constraints
            .insert("FOREIGN KEY (bio) REFERENCES x(id) ON DELETE CASCADE".into());
        let expected = schema(vec![("users", users.clone()), ("posts", Table::default())]);
        let mut live_users = Table {
            columns: vec![col("id", "INTEGER", true), col("old", "TEXT", false)],
            ..Table::default()
        };
        live_users.indexes.insert(
            "users_old_idx".into(),
            Index {
                unique: false,
                columns: vec!["old".into()],
            },
        );
        let live = schema(vec![("users", live_users), ("legacy", Table::default())]);
        let changes = compare(&live, &expected);
        let shown: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            shown,
            [
                "missing table posts",
                "column users.id is INTEGER NOT NULL in the database but declared TEXT NOT NULL (retype)",
                "missing column users.bio (TEXT)",
                "column users.old is not declared (drop)",
                "missing index users_bio_idx on users (bio)",
                "index users_old_idx on users is not declared (drop)",
                "table legacy is not declared (drop)",
            ],
            "the reference of the new column bio comes with it"
        );
        assert_eq!(
            changes.iter().filter(|c| c.destructive()).count(),
            4,
            "retype, dropped column, dropped index, dropped table"
        );
        assert!(compare(&expected, &expected).is_empty());
    }
}
