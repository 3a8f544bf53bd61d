//! `beds call`: the real binary against a node of the test's own queue tag: replies printed
//! as JSON, error replies on stderr with exit code 3, bad input refused locally with exit
//! code 2, no reply with exit code 4.

use std::process::{Command, Output};

use serde_json::Value as Json;

use crate::support::{TestEnv, repo_config_path};

/// Runs `beds call <args>` with the test's configuration, off the runtime's thread so the
/// node in this process keeps serving while the command waits.
async fn call(env: &TestEnv, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beds"));
    cmd.arg("call")
        .args(args)
        .arg("--config")
        .arg(repo_config_path())
        .env("BEDS_ENV", "test")
        .env("BEDS_AMQP__URL", &env.config.amqp.url)
        .env("BEDS_AMQP__QUEUE_TAG", &env.config.amqp.queue_tag);
    tokio::task::spawn_blocking(move || cmd.output().expect("run the beds binary"))
        .await
        .expect("the command's thread")
}

fn stdout_json(out: &Output) -> Json {
    assert_eq!(
        out.status.code(),
        Some(0),
        "beds call failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn replies_are_printed_as_json() {
    let env = TestEnv::new("call");
    let server = env.start().await;

    let ada = stdout_json(
        &call(
            &env,
            &[
                "spew.user.create",
                r#"{"handle":"ada","display_name":"Ada"}"#,
            ],
        )
        .await,
    );
    assert_eq!(ada["handle"], "ada");
    assert_eq!(ada["version"], 1);
    let id = ada["id"].as_str().expect("an id").to_string();

    // By unique key, by the bare id, and as the whole envelope.
    assert_eq!(
        stdout_json(&call(&env, &["spew.user.fetch", r#"{"handle":"ADA"}"#]).await),
        ada
    );
    assert_eq!(
        stdout_json(&call(&env, &["spew.user.fetch", &id]).await),
        ada
    );
    let raw = stdout_json(&call(&env, &["spew.user.fetch", &id, "--raw"]).await);
    assert_eq!(raw["v"], 1);
    assert_eq!(raw["status"], "ok");
    assert_eq!(raw["data"], ada);
    assert!(raw["correlation_id"].is_string() && raw["id"].is_string());

    let updated = stdout_json(
        &call(
            &env,
            &[
                "spew.user.update",
                r#"{"handle":"ada"}"#,
                "--data",
                r#"{"bio":"Counts."}"#,
                "--expect-version",
                "1",
            ],
        )
        .await,
    );
    assert_eq!(
        (updated["bio"].as_str(), updated["version"].as_i64()),
        (Some("Counts."), Some(2))
    );
    // Read options: the database, or the cache at version 2 or later.
    for options in [&["--consistency", "strong"][..], &["--min-version", "2"]] {
        let read =
            stdout_json(&call(&env, &[&["spew.user.fetch", &id][..], options].concat()).await);
        assert_eq!(read, updated, "{options:?}");
    }

    // A query, paged by --limit and the printed `next` passed back as --cursor.
    for body in ["first", "second"] {
        let spew = format!(r#"{{"author":"{id}","body":"{body}"}}"#);
        stdout_json(&call(&env, &["spew.spew.create", &spew]).await);
    }
    let params = format!(r#"{{"author":"{id}"}}"#);
    let page = stdout_json(&call(&env, &["spew.user_timeline", &params, "--limit", "1"]).await);
    assert_eq!(page["items"][0]["body"], "second");
    let next = page["next"].to_string();
    let page = stdout_json(
        &call(
            &env,
            &[
                "spew.user_timeline",
                &params,
                "--limit",
                "1",
                "--cursor",
                &next,
            ],
        )
        .await,
    );
    assert_eq!(page["items"][0]["body"], "first");
    let count = stdout_json(&call(&env, &["spew.spew_count_by_author", &params]).await);
    assert_eq!(count["count"], 2);

    stdout_json(&call(&env, &["spew.user.delete", &id]).await);
    server.stop().await;
}

#[tokio::test]
async fn an_error_reply_goes_to_stderr_with_exit_code_3() {
    let env = TestEnv::new("call_error");
    let server = env.start().await;
    let create = [
        "spew.user.create",
        r#"{"handle":"grace","display_name":"G"}"#,
    ];
    stdout_json(&call(&env, &create).await);

    let again = call(&env, &create).await;
    assert_eq!(again.status.code(), Some(3), "{}", stderr(&again));
    assert!(
        again.stdout.is_empty(),
        "only --raw prints an error reply on stdout"
    );
    let err = stderr(&again);
    assert!(
        err.starts_with("error: the node answered unique_violation (conflict): ")
            && err.contains("\n  data.handle: "),
        "code, class, message and each detail: {err}"
    );

    let invalid = call(
        &env,
        &["spew.user.create", r#"{"handle":"a b","display_name":""}"#],
    )
    .await;
    assert_eq!(invalid.status.code(), Some(3));
    let err = stderr(&invalid);
    assert!(
        err.contains("invalid_input (validation): 2 fields are invalid")
            && err.contains("data.handle: ")
            && err.contains("(invalid_format)")
            && err.contains("data.display_name: ")
            && err.contains("(too_short)"),
        "{err}"
    );

    // --raw prints the error envelope and still exits 3.
    let missing = call(
        &env,
        &["spew.user.fetch", r#"{"handle":"nobody"}"#, "--raw"],
    )
    .await;
    assert_eq!(missing.status.code(), Some(3));
    let raw: Json = serde_json::from_slice(&missing.stdout).expect("the envelope on stdout");
    assert_eq!(raw["status"], "error");
    assert_eq!(raw["error"]["code"], "not_found");
    server.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_before_sending_with_exit_code_2() {
    // No node runs for this tag: every case must be refused locally, not time out.
    let env = TestEnv::new("call_usage");
    for (args, expected) in [
        (
            &["spew.usr.create", "{}"][..],
            "domain `spew` has no template or query `usr` (did you mean `spew.user`?)",
        ),
        (
            &["spwe.user.fetch", "{}"],
            "no domain `spwe` (did you mean `spew`?)",
        ),
        (
            &["spew.user.fecth", "{}"],
            "spew.user has no operation `fecth` (did you mean `fetch`?)",
        ),
        (
            &["spew.user", "{}"],
            "`spew.user` is a template, not a query",
        ),
        (
            &["spew.home_timeline.list"],
            "`spew.home_timeline` is a query: call it without an operation",
        ),
        (
            &["spew.user.create", r#"{"handle" "x"}"#],
            "the data of spew.user.create is not valid JSON: expected `:` at line 1 column 11\n  \
             {\"handle\" \"x\"}\n            ^",
        ),
        (
            &["spew.user.create"],
            "spew.user.create needs its data as a JSON object: handle, display_name; optional: bio",
        ),
        (
            &["spew.user.fetch", "ada"],
            r#"must be a JSON object such as {"handle":"ada"} or an id"#,
        ),
        (
            &["spew.user.create", "{}", "--limit", "2"],
            "spew.user.create takes no --limit or --cursor",
        ),
        (
            &["spew.user.update", r#"{"handle":"ada"}"#],
            "spew.user.update needs the fields to change: --data",
        ),
        (
            &["spew.user.list", "--consistency", "strong"],
            "spew.user.list takes no --consistency or --min-version",
        ),
        (
            &["spew.user.fetch", "{}", "--consistency", "eventual"],
            "`eventual` is not a consistency; use strong or cached",
        ),
        (
            &["spew.home_timeline", "{}", "--cursor", "3"],
            "--cursor must be the `next` array of the previous page, found a number",
        ),
    ] {
        let out = call(&env, args).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}:\n{err}\nlacks\n{expected}"
        );
    }
}

#[tokio::test]
async fn no_reply_exits_4_and_says_why() {
    let env = TestEnv::new("call_silent");
    // A read on a tag no node serves: nothing takes it, so the wait runs out.
    let out = call(
        &env,
        &[
            "spew.user.fetch",
            r#"{"handle":"ada"}"#,
            "--timeout",
            "500ms",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no reply to spew.user.fetch within 500ms")
            && err.contains(&format!("queue tag {:?}", env.config.amqp.queue_tag))
            && err.contains("beds run"),
        "{err}"
    );

    // A write is refused by the broker at once: no queue is bound to its routing key.
    let out = call(
        &env,
        &["spew.user.create", r#"{"handle":"x","display_name":"X"}"#],
    )
    .await;
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("no queue takes routing key"),
        "{}",
        stderr(&out)
    );

    // Nothing listens on port 1: said at once, with the URL (password hidden).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beds"));
    cmd.args(["call", "spew.user.list", "--config"])
        .arg(repo_config_path())
        .env("BEDS_ENV", "test")
        .env("BEDS_AMQP__URL", "amqp://guest:secret@127.0.0.1:1/%2f");
    let started = std::time::Instant::now();
    let out = cmd.output().expect("run the beds binary");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with(
            "error: cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f: connection refused"
        )
            && !err.contains("secret"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
