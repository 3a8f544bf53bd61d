//! Diagnostics: every problem in a domain file, collected before anything is generated.

use std::fmt;

use crate::yaml::Pos;

/// One problem in a declaration: where it is, what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub pos: Pos,
    /// Dotted key path, e.g. `templates.account.fields.email.type`.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: error", self.file, self.pos.line, self.pos.col)?;
        if !self.path.is_empty() {
            write!(f, " at `{}`", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// All the diagnostics of one compilation; a non-empty set fails the build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "{n} error{} in domain declarations",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Diagnostics {}

/// Collects diagnostics for one file while the validator walks it, like serde_derive's
/// `Ctxt`: it must be consumed by [`Ctx::check`], which alone decides whether the model
/// the validator built may be used; dropping it unchecked is a bug and panics.
#[derive(Debug)]
pub(crate) struct Ctx {
    file: String,
    /// `None` once checked.
    diags: Option<Vec<Diagnostic>>,
}

impl Ctx {
    pub(crate) fn new(file: &str) -> Self {
        Ctx {
            file: file.to_string(),
            diags: Some(Vec::new()),
        }
    }

    /// Ok when nothing was reported; else every diagnostic, in the order found.
    pub(crate) fn check(mut self) -> Result<(), Diagnostics> {
        let diags = self.diags.take().unwrap_or_default();
        if diags.is_empty() {
            Ok(())
        } else {
            Err(Diagnostics(diags))
        }
    }

    pub(crate) fn error_hint(
        &mut self,
        pos: Pos,
        path: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(pos, path, message.into(), Some(hint.into()));
    }

    fn push(&mut self, pos: Pos, path: &str, message: String, hint: Option<String>) {
        let diags = self
            .diags
            .as_mut()
            .expect("a checked Ctx takes no more errors");
        diags.push(Diagnostic {
            file: self.file.clone(),
            pos,
            path: path.to_string(),
            message,
            hint,
        });
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if self.diags.is_some() && !std::thread::panicking() {
            panic!("diagnostics of {} dropped without Ctx::check", self.file);
        }
    }
}

/// The known name closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, k)| *d <= (k.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// A hint naming the closest known word, or listing them all.
pub(crate) fn suggest(word: &str, known: &[&str]) -> String {
    match closest(word, known) {
        Some(k) => format!("did you mean `{k}`?"),
        None => format!("expected one of: {}", known.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "dropped without Ctx::check")]
    fn an_unchecked_context_panics() {
        let _cx = Ctx::new("domains/d.yaml");
    }

    #[test]
    fn a_checked_context_yields_its_errors() {
        let cx = Ctx::new("domains/d.yaml");
        assert_eq!(cx.check(), Ok(()));
        let mut cx = Ctx::new("domains/d.yaml");
        cx.error_hint(Pos { line: 2, col: 3 }, "a", "bad", "fix it");
        assert_eq!(cx.check().unwrap_err().0.len(), 1);
    }

    #[test]
    fn typos_find_their_word() {
        let known = ["string", "integer", "bool", "timestamp", "uuid"];
        assert_eq!(closest("strng", &known), Some("string"));
        assert_eq!(closest("timestmp", &known), Some("timestamp"));
        assert_eq!(closest("blob", &known), None);
    }
}
