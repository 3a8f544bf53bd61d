//! "Did you mean": the known name closest to a misspelt one, for error messages.

/// The known name closest to `word`, if it is close enough to be a likely typo (the
/// declaration compiler's rule, with a swap of two neighbours counted as one edit).
pub(crate) fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    // A word this much longer than every name is no typo of any; it may be client input of
    // any length, and the distance costs its length times the name's.
    let longest = known.iter().map(|k| k.len()).max().unwrap_or(0);
    if word.len() > 2 * longest + 2 {
        return None;
    }
    known
        .iter()
        .map(|k| (edit_distance(&word.to_lowercase(), k), *k))
        .filter(|(d, k)| *d <= (k.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// ` (did you mean `x`?)` when `word` is a likely typo of one of `known`, else nothing.
pub(crate) fn did_you_mean(word: &str, known: &[&str]) -> String {
    closest(word, known).map_or_else(String::new, |k| format!(" (did you mean `{k}`?)"))
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j - 1] + cost)
                .min(d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_matched_and_strangers_are_not() {
        let known = ["create", "fetch", "update", "delete", "list"];
        assert_eq!(closest("fecth", &known), Some("fetch"));
        assert_eq!(closest("Create", &known), Some("create"));
        assert_eq!(closest("lsit", &known), Some("list"));
        assert_eq!(closest("get", &known), None);
        assert_eq!(closest(&"fetch".repeat(40_000), &known), None);
    }
}
