//! SPEW end to end: an appServer in this process, and a client that talks to it over
//! AMQP only, through the typed client generated from `domains/spew.yaml`.
//!
//! `cargo run --example spew` — needs RabbitMQ at the configured URL
//! (default amqp://guest:guest@127.0.0.1:5672/%2f; override with BEDS_AMQP__URL).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use beds::spew::{self, SpewCreate, UserCreate, UserPatch};
use beds_runtime::{Client, ClientError, ClientOptions, Config, Server};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/beds.yaml"))?;
    beds_runtime::telemetry::init("warn");
    // A fresh database and private queues, so runs never see each other's data.
    let data = tempfile::tempdir()?;
    config.database.data_dir = data.path().to_path_buf();
    config.amqp.queue_tag = format!("example.{}.", std::process::id());

    let server = Server::start(&config, &beds::CATALOG).await?;
    println!(
        "appServer up: rBroker on {0}rec.read, wBroker on {0}rec.write",
        config.amqp.queue_tag
    );
    let client = Client::connect(ClientOptions::from_config(&config, "spew-example")).await?;
    let result = script(&client).await;
    client.close().await?;
    // Stop serving before the queues go, so no worker sees its consumer vanish.
    server.stop().await;
    beds_runtime::topology::remove(
        &config.amqp,
        &[
            beds_runtime::topology::READ_KEY,
            beds_runtime::topology::WRITE_KEY,
        ],
    )
    .await?;
    result
}

async fn script(client: &Client) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let spew = spew::client(client);
    let (users, spews) = (spew.user(), spew.spew());
    let mut requests = 0;
    let mut expected_errors = 0;

    let mut people = Vec::new();
    for (handle, name) in [
        ("ada", "Ada Lovelace"),
        ("grace", "Grace Hopper"),
        ("linus", "Linus"),
    ] {
        let u = users
            .create(&UserCreate {
                handle: handle.into(),
                display_name: name.into(),
                bio: None,
            })
            .await?;
        requests += 1;
        println!(
            "create user  @{:<6} -> id {} (version {})",
            u.handle, u.id, u.version
        );
        people.push(u);
    }
    let (ada, grace) = (&people[0], &people[1]);

    let mut posted = Vec::new();
    for (author, body) in [
        (ada, "The Analytical Engine weaves algebraic patterns."),
        (grace, "It is easier to ask forgiveness than permission."),
        (
            ada,
            "That brain of mine is something more than merely mortal.",
        ),
    ] {
        let s = spews
            .create(&SpewCreate {
                author: author.id,
                body: body.into(),
            })
            .await?;
        requests += 1;
        println!(
            "create spew  @{:<6} -> \"{}\" at {}",
            author.handle,
            s.body,
            s.created_at.format("%H:%M:%S%.3f")
        );
        posted.push(s);
    }

    let fetched = users.fetch(ada.id).await?;
    requests += 1;
    println!(
        "fetch user   @{:<6} -> {:?}, bio {:?}",
        fetched.handle, fetched.display_name, fetched.bio
    );

    let updated = users
        .update(
            ada.id,
            &UserPatch {
                bio: Some(Some("First programmer.".into())),
                ..UserPatch::default()
            },
        )
        .await?;
    requests += 1;
    println!(
        "update user  @{:<6} -> bio {:?} (version {})",
        updated.handle, updated.bio, updated.version
    );

    let page = spews.list(Some(2), None).await?;
    requests += 1;
    println!(
        "list spews   limit 2 -> {} items, more: {}",
        page.items.len(),
        page.next.is_some()
    );
    let rest = spews.list(Some(2), page.next).await?;
    requests += 1;
    println!(
        "list spews   after   -> {} item, more: {}",
        rest.items.len(),
        rest.next.is_some()
    );

    let clash = users
        .create(&UserCreate {
            handle: "ADA".into(),
            display_name: "Impostor".into(),
            bio: None,
        })
        .await;
    requests += 1;
    expected_errors += report("create user  @ADA   ", clash)?;
    let too_long = spews
        .create(&SpewCreate {
            author: ada.id,
            body: "x".repeat(281),
        })
        .await;
    requests += 1;
    expected_errors += report("create spew  281 ch ", too_long)?;

    users.delete(grace.id).await?;
    requests += 1;
    println!("delete user  @grace  -> deleted; her spews cascade");
    let gone = spews.fetch(posted[1].id).await;
    requests += 1;
    expected_errors += report("fetch spew   grace's", gone)?;

    println!(
        "done: {requests} requests over AMQP, {expected_errors} expected errors, {} ms",
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Prints an expected error reply; anything else is a failure of the example.
fn report<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, ClientError>,
) -> Result<usize, Box<dyn std::error::Error>> {
    match result {
        Err(ClientError::Remote(e)) => {
            println!("{what} -> {:?}/{:?}: {}", e.class, e.code, e.message);
            Ok(1)
        }
        Err(other) => Err(other.into()),
        Ok(v) => Err(format!("{what} should have failed, got {v:?}").into()),
    }
}
