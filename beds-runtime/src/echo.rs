//! Client input repeated in error messages, bounded: a reply never grows with what a
//! client sent, however many or however long the names it got wrong.

use std::borrow::Cow;

use serde_json::Value as Json;

/// The most characters of one piece of client input an error message repeats.
pub const MAX_ECHO_CHARS: usize = 64;

/// `text` whole if short, else its first [`MAX_ECHO_CHARS`] characters and `…`.
pub fn clip(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

/// A JSON value as an error message shows it, clipped like [`clip`].
pub fn json(value: &Json) -> String {
    match value {
        // Containers are named, not printed: their text is unbounded work and says little.
        Json::Array(_) => "a list".to_string(),
        Json::Object(_) => "an object".to_string(),
        scalar => clip(&scalar.to_string()).into_owned(),
    }
}

/// `a, b, c` of at most `max` names, each clipped, then `and N more` for the rest.
pub fn list<'a>(names: impl ExactSizeIterator<Item = &'a str>, max: usize) -> String {
    let total = names.len();
    let mut out: Vec<String> = names.take(max).map(|n| clip(n).into_owned()).collect();
    if total > max {
        out.push(format!("and {} more", total - max));
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_clipped_on_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(200_000);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(clipped.ends_with('…'));
        assert_eq!(
            json(&Json::String(long)).chars().count(),
            MAX_ECHO_CHARS + 1
        );
        assert_eq!(json(&serde_json::json!([1, 2])), "a list");
    }

    #[test]
    fn lists_are_capped_with_a_count_of_the_rest() {
        let names: Vec<String> = (0..100_000).map(|i| format!("f{i}")).collect();
        let shown = list(names.iter().map(String::as_str), 3);
        assert_eq!(shown, "f0, f1, f2, and 99997 more");
        assert_eq!(list(["a", "b"].into_iter(), 3), "a, b");
    }
}
