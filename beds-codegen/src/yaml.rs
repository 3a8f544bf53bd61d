//! A YAML tree that remembers where every node came from.
//!
//! serde_yaml reports only the first error and forgets positions once parsed; the
//! validator needs a line and column for every key it complains about, so domain files
//! are read into this small spanned tree from yaml-rust2's marked events.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column of a node in its source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        Pos {
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A scalar and whether it was written plain (unquoted), which decides whether
    /// `true` or `12` are a bool and a number or strings.
    Scalar(String, bool),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: Kind,
    pub pos: Pos,
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            Kind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            Kind::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match &self.kind {
            Kind::Scalar(s, true) => match s.as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match &self.kind {
            Kind::Scalar(s, true) => s.parse().ok(),
            _ => None,
        }
    }

    /// A plain integer or decimal number.
    pub fn as_f64(&self) -> Option<f64> {
        match &self.kind {
            Kind::Scalar(s, true) => s.parse::<f64>().ok().filter(|f| f.is_finite()),
            _ => None,
        }
    }

    /// What kind of node this is, for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar(..) if self.as_bool().is_some() => "a bool",
            Kind::Scalar(..) if self.as_i64().is_some() => "an integer",
            Kind::Scalar(s, true) if s == "~" || s == "null" || s.is_empty() => "null",
            Kind::Scalar(..) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// A syntax error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

enum Frame {
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<(Node, Node)>, Option<Node>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    error: Option<SyntaxError>,
}

impl Builder {
    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq(_, items)) => items.push(node),
            Some(Frame::Map(_, entries, key)) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from(mark);
        match ev {
            Event::Scalar(value, style, _, _) => {
                let plain = matches!(style, TScalarStyle::Plain);
                self.push(Node {
                    kind: Kind::Scalar(value, plain),
                    pos,
                });
            }
            Event::SequenceStart(..) => self.stack.push(Frame::Seq(pos, Vec::new())),
            Event::MappingStart(..) => self.stack.push(Frame::Map(pos, Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq(pos, items)) => Node {
                        kind: Kind::Seq(items),
                        pos,
                    },
                    Some(Frame::Map(pos, entries, _)) => Node {
                        kind: Kind::Map(entries),
                        pos,
                    },
                    None => return,
                };
                self.push(node);
            }
            Event::Alias(_) => {
                self.error.get_or_insert(SyntaxError {
                    pos,
                    message: "YAML aliases (*name) are not supported in domain files; \
                              write the value out"
                        .into(),
                });
            }
            _ => {}
        }
    }
}

/// Deeper nesting is refused: a domain file needs a handful of levels, and the tree is
/// walked (and dropped) recursively.
const MAX_NESTING: usize = 64;

/// Parses one YAML document into a spanned tree.
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    // Events are pulled one by one rather than through `Parser::load`, which recurses once
    // per nesting level and overflows the stack on a few thousand `- ` (found by fuzzing).
    loop {
        let (event, mark) = parser.next_token().map_err(|e| SyntaxError {
            pos: Pos::from(*e.marker()),
            message: e.info().to_string(),
        })?;
        let last = matches!(event, Event::DocumentEnd | Event::StreamEnd);
        builder.on_event(event, mark);
        if builder.stack.len() > MAX_NESTING {
            return Err(SyntaxError {
                pos: Pos::from(mark),
                message: format!(
                    "the YAML nests deeper than {MAX_NESTING} levels; a domain file needs far \
                     fewer (look for a runaway `- ` or indentation)"
                ),
            });
        }
        if last {
            break;
        }
    }
    if let Some(err) = builder.error {
        return Err(err);
    }
    builder.root.ok_or(SyntaxError {
        pos: Pos { line: 1, col: 1 },
        message: "the file is empty; a domain file starts with `domain: <name>`".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_point_at_keys_and_values() {
        let src = "domain: d\ntemplates:\n  a:\n    fields: { x: { type: string } }\n";
        let root = parse(src).unwrap();
        let map = root.as_map().unwrap();
        assert_eq!(map[0].0.pos, Pos { line: 1, col: 1 });
        let templates = map[1].1.as_map().unwrap();
        assert_eq!(templates[0].0.as_str(), Some("a"));
        assert_eq!(templates[0].0.pos, Pos { line: 3, col: 3 });
        let fields = templates[0].1.as_map().unwrap()[0].1.as_map().unwrap();
        assert_eq!(fields[0].0.pos, Pos { line: 4, col: 15 });
    }

    #[test]
    fn quoted_scalars_are_strings() {
        let root = parse("a: 'true'\nb: true\nc: 12\n").unwrap();
        let m = root.as_map().unwrap();
        assert_eq!(m[0].1.as_bool(), None);
        assert_eq!(m[1].1.as_bool(), Some(true));
        assert_eq!(m[2].1.as_i64(), Some(12));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let indented: String = (0..5_000)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect();
        for source in ["- ".repeat(50_000), indented] {
            let err = parse(&source).map(|_| ()).unwrap_err();
            assert!(err.message.contains("deeper than 64"), "{err:?}");
        }
        assert!(parse(&"- ".repeat(60)).is_ok());
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
    }
}
