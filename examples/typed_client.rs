//! The typed client as another service uses it: read the node's configuration, connect to
//! RabbitMQ, create a user (or find the one a previous run created), post a spew, read a
//! page of a named query, close. Every call is an AMQP request answered by a running node.
//!
//! ```sh
//! cargo run -- run                       # a node, in another terminal
//! cargo run --example typed_client
//! ```
//!
//! The configuration is the node's (`config/beds.yaml`, or `BEDS_CONFIG`, plus `BEDS_*`
//! variables), so both agree on `amqp.url` and `amqp.queue_tag`.

use std::path::PathBuf;
use std::process::ExitCode;

use beds::spew::{self, SpewCreate, UserByHandle, UserCreate, UserTimelineParams};
use beds_runtime::{Client, ClientError, ClientOptions, Config, ErrorCode};

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
    let path = std::env::var_os("BEDS_CONFIG").map_or("config/beds.yaml".into(), PathBuf::from);
    let config = Config::load(&path)?;
    // The service name travels in every request's `origin`; the timeout is client.timeout.
    let client = Client::connect(ClientOptions::from_config(&config, "typed-client")).await?;
    let api = spew::client(&client);

    let created = api
        .user()
        .create(&UserCreate {
            handle: "ada".into(),
            display_name: "Ada Lovelace".into(),
            bio: None,
        })
        .await;
    let ada = match created {
        Ok(user) => user,
        // Run twice, the handle is taken: fetch the user by that unique key instead.
        Err(ClientError::Remote(e)) if e.code == ErrorCode::UniqueViolation => {
            api.user()
                .fetch_by(&UserByHandle {
                    handle: "ada".into(),
                })
                .await?
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "user @{} has id {} (version {})",
        ada.handle, ada.id, ada.version
    );

    let spew = api
        .spew()
        .create(&SpewCreate {
            author: ada.id,
            body: "Hello from the typed client".into(),
            reply_to: None,
            respew_of: None,
        })
        .await?;
    println!("posted {} at {}", spew.id, spew.created_at);

    let page = api
        .user_timeline()
        .page(
            &UserTimelineParams {
                author: ada.id,
                before: None,
            },
            Some(5),
            None,
        )
        .await?;
    println!("@{}'s newest spews:", ada.handle);
    for item in &page.items {
        println!("  {}  {}", item.record.created_at, item.record.body);
    }
    // `page.next` is the cursor of the next page (None on the last one).
    if page.next.is_some() {
        println!("  … more on the next page");
    }

    client.close().await?;
    Ok(())
}
