//! The page's HTML, rendered on the server. Every value that comes from outside the code
//! (record data, headers, node names, ids typed in a form) goes through [`esc`]; the CSP
//! header of every page forbids inline scripts besides, so a value that slipped through
//! would still not run.

use std::fmt::Write;

use serde_json::Value as Json;

/// Text safe inside an element or a quoted attribute.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: the layout around `body`.
pub(crate) fn layout(title: &str, admin_node: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title} · BEDS</title>\
         <link rel=\"stylesheet\" href=\"/assets/page.css\"></head>\
         <body><header><a href=\"/\">BEDS operator</a>\
         <span class=\"muted\">served by admin node <b id=\"admin-node\">{node}</b> · read-only</span>\
         </header><main>{body}</main>\
         <script src=\"/assets/page.js\"></script></body></html>\n",
        title = esc(title),
        node = esc(admin_node),
    )
}

/// A node as the nodes panel shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeRow {
    pub node: String,
    pub role: String,
    pub version: String,
    /// `ok`, `lost`, or what is not ready.
    pub health: String,
    pub healthy: bool,
    /// (lane, state, in flight).
    pub lanes: Vec<(String, String, u64)>,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
}

pub(crate) fn nodes(rows: &[NodeRow]) -> String {
    let mut out = String::from(
        "<section id=\"nodes\"><h2>Nodes</h2><table><thead><tr><th>node</th><th>role</th>\
         <th>version</th><th>health</th><th>lanes</th><th>last seen</th></tr></thead><tbody>",
    );
    if rows.is_empty() {
        out.push_str("<tr><td colspan=\"6\" class=\"muted\">no heartbeat received yet</td></tr>");
    }
    for r in rows {
        let lanes: Vec<String> = r
            .lanes
            .iter()
            .map(|(lane, state, in_flight)| {
                format!(
                    "<span class=\"lane {cls}\">{} {} · {in_flight} in flight</span>",
                    esc(lane),
                    esc(state),
                    cls = if state == "consuming" { "ok" } else { "warn" },
                )
            })
            .collect();
        let _ = write!(
            out,
            "<tr class=\"node\" data-node=\"{n}\"><td class=\"node-name\">{n}</td><td>{}</td>\
             <td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.role),
            esc(&r.version),
            if r.healthy { "ok" } else { "bad" },
            esc(&r.health),
            lanes.join(" "),
            ago(r.last_seen_ms),
            n = esc(&r.node),
        );
    }
    out.push_str("</tbody></table></section>");
    out
}

/// The plots panel: empty frames the script fills from `/api/series` every 2 s.
pub(crate) fn plots() -> String {
    "<section id=\"plots\"><h2>Throughput and latency per lane <span class=\"muted\">\
     (live, every 2 s)</span></h2><div id=\"plot-grid\" data-source=\"/api/series\">\
     <p class=\"muted\" id=\"plot-status\">waiting for the first samples…</p></div></section>"
        .to_string()
}

/// One dead letter as the page shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Letter {
    pub code: String,
    pub reason: String,
    pub trusted: bool,
    pub headers: Vec<(String, String)>,
    /// The start of its body, as text.
    pub body: String,
}

/// One dead-letter queue: its depth and the letters looked at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LetterQueue {
    pub queue: String,
    pub depth: u32,
    pub letters: Vec<Letter>,
}

/// Dead letters grouped by queue and code, each group with its letters' headers.
pub(crate) fn dead_letters(queues: &[LetterQueue], limit: usize, error: Option<&str>) -> String {
    let mut out = String::from("<section id=\"dead-letters\"><h2>Dead letters by reason</h2>");
    if let Some(e) = error {
        let _ = write!(out, "<p class=\"bad\">{}</p>", esc(e));
    }
    out.push_str(
        "<table><thead><tr><th>queue</th><th>in DLQ</th><th>code</th><th>letters</th>\
         <th>reason</th></tr></thead><tbody>",
    );
    for q in queues {
        let mut groups: Vec<(&str, Vec<&Letter>)> = Vec::new();
        for l in &q.letters {
            match groups.iter_mut().find(|(code, _)| *code == l.code) {
                Some((_, ls)) => ls.push(l),
                None => groups.push((&l.code, vec![l])),
            }
        }
        if groups.is_empty() {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td colspan=\"3\" class=\"muted\">none</td></tr>",
                esc(&q.queue),
                q.depth
            );
        }
        for (code, letters) in groups {
            // The first letter of each group open, so its headers show without a click.
            let details: String = letters
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let headers: String = l
                        .headers
                        .iter()
                        .map(|(k, v)| format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v)))
                        .collect();
                    format!(
                        "<details{}><summary>{}{}</summary><table class=\"headers\">{headers}\
                         </table><pre>{}</pre></details>",
                        if i == 0 { " open" } else { "" },
                        esc(&l.reason),
                        if l.trusted { "" } else { " (unsigned)" },
                        esc(&l.body)
                    )
                })
                .collect();
            let _ = write!(
                out,
                "<tr class=\"dead-letter\"><td>{}</td><td>{}</td><td class=\"bad\">{}</td>\
                 <td>{}</td><td>{details}</td></tr>",
                esc(&q.queue),
                q.depth,
                esc(code),
                letters.len(),
            );
        }
    }
    let _ = write!(
        out,
        "</tbody></table><p class=\"muted\">The first {limit} letters of each queue, read \
         without removing them; <code>beds dlq</code> replays and purges.</p></section>"
    );
    out
}

/// The forms that lead to a conversation's lineage and a record's trail.
pub(crate) fn forms(lineage_id: &str) -> String {
    format!(
        "<section id=\"look-up\"><h2>Look up</h2>\
         <form method=\"get\" action=\"/lineage\"><label>Lineage of a correlation id (or \
         any message id of it) <input name=\"id\" size=\"40\" value=\"{}\" \
         placeholder=\"0193…\"></label> <button>Show tree</button></form>\
         <form method=\"get\" action=\"/audit\"><label>Audit trail and journal of a record: \
         template <input name=\"template\" size=\"18\" placeholder=\"domain.template\"></label> \
         <label>key <input name=\"key\" size=\"40\" placeholder=\"id\"></label> \
         <button>Show record</button></form></section>",
        esc(lineage_id)
    )
}

/// A lineage record, from the contract in wiki/envelope.md.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LineageRow {
    pub depth: usize,
    pub kind: String,
    pub name: String,
    pub node: String,
    pub outcome: String,
    /// Milliseconds after the root.
    pub offset_ms: f64,
    pub duration_us: Option<u64>,
    pub id: String,
    /// Its parent is not among the records.
    pub orphan: bool,
}

pub(crate) fn lineage(id: &str, rows: &[LineageRow], error: Option<&str>) -> String {
    let mut out = format!(
        "<section id=\"lineage\"><h2>Lineage of <code>{}</code></h2>",
        esc(id)
    );
    if let Some(e) = error {
        let _ = write!(out, "<p class=\"bad\">{}</p>", esc(e));
    } else if rows.is_empty() {
        out.push_str(
            "<p class=\"muted\">No record of this conversation (not sampled, expired, or \
             not arrived yet).</p>",
        );
    } else {
        out.push_str(
            "<table class=\"tree\"><thead><tr><th>record</th><th>name</th><th>node</th>\
             <th>outcome</th><th>at</th><th>took</th></tr></thead><tbody>",
        );
        for r in rows {
            let took = r
                .duration_us
                .map(|us| format!("{:.2} ms", us as f64 / 1000.0))
                .unwrap_or_default();
            let _ = write!(
                out,
                "<tr class=\"lineage-record\" data-type=\"{kind}\" data-id=\"{id}\">\
                 <td style=\"padding-left:{pad}em\">{mark}<b>{kind}</b>{orphan}</td>\
                 <td>{}</td><td>{}</td><td class=\"{cls}\">{}</td><td>+{:.2} ms</td>\
                 <td>{took}</td></tr>",
                esc(&r.name),
                esc(&r.node),
                esc(&r.outcome),
                r.offset_ms,
                kind = esc(&r.kind),
                id = esc(&r.id),
                pad = 0.5 + 1.5 * r.depth as f64,
                mark = if r.depth > 0 { "└ " } else { "" },
                orphan = if r.orphan {
                    " <span class=\"warn\">(parent missing)</span>"
                } else {
                    ""
                },
                cls = if r.outcome == "ok" || r.outcome.is_empty() {
                    "ok"
                } else {
                    "bad"
                },
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
    out
}

/// A list of JSON objects (audit records, journal versions) as a table: one column per
/// key, those of `first` first, then the others in the order first seen; nested values as
/// compact JSON text.
pub(crate) fn records(
    id: &str,
    title: &str,
    first: &[&str],
    items: &[Json],
    note: Option<&str>,
) -> String {
    let mut out = format!("<section id=\"{id}\"><h2>{}</h2>", esc(title));
    if let Some(n) = note {
        let _ = write!(out, "<p class=\"muted\">{}</p>", esc(n));
    }
    if items.is_empty() {
        out.push_str("<p class=\"muted\">none</p></section>");
        return out;
    }
    let mut columns: Vec<&str> = first
        .iter()
        .copied()
        .filter(|c| items.iter().any(|i| i.get(c).is_some()))
        .collect();
    for item in items {
        if let Json::Object(m) = item {
            for k in m.keys() {
                if !columns.contains(&k.as_str()) {
                    columns.push(k);
                }
            }
        }
    }
    out.push_str("<table><thead><tr>");
    for c in &columns {
        let _ = write!(out, "<th>{}</th>", esc(c));
    }
    out.push_str("</tr></thead><tbody>");
    for item in items {
        out.push_str("<tr class=\"record\">");
        for c in &columns {
            let cell = item.get(c).map(text).unwrap_or_default();
            let _ = write!(out, "<td>{}</td>", esc(&cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></section>");
    out
}

/// A paragraph saying why a panel is empty or failed.
pub(crate) fn notice(id: &str, title: &str, text: &str) -> String {
    format!(
        "<section id=\"{id}\"><h2>{}</h2><p class=\"bad\">{}</p></section>",
        esc(title),
        esc(text)
    )
}

fn text(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

fn ago(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms ago")
    } else {
        format!("{:.1} s ago", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn markup_in_data_is_shown_as_text() {
        let evil = "<script>alert(1)</script><img src=x onerror=\"alert('x')\">&";
        assert_eq!(
            esc(evil),
            "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&quot;alert(&#39;x&#39;)&quot;&gt;&amp;"
        );
        let page = records(
            "audit",
            "Audit",
            &[],
            &[json!({ "after": { "body": evil } })],
            None,
        );
        assert!(!page.contains("<script>") && !page.contains("<img"));
        assert!(page.contains("&lt;script&gt;"));
        let page = nodes(&[NodeRow {
            node: evil.into(),
            role: evil.into(),
            version: evil.into(),
            health: evil.into(),
            healthy: false,
            lanes: vec![(evil.into(), evil.into(), 1)],
            last_seen_ms: 1500,
        }]);
        assert!(!page.contains("<script>") && !page.contains("<img"));
        assert!(page.contains("1.5 s ago"));
    }

    #[test]
    fn dead_letters_are_grouped_by_code_with_their_headers() {
        let letter = |code: &str| Letter {
            code: code.into(),
            reason: format!("{code} happened"),
            trusted: true,
            headers: vec![("x-beds-error-code".into(), code.into())],
            body: "{}".into(),
        };
        let page = dead_letters(
            &[LetterQueue {
                queue: "t.rec.write".into(),
                depth: 3,
                letters: vec![letter("timeout"), letter("decode"), letter("timeout")],
            }],
            50,
            None,
        );
        assert_eq!(page.matches("class=\"dead-letter\"").count(), 2);
        assert!(page.contains("<td class=\"bad\">timeout</td><td>2</td>"));
        assert!(page.contains("<th>x-beds-error-code</th><td>decode</td>"));
    }

    #[test]
    fn records_get_a_column_per_key_the_chosen_ones_first() {
        let page = records(
            "journal",
            "Journal",
            &["version", "missing"],
            &[
                json!({"version": 2, "op": "update"}),
                json!({"version": 1, "extra": null}),
            ],
            None,
        );
        assert!(page.contains("<th>version</th><th>op</th><th>extra</th>"));
        assert!(page.contains("<td>1</td><td></td><td></td>"));
        assert!(!page.contains("missing"));
    }
}
