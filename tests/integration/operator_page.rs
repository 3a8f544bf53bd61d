//! The admin's operator page in a real headless Chromium: appServer, tercero and admin
//! in-process on a queue tag of their own, a SPEW write, then the page as the browser
//! renders it after its script ran (`--dump-dom`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use beds_runtime::{Op, Request};
use lapin::BasicProperties;
use serde_json::{Map, Value as Json, json};

use crate::support::{TestEnv, envelope};

/// How long the page may take to show what the test waits for.
const WITHIN: Duration = Duration::from_secs(45);
/// Virtual time Chromium gives the page's script: two polls of the plots at least.
const BUDGET_MS: u32 = 5_000;
/// What a user's display name and a spew's body hold: markup that must show as text.
const INJECTION: &str = "<img src=x onerror=\"document.title='pwned'\">";

/// Set to a PNG path, the test ends by taking the wiki's screenshot of the page there
/// (`BEDS_OPERATOR_PAGE_SCREENSHOT=$PWD/wiki/img/operator-page.png`), after some traffic.
const SCREENSHOT: &str = "BEDS_OPERATOR_PAGE_SCREENSHOT";

/// The Chromium binary; the test fails (never skips) without it: `.ci/run` installs it.
fn chromium() -> PathBuf {
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .expect(
            "the operator page test needs Chromium: install the distribution's `chromium` \
             package (`.ci/run` does)",
        )
}

/// `url` as headless Chromium leaves the DOM after `BUDGET_MS` of virtual time, bounded by
/// `timeout` so a hung browser fails the test.
async fn dump_dom(url: &str) -> String {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().expect("a Chromium profile directory");
        let out = Command::new("timeout")
            .args(["--kill-after=5", "60"])
            .arg(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--virtual-time-budget={BUDGET_MS}"))
            .arg("--dump-dom")
            .arg(&url)
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium failed on {url} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("a UTF-8 DOM")
    })
    .await
    .expect("the chromium thread")
}

/// Dumps `url` until `done` holds for its DOM, within [`WITHIN`]; fails with the last DOM.
async fn dump_until(url: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let end = tokio::time::Instant::now() + WITHIN;
    loop {
        let dom = dump_dom(url).await;
        if done(&dom) {
            return dom;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{url} did not show {what} within {WITHIN:?}; its DOM:\n{dom}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The `d` attributes of the plot lines the page's script drew.
fn plot_lines(dom: &str) -> Vec<&str> {
    dom.split("<path ")
        .skip(1)
        .filter(|p| p.contains("class=\"series\""))
        .filter_map(|p| p.split("d=\"").nth(1)?.split('"').next())
        .collect()
}

/// The lineage table rows: (type, id) of each.
fn lineage_rows(dom: &str) -> Vec<(String, String)> {
    dom.split("class=\"lineage-record\"")
        .skip(1)
        .filter_map(|row| {
            let attr = |name: &str| {
                let value = row.split(&format!("{name}=\"")).nth(1)?.split('"').next()?;
                Some(value.to_string())
            };
            Some((attr("data-type")?, attr("data-id")?))
        })
        .collect()
}

fn data(value: Json) -> Map<String, Json> {
    match value {
        Json::Object(m) => m,
        _ => unreachable!("an object"),
    }
}

#[tokio::test]
async fn the_page_shows_nodes_live_plots_and_a_writes_lineage_in_headless_chromium() {
    chromium();
    let mut env = TestEnv::new("operator_page");
    // Samples every half second: the plots have points within a few seconds.
    env.config.telemetry.heartbeat = beds_runtime::config::Millis(500);
    let nodes = env.start_counting().await;
    let admin = env.start_admin().await;
    let admin_node = format!("{}-admin", env.config.node);
    let base = format!(
        "http://{}",
        admin.http_addr().expect("the test config serves telemetry")
    );

    let client = env.client().await;
    let mut create = Request::new("spew", "user", Op::Create);
    create.data = Some(data(
        json!({"handle": "page_ada", "display_name": INJECTION}),
    ));
    let user = client.request(create).await.expect("the user is created");
    let user_id = user["id"].as_str().expect("an id").to_string();
    let mut spew = Request::new("spew", "spew", Op::Create);
    spew.data = Some(data(json!({"author": user_id, "body": INJECTION})));
    // The conversation whose tree the page shows: a request's correlation id is its id.
    let conversation = spew.id.to_string();
    client.request(spew).await.expect("the spew is created");
    // A read without `reply_to` cannot be answered: it is dead-lettered, with its reason.
    let raw = env.raw().await;
    raw.publish(
        &env.queue("rec.read"),
        &envelope("user", "fetch", json!({"key": {"id": user_id}})),
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_user_id(raw.login.as_str().into()),
    )
    .await;

    // The nodes with their names, and plot lines the script drew from polled samples.
    let dom = dump_until(
        &format!("{base}/"),
        "the app node and a drawn plot",
        |dom| {
            dom.contains(&format!("data-node=\"{}\"", env.config.node))
                && plot_lines(dom).iter().any(|d| d.matches('L').count() >= 1)
        },
    )
    .await;
    assert!(dom.contains(&format!("<b id=\"admin-node\">{}</b>", admin_node)));
    let line = plot_lines(&dom)
        .into_iter()
        .find(|d| d.contains('L'))
        .expect("a drawn line");
    assert!(line.starts_with('M'), "a path of points: {line}");
    assert!(
        dom.contains("data-polls=\""),
        "the script counted its polls"
    );

    // The dead letter, by reason, with its headers.
    let dom = dump_until(&format!("{base}/"), "the dead letter", |dom| {
        dom.contains("class=\"dead-letter\"")
    })
    .await;
    assert!(
        dom.contains("<td>rec.read</td><td>1</td><td class=\"bad\">no_reply_to</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("<th>x-beds-error-code</th><td>no_reply_to</td>"),
        "{dom}"
    );

    // The tree of the spew create: the request, its write event, the tercero's effect.
    let lineage = format!("{base}/lineage/{conversation}");
    let dom = dump_until(&lineage, "the request, event and effect records", |dom| {
        let types: Vec<String> = lineage_rows(dom).into_iter().map(|(t, _)| t).collect();
        ["request", "event", "effect"]
            .iter()
            .all(|t| types.iter().any(|have| have == t))
    })
    .await;
    let rows = lineage_rows(&dom);
    assert_eq!(
        rows[0],
        ("request".to_string(), conversation.clone()),
        "{dom}"
    );
    assert!(dom.contains("spew.spew.create"), "{dom}");

    // The form leads to the same tree.
    let dom = dump_dom(&format!("{base}/lineage?id={conversation}")).await;
    assert_eq!(lineage_rows(&dom).first(), rows.first(), "{dom}");

    // The user's audit trail and journal show the markup as text: nothing of it runs.
    let record = format!("{base}/audit/spew.user/{user_id}");
    let dom = dump_until(&record, "the user's audit record and version", |dom| {
        ["audit", "journal"].iter().all(|panel| {
            dom.split(&format!("<section id=\"{panel}\">"))
                .nth(1)
                .is_some_and(|s| {
                    s.split("</section>")
                        .next()
                        .unwrap_or("")
                        .contains("class=\"record\"")
                })
        })
    })
    .await;
    assert!(dom.contains("&lt;img src=x onerror="), "escaped: {dom}");
    assert!(!dom.contains("<img"), "no element from record data: {dom}");
    assert!(
        !dom.contains("<title>pwned"),
        "no script from record data: {dom}"
    );

    if let Some(path) = std::env::var_os(SCREENSHOT) {
        screenshot(&client, &user_id, &base, &PathBuf::from(path)).await;
    }
    admin.stop().await;
    nodes.stop().await;
}

/// Reads and writes for twenty seconds, so the plots have a history, and the page as a
/// 1280×1100 PNG at `path` while they go on.
async fn screenshot(
    client: &beds_runtime::Client,
    user_id: &str,
    base: &str,
    path: &std::path::Path,
) {
    let traffic = async {
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut i = 0u32;
        while tokio::time::Instant::now() < end {
            let mut fetch = Request::new("spew", "user", Op::Fetch);
            fetch.key = Some(data(json!({ "id": user_id })));
            client.request(fetch).await.expect("a fetch");
            if i.is_multiple_of(4) {
                let mut spew = Request::new("spew", "spew", Op::Create);
                spew.data = Some(data(
                    json!({"author": user_id, "body": format!("spew {i}")}),
                ));
                client.request(spew).await.expect("a spew");
            }
            i += 1;
            // An uneven pace, so the plots show some shape.
            tokio::time::sleep(Duration::from_millis(10 + u64::from(i % 40))).await;
        }
    };
    let url = format!("{base}/");
    let path = path.to_path_buf();
    let shot = async {
        tokio::time::sleep(Duration::from_secs(15)).await;
        tokio::task::spawn_blocking(move || {
            let profile = tempfile::tempdir().expect("a Chromium profile directory");
            let out = Command::new("timeout")
                .args(["--kill-after=5", "60"])
                .arg(chromium())
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(format!("--virtual-time-budget={BUDGET_MS}"))
                .arg(format!("--screenshot={}", path.display()))
                .arg("--window-size=1280,1100")
                .arg(&url)
                .output()
                .expect("run chromium");
            assert!(
                out.status.success() && path.is_file(),
                "the screenshot failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
        .await
        .expect("the chromium thread")
    };
    tokio::join!(traffic, shot);
}
