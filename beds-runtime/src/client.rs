//! The client: requests over AMQP only, replies matched by correlation id, typed per
//! template through [`TemplateClient`].

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use tokio::sync::{RwLock, oneshot};
use uuid::Uuid;

use crate::config::{AmqpTlsConfig, Config, EXCHANGE};
use crate::envelope::{AsOf, Consistency, Op, Origin, ReadTier, Reply, Request};
use crate::error::{BedsError, ErrorCode};
use crate::ingress::lane::Lane;
use crate::record::{Key, Query, Record};
use crate::transport::link::Link;
use crate::transport::names::{self, ADMIN_KEY, ADMIN_VERSION, WAREHOUSE_READ_KEY};
use crate::transport::{ConnectError, topology};

/// Where a client sends and how long it waits.
#[derive(Clone)]
pub struct ClientOptions {
    pub url: String,
    /// Used when `url` is `amqps://`.
    pub tls: AmqpTlsConfig,
    pub queue_tag: String,
    pub timeout: Duration,
    /// Service name in the origin of every request.
    pub service: String,
    pub node: String,
    pub env: String,
    /// The AMQP `user_id` on every request: the login of `url` (RabbitMQ refuses any
    /// other), so nodes know the calling service. `None` sends none.
    pub user_id: Option<String>,
    /// The end user's signed token, sent as `auth` on every request.
    pub auth: Option<String>,
    /// An end user asserted directly (`subject`, `roles`): honoured only from a service
    /// listed in the node's `security.trusted_services`.
    pub subject: Option<String>,
    pub roles: Option<Vec<String>>,
    /// A longer reply is refused unread (`limits.max_message_bytes` of the config).
    pub max_reply_bytes: u64,
}

impl ClientOptions {
    /// Options matching a node's configuration.
    pub fn from_config(config: &Config, service: &str) -> ClientOptions {
        ClientOptions {
            url: config.amqp.url.clone(),
            tls: config.amqp.tls.clone(),
            queue_tag: config.amqp.queue_tag.clone(),
            timeout: config.client.timeout.duration(),
            service: service.to_string(),
            node: config.node.clone(),
            env: config.env.clone(),
            user_id: login(&config.amqp.url),
            auth: None,
            subject: None,
            roles: None,
            max_reply_bytes: config.limits.max_message_bytes,
        }
    }

    /// Connects as another broker user: `url`'s login becomes the `user_id`.
    pub fn with_url(self, url: &str) -> ClientOptions {
        ClientOptions {
            url: url.to_string(),
            user_id: login(url),
            ..self
        }
    }

    /// Sends `token` (a JWT naming the end user) as `auth` on every request.
    pub fn with_auth(self, token: impl Into<String>) -> ClientOptions {
        ClientOptions {
            auth: Some(token.into()),
            ..self
        }
    }

    /// Asserts the end user and their roles on every request (trusted services only).
    pub fn as_subject(self, subject: Option<&str>, roles: &[&str]) -> ClientOptions {
        ClientOptions {
            subject: subject.map(str::to_string),
            roles: Some(roles.iter().map(|r| r.to_string()).collect()),
            ..self
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    // The URL's password and the token are credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("url", &crate::config::redact(&self.url))
            .field("queue_tag", &self.queue_tag)
            .field("timeout", &self.timeout)
            .field("service", &self.service)
            .field("user_id", &self.user_id)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("subject", &self.subject)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// The user name an AMQP URL logs in with (`guest` when it names none, as RabbitMQ does).
fn login(url: &str) -> Option<String> {
    url.parse::<lapin::uri::AMQPUri>()
        .ok()
        .map(|u| u.authority.userinfo.username)
}

/// Why a request did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The server answered with an error; `code` and `class` are the contract's.
    #[error("{}: {}", serde_json::to_string(&.0.code).unwrap_or_default(), .0.message)]
    Remote(BedsError),
    #[error("no reply within {after:?} to request {id}")]
    Timeout { id: Uuid, after: Duration },
    #[error("AMQP: {0}")]
    Transport(#[from] lapin::Error),
    /// The reply is longer than [`ClientOptions::max_reply_bytes`]; it was not decoded.
    #[error(
        "the reply is {size} bytes, over the client's limit of {limit} (limits.max_message_bytes)"
    )]
    ReplyTooLarge { size: usize, limit: u64 },
    #[error("the reply could not be decoded: {0}")]
    Decode(#[from] serde_json::Error),
    /// The request was dropped from the client's table of pending replies before its
    /// reply arrived.
    #[error("the reply to this request can no longer be received")]
    Closed,
    /// No queue is bound to the routing key: no node of this queue tag has declared it.
    #[error(
        "no queue takes routing key `{routing_key}` on beds.events: start {serves} with the same amqp.queue_tag"
    )]
    Unroutable {
        routing_key: String,
        /// The node that would take it.
        serves: &'static str,
    },
}

impl ClientError {
    /// The contract error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Remote(e) => Some(e.code),
            _ => None,
        }
    }
}

/// How long to wait for lapin's recovery before checking whether the connection is dead.
const RECOVERY_WAIT: Duration = Duration::from_secs(5);

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// A connection to BEDS. Cheap to share by reference; requests may run concurrently.
#[derive(Debug)]
pub struct Client {
    /// The connection, replaced (by the same logic as the server's) when lapin gives up on it.
    link: Link,
    session: RwLock<Arc<Session>>,
    reply_queue: String,
    pending: Pending,
    options: ClientOptions,
    read_key: String,
    write_key: String,
    admin_key: String,
    warehouse_key: String,
    mig_key: String,
}

/// Where a message goes: a routing key, and whether its publish is confirmed (and
/// mandatory, so a key no queue takes fails at once).
#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    Confirmed(&'a str),
    Plain(&'a str),
}

/// One AMQP connection's worth of client state; rebuilt when the link hands out a new
/// connection (the reply queue keeps its name, so replies still find their waiters).
#[derive(Debug)]
struct Session {
    conn: Arc<Connection>,
    channel: Channel,
    /// Writes go through a confirming channel, so a write is only "sent" once the broker
    /// has routed and stored it.
    confirmed: Channel,
}

impl Session {
    async fn open(
        conn: Arc<Connection>,
        reply_queue: &str,
        pending: &Pending,
    ) -> Result<Session, ClientError> {
        let channel = conn.create_channel().await?;
        let confirmed = conn.create_channel().await?;
        confirmed
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // A named queue survives reconnection: lapin re-declares it under the same name.
        let (_, mut consumer) = topology::reply_queue(&channel, reply_queue).await?;
        let routes = pending.clone();
        let replies = channel.clone();
        tokio::spawn(async move {
            loop {
                let delivery = match consumer.next().await {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => match replies.wait_for_recovery(e).await {
                        Ok(()) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "reply consumer stopped");
                            break;
                        }
                    },
                    None => break,
                };
                let Some(id) = delivery.properties.correlation_id() else {
                    tracing::warn!("reply without correlation id dropped");
                    continue;
                };
                let waiter = routes.lock().expect("pending map").remove(id.as_str());
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(delivery.data);
                    }
                    None => tracing::debug!(correlation_id = %id, "late reply dropped"),
                }
            }
        });
        Ok(Session {
            conn,
            channel,
            confirmed,
        })
    }
}

impl Client {
    pub async fn connect(options: ClientOptions) -> Result<Client, ClientError> {
        let reply_queue = names::reply_queue(&Uuid::now_v7().simple().to_string());
        let pending: Pending = Arc::default();
        let link = Link::open(
            &options.url,
            &options.tls,
            &format!("beds client {}", options.service),
        )
        .await?;
        let session = Session::open(link.get().await, &reply_queue, &pending).await?;
        Ok(Client {
            link,
            session: RwLock::new(Arc::new(session)),
            read_key: format!("{}{}", options.queue_tag, Lane::Read.key()),
            write_key: format!("{}{}", options.queue_tag, Lane::Write.key()),
            admin_key: format!("{}{}", options.queue_tag, ADMIN_KEY),
            warehouse_key: format!("{}{}", options.queue_tag, WAREHOUSE_READ_KEY),
            mig_key: format!("{}{}", options.queue_tag, names::MIG_BULK_KEY),
            reply_queue,
            pending,
            options,
        })
    }

    /// Rebuilds the session on the link's connection once the link has replaced a
    /// connection lapin could not recover; until then, backs off briefly.
    async fn reconnect(&self, broken: &Arc<Session>) {
        let conn = self.link.get().await;
        let usable = |c: &Channel| c.status().connected() || c.status().reconnecting();
        // Same connection: wait for it unless it is up and only a channel was closed.
        if Arc::ptr_eq(&conn, &broken.conn)
            && (!conn.status().connected()
                || (usable(&broken.channel) && usable(&broken.confirmed)))
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        }
        let mut current = self.session.write().await;
        if !Arc::ptr_eq(&current, broken) {
            return;
        }
        match Session::open(conn, &self.reply_queue, &self.pending).await {
            Ok(s) => {
                tracing::info!("client session reopened on the new connection");
                *current = Arc::new(s);
            }
            Err(e) => {
                drop(current);
                tracing::warn!(error = %e, "reopening the client session failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// Typed requests for the record type `T`.
    pub fn template<T: Record>(&self) -> TemplateClient<'_, T> {
        TemplateClient {
            client: self,
            _t: PhantomData,
        }
    }

    /// Typed calls of the named query `Q`.
    pub fn query<Q: Query>(&self) -> QueryClient<'_, Q> {
        QueryClient {
            client: self,
            _q: PhantomData,
        }
    }

    /// Sends a request and waits for its reply; the server's errors come back as
    /// [`ClientError::Remote`].
    pub async fn request(&self, req: Request) -> Result<Json, ClientError> {
        self.exchange(req)
            .await?
            .into_result()
            .map_err(ClientError::Remote)
    }

    /// Sends a request and returns its whole reply envelope, an error reply included
    /// (`beds call --raw` shows it as the node sent it).
    pub async fn exchange(&self, mut req: Request) -> Result<Reply, ClientError> {
        if req.auth.is_none() && req.subject.is_none() && req.roles.is_none() {
            req.auth.clone_from(&self.options.auth);
            req.subject.clone_from(&self.options.subject);
            req.roles.clone_from(&self.options.roles);
        }
        // A root request opens its conversation: its lineage names it from the start.
        req.correlation_id.get_or_insert(req.id);
        if req.origin.is_none() {
            req.origin = Some(Origin {
                service: self.options.service.clone(),
                node: self.options.node.clone(),
                env: self.options.env.clone(),
            });
        }
        let write = Op::parse(&req.op).is_some_and(Op::is_write);
        // The server refuses to run a request whose caller has given up on it.
        req.deadline.get_or_insert_with(|| {
            crate::value::now()
                + chrono::Duration::from_std(self.options.timeout).unwrap_or_default()
        });
        let body = serde_json::to_vec(&req)?;
        let route = if write {
            Route::Confirmed(&self.write_key)
        } else if req.tier == Some(ReadTier::Warehouse) {
            // Straight to segundo's queue: an appServer would only forward it there.
            Route::Plain(&self.warehouse_key)
        } else {
            Route::Plain(&self.read_key)
        };
        let reply = self.round_trip(route, req.id, &body).await?;
        Ok(serde_json::from_slice(&reply)?)
    }

    /// Sends an administrative command (`{"v":1,"op":op, ...fields}`) to the admin role on
    /// the `adm` route and returns its data; the admin's errors come back as
    /// [`ClientError::Remote`].
    pub async fn admin(&self, op: &str, fields: Map<String, Json>) -> Result<Json, ClientError> {
        self.admin_exchange(op, fields)
            .await?
            .into_result()
            .map_err(ClientError::Remote)
    }

    /// Like [`Client::admin`], returning the whole reply envelope.
    pub async fn admin_exchange(
        &self,
        op: &str,
        fields: Map<String, Json>,
    ) -> Result<Reply, ClientError> {
        let mut fields = fields;
        fields.insert(
            "origin".into(),
            serde_json::to_value(Origin {
                service: self.options.service.clone(),
                node: self.options.node.clone(),
                env: self.options.env.clone(),
            })?,
        );
        self.service_exchange(&self.admin_key, ADMIN_VERSION, op, fields)
            .await
    }

    /// Sends a bulk request (`{"v":1,"op":op, ...fields}`) to segundo on the `mig.bulk`
    /// route (wiki/migration.md) and returns the whole reply envelope.
    pub async fn mig_exchange(
        &self,
        op: &str,
        fields: Map<String, Json>,
    ) -> Result<Reply, ClientError> {
        self.service_exchange(&self.mig_key, names::MIG_VERSION, op, fields)
            .await
    }

    /// Sends `{"v":version,"op":op,"id":<new>, ...fields}` to the service route `key`
    /// (`adm`, `mig.bulk`) and returns the whole reply envelope.
    async fn service_exchange(
        &self,
        key: &str,
        version: u32,
        op: &str,
        fields: Map<String, Json>,
    ) -> Result<Reply, ClientError> {
        let id = Uuid::now_v7();
        let mut body = fields;
        body.insert("v".into(), Json::from(version));
        body.insert("op".into(), Json::from(op));
        body.insert("id".into(), Json::from(id.to_string()));
        let body = serde_json::to_vec(&body)?;
        let reply = self.round_trip(Route::Confirmed(key), id, &body).await?;
        Ok(serde_json::from_slice(&reply)?)
    }

    /// Publishes `body` (the message `message_id`) on `route` and waits for the reply's
    /// bytes, all within the client's timeout.
    async fn round_trip(
        &self,
        route: Route<'_>,
        message_id: Uuid,
        body: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let started = tokio::time::Instant::now();
        // Each send has its own correlation id: a resend of the same request (same id, same
        // idempotency key) must not take the reply meant for an earlier, stale copy.
        let id = Uuid::now_v7().to_string();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending map")
            .insert(id.clone(), tx);
        let mut properties = BasicProperties::default();
        if let Some(user) = &self.options.user_id {
            properties = properties.with_user_id(user.as_str().into());
        }
        let properties = properties
            .with_content_type("application/json".into())
            .with_correlation_id(id.as_str().into())
            .with_message_id(message_id.to_string().into())
            .with_reply_to(self.reply_queue.as_str().into())
            .with_delivery_mode(match route {
                Route::Confirmed(_) => 2,
                Route::Plain(_) => 1,
            });
        let sent =
            tokio::time::timeout(self.options.timeout, self.publish(route, body, properties)).await;
        let sent = sent.unwrap_or(Err(ClientError::Timeout {
            id: message_id,
            after: self.options.timeout,
        }));
        if let Err(e) = sent {
            self.pending.lock().expect("pending map").remove(&id);
            return Err(e);
        }
        let remaining = self.options.timeout.saturating_sub(started.elapsed());
        let body = match tokio::time::timeout(remaining, rx).await {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => {
                self.pending.lock().expect("pending map").remove(&id);
                return Err(ClientError::Timeout {
                    id: message_id,
                    after: self.options.timeout,
                });
            }
        };
        if body.len() as u64 > self.options.max_reply_bytes {
            return Err(ClientError::ReplyTooLarge {
                size: body.len(),
                limit: self.options.max_reply_bytes,
            });
        }
        Ok(body)
    }

    /// Publishes a request, waiting out a connection recovery; a confirmed route also waits
    /// for the broker's confirm and fails at once if no queue takes it.
    async fn publish(
        &self,
        route: Route<'_>,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), ClientError> {
        let (key, write) = match route {
            Route::Confirmed(key) => (key, true),
            Route::Plain(key) => (key, false),
        };
        loop {
            let session = self.session.read().await.clone();
            let channel = if write {
                &session.confirmed
            } else {
                &session.channel
            };
            let published = channel
                .basic_publish(
                    EXCHANGE.into(),
                    (*key).into(),
                    BasicPublishOptions {
                        mandatory: write,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties.clone(),
                )
                .await;
            let confirmed = match published {
                Ok(pending) if write => pending.await,
                Ok(_) => return Ok(()),
                Err(e) => Err(e),
            };
            match confirmed {
                Ok(lapin::Confirmation::Ack(None)) | Ok(lapin::Confirmation::NotRequested) => {
                    return Ok(());
                }
                Ok(lapin::Confirmation::Ack(Some(_))) => {
                    return Err(ClientError::Unroutable {
                        routing_key: key.to_string(),
                        serves: if key == self.admin_key {
                            "an admin node (role admin)"
                        } else if key == self.warehouse_key || key == self.mig_key {
                            "a segundo node (role segundo)"
                        } else {
                            "an appServer"
                        },
                    });
                }
                // Refused by the broker (e.g. a queue limit): the same bytes may be retried.
                Ok(lapin::Confirmation::Nack(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => {
                    // lapin may give up on a connection without saying so: after a while,
                    // a dead connection is replaced.
                    let recovered =
                        tokio::time::timeout(RECOVERY_WAIT, channel.wait_for_recovery(e)).await;
                    if !matches!(recovered, Ok(Ok(()))) {
                        self.reconnect(&session).await;
                    }
                }
            }
        }
    }

    pub async fn close(self) -> Result<(), ClientError> {
        self.link.close().await;
        Ok(())
    }
}

/// One page of a list: the records and the cursor of the next page, if any.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(bound = "T: Record")]
pub struct Page<T: Record> {
    pub items: Vec<T>,
    pub next: Option<T::Id>,
}

/// How fresh a fetch must be (wiki/cache.md); the default leaves both to the template's
/// declaration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    pub consistency: Option<Consistency>,
    /// Served from the cache only at this version or later, else from the database.
    pub min_version: Option<i64>,
    /// `Some(ReadTier::Warehouse)`: the record retention moved out of the serving
    /// database, read by a segundo node (after a `moved` error; wiki/retention.md).
    pub tier: Option<ReadTier>,
}

impl ReadOptions {
    /// Always the database.
    pub fn strong() -> ReadOptions {
        ReadOptions {
            consistency: Some(Consistency::Strong),
            ..ReadOptions::default()
        }
    }

    /// The cache when it holds the record.
    pub fn cached() -> ReadOptions {
        ReadOptions {
            consistency: Some(Consistency::Cached),
            ..ReadOptions::default()
        }
    }

    /// The warehouse: a record retention moved (a fetch that answered `moved`).
    pub fn warehouse() -> ReadOptions {
        ReadOptions {
            tier: Some(ReadTier::Warehouse),
            ..ReadOptions::default()
        }
    }

    /// The cache only if its copy is at `version` or later.
    pub fn min_version(self, version: i64) -> ReadOptions {
        ReadOptions {
            min_version: Some(version),
            ..self
        }
    }
}

/// Typed operations on one template.
#[derive(Debug)]
pub struct TemplateClient<'a, T> {
    client: &'a Client,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for TemplateClient<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for TemplateClient<'_, T> {}

impl<T: Record> TemplateClient<'_, T> {
    fn request(&self, op: Op) -> Request {
        Request::new(T::META.domain, T::META.name, op)
    }

    async fn send<R: serde::de::DeserializeOwned>(&self, req: Request) -> Result<R, ClientError> {
        Ok(serde_json::from_value(self.client.request(req).await?)?)
    }

    pub async fn create(&self, input: &T::Create) -> Result<T, ClientError> {
        let mut req = self.request(Op::Create);
        req.data = Some(object(input)?);
        self.send(req).await
    }

    pub async fn fetch(&self, id: T::Id) -> Result<T, ClientError> {
        let mut req = self.request(Op::Fetch);
        req.key = Some(key(id));
        self.send(req).await
    }

    /// A fetch by id with read options: `strong` or `cached`, and read-your-writes with
    /// `min_version` (e.g. the `version` an update returned).
    pub async fn fetch_with(&self, id: T::Id, options: ReadOptions) -> Result<T, ClientError> {
        let mut req = self.request(Op::Fetch);
        req.key = Some(key(id));
        req.consistency = options.consistency;
        req.min_version = options.min_version;
        req.tier = options.tier;
        self.send(req).await
    }

    pub async fn update(&self, id: T::Id, patch: &T::Patch) -> Result<T, ClientError> {
        let mut req = self.request(Op::Update);
        req.key = Some(key(id));
        req.data = Some(object(patch)?);
        self.send(req).await
    }

    pub async fn delete(&self, id: T::Id) -> Result<(), ClientError> {
        let mut req = self.request(Op::Delete);
        req.key = Some(key(id));
        self.client.request(req).await.map(drop)
    }

    /// The record with the given unique key, e.g. the generated `UserByHandle`.
    pub async fn fetch_by(&self, key: &impl serde::Serialize) -> Result<T, ClientError> {
        let mut req = self.request(Op::Fetch);
        req.key = Some(object(key)?);
        self.send(req).await
    }

    pub async fn update_by(
        &self,
        key: &impl serde::Serialize,
        patch: &T::Patch,
    ) -> Result<T, ClientError> {
        let mut req = self.request(Op::Update);
        req.key = Some(object(key)?);
        req.data = Some(object(patch)?);
        self.send(req).await
    }

    pub async fn delete_by(&self, key: &impl serde::Serialize) -> Result<(), ClientError> {
        let mut req = self.request(Op::Delete);
        req.key = Some(object(key)?);
        self.client.request(req).await.map(drop)
    }

    /// A page of records in key order; `limit` defaults to the template's page size.
    pub async fn list(
        &self,
        limit: Option<u32>,
        after: Option<T::Id>,
    ) -> Result<Page<T>, ClientError> {
        let mut req = self.request(Op::List);
        req.limit = limit;
        req.after = after.map(serde_json::to_value).transpose()?;
        self.send(req).await
    }
}

/// One version of a journaled record, as `history` answers it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
pub struct Version<T> {
    /// The record as it was at this version (for a delete, as it was last).
    pub record: T,
    pub version: i64,
    /// The write that made this version: `create`, `update` or `delete` (a tombstone).
    pub op: crate::events::WriteOp,
    pub written_at: chrono::DateTime<chrono::Utc>,
}

/// One page of a record's history, newest first; `next` continues it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
pub struct History<T> {
    pub items: Vec<Version<T>>,
    pub next: Option<Cursor>,
}

/// Past versions, for templates declaring `journal` ([`crate::Journaled`]).
impl<T: crate::record::Journaled> TemplateClient<'_, T> {
    /// The record's versions, newest first, `limit` a page (default: the template's page
    /// size); pass a page's `next` as `cursor` for the following one.
    pub async fn history(
        &self,
        id: T::Id,
        limit: Option<u32>,
        cursor: Option<Cursor>,
    ) -> Result<History<T>, ClientError> {
        let mut req = self.request(Op::History);
        req.key = Some(key(id));
        req.limit = limit;
        req.cursor = cursor.map(|c| c.0);
        self.send(req).await
    }

    /// The record as it was at `as_of`: a version, or the newest version written at or
    /// before a time; `not_found` if it did not exist then.
    pub async fn fetch_as_of(&self, id: T::Id, as_of: AsOf) -> Result<T, ClientError> {
        let mut req = self.request(Op::Fetch);
        req.key = Some(key(id));
        req.as_of = Some(as_of);
        self.send(req).await
    }
}

/// Leases, for templates declaring `locking` ([`crate::Locking`]).
impl<T: crate::record::Locking> TemplateClient<'_, T> {
    /// Takes a lease on the record for `ttl`; another holder's unexpired lease is `locked`.
    pub async fn lock(&self, id: T::Id, ttl: Duration) -> Result<Lease<T::Id>, ClientError> {
        let mut req = self.request(Op::Lock);
        req.key = Some(key(id));
        req.data = Some(ttl_data(ttl));
        self.send(req).await
    }

    /// Extends a lease this client holds by `ttl` from now.
    pub async fn relock(
        &self,
        lease: &Lease<T::Id>,
        ttl: Duration,
    ) -> Result<Lease<T::Id>, ClientError> {
        let mut req = self.request(Op::Lock);
        req.key = Some(key(lease.id));
        req.data = Some(ttl_data(ttl));
        req.lock_token = Some(lease.token.clone());
        self.send(req).await
    }

    /// Gives a lease back.
    pub async fn unlock(&self, id: T::Id, token: &str) -> Result<(), ClientError> {
        let mut req = self.request(Op::Unlock);
        req.key = Some(key(id));
        req.lock_token = Some(token.to_string());
        self.client.request(req).await.map(drop)
    }

    /// `update` of a record this client holds the lease of.
    pub async fn update_locked(
        &self,
        id: T::Id,
        patch: &T::Patch,
        token: &str,
    ) -> Result<T, ClientError> {
        let mut req = self.request(Op::Update);
        req.key = Some(key(id));
        req.data = Some(object(patch)?);
        req.lock_token = Some(token.to_string());
        self.send(req).await
    }

    /// `delete` of a record this client holds the lease of.
    pub async fn delete_locked(&self, id: T::Id, token: &str) -> Result<(), ClientError> {
        let mut req = self.request(Op::Delete);
        req.key = Some(key(id));
        req.lock_token = Some(token.to_string());
        self.client.request(req).await.map(drop)
    }
}

/// A lease on one record, as `lock` answers it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Lease<Id> {
    pub id: Id,
    /// What update, delete, lock and unlock send as `lock_token`.
    pub token: String,
    pub expires_at: crate::value::Timestamp,
}

/// A lease length as `lock` takes it, in milliseconds (at least 1).
fn ttl_data(ttl: Duration) -> Map<String, Json> {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut data = Map::new();
    data.insert("ttl".into(), Json::from(ms));
    data
}

/// Where the next page of a query starts: the previous page's `next`, passed back unchanged.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub Vec<Json>);

/// One page of a named query.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(bound = "T: serde::de::DeserializeOwned")]
pub struct QueryPage<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

/// Typed calls of one named query.
#[derive(Debug)]
pub struct QueryClient<'a, Q> {
    client: &'a Client,
    _q: PhantomData<fn() -> Q>,
}

impl<Q> Clone for QueryClient<'_, Q> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Q> Copy for QueryClient<'_, Q> {}

impl<Q: Query> QueryClient<'_, Q> {
    fn request(&self, params: &Q::Params) -> Result<Request, ClientError> {
        let mut req = Request::new(Q::META.domain, "", Op::Query);
        req.query = Some(Q::META.name.to_string());
        req.params = Some(object(params)?);
        Ok(req)
    }

    /// A page of results; `limit` defaults to the query's page size.
    pub async fn page(
        &self,
        params: &Q::Params,
        limit: Option<u32>,
        cursor: Option<Cursor>,
    ) -> Result<QueryPage<Q::Item>, ClientError> {
        self.page_from(params, limit, cursor, None).await
    }

    /// A page of results from the serving database and the warehouse together, for a
    /// query declared with `tiers: [hot, warehouse]` (answered by a segundo node).
    pub async fn page_with_warehouse(
        &self,
        params: &Q::Params,
        limit: Option<u32>,
        cursor: Option<Cursor>,
    ) -> Result<QueryPage<Q::Item>, ClientError> {
        self.page_from(params, limit, cursor, Some(ReadTier::Warehouse))
            .await
    }

    /// A page from `tier` (the serving database alone when `None`).
    async fn page_from(
        &self,
        params: &Q::Params,
        limit: Option<u32>,
        cursor: Option<Cursor>,
        tier: Option<ReadTier>,
    ) -> Result<QueryPage<Q::Item>, ClientError> {
        let mut req = self.request(params)?;
        req.limit = limit;
        req.cursor = cursor.map(|c| c.0);
        req.tier = tier;
        Ok(serde_json::from_value(self.client.request(req).await?)?)
    }

    /// The number of matches, for a query declared with `count: true`.
    pub async fn count(&self, params: &Q::Params) -> Result<u64, ClientError> {
        #[derive(Deserialize)]
        struct Count {
            count: u64,
        }
        let req = self.request(params)?;
        let c: Count = serde_json::from_value(self.client.request(req).await?)?;
        Ok(c.count)
    }
}

fn key(id: impl Key) -> Map<String, Json> {
    let id = serde_json::to_value(id).expect("keys serialize");
    Map::from_iter([("id".to_string(), id)])
}

fn object(value: &impl serde::Serialize) -> Result<Map<String, Json>, ClientError> {
    match serde_json::to_value(value)? {
        Json::Object(m) => Ok(m),
        _ => Err(ClientError::Decode(serde::ser::Error::custom(
            "input types serialize to objects",
        ))),
    }
}
