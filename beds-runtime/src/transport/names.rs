//! The names BEDS uses on the broker, in one place for server, client and tools: routing
//! keys, queue-name formats and the headers dead letters carry.

/// Routing key (before the queue tag) of reads.
pub const READ_KEY: &str = "rec.read";
/// Routing key (before the queue tag) of writes.
pub const WRITE_KEY: &str = "rec.write";
/// The routing key (before the queue tag) of reads of moved records (`"tier":
/// "warehouse"`), and the queue a segundo node serves them from.
pub const WAREHOUSE_READ_KEY: &str = "mig.read";
/// The routing key (before the queue tag) of administrative commands, and their queue.
pub const ADMIN_KEY: &str = "adm";
/// The adm request version this runtime reads and its client writes.
pub const ADMIN_VERSION: u32 = 1;

/// The routing key (before the queue tag) of bulk import and export, served by segundo
/// (wiki/migration.md), and its queue.
pub const MIG_BULK_KEY: &str = "mig.bulk";
/// The `mig.bulk` request version this runtime reads and its client writes.
pub const MIG_VERSION: u32 = 1;

/// The exchange rejected messages are dead-lettered to.
pub use crate::config::DEAD_LETTER_EXCHANGE;
/// The exchange every application message is published to.
pub use crate::config::EXCHANGE;

/// The dead-letter queue of a work queue.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// The retry lane of a work queue.
pub fn retry_queue(queue: &str) -> String {
    format!("{queue}.retry")
}

/// A client's private reply queue; the suffix makes it unique.
pub fn reply_queue(unique: &str) -> String {
    format!("beds.reply.{unique}")
}

/// RabbitMQ's direct reply-to pseudo-queue; the broker rewrites it to a name under
/// `amq.rabbitmq.reply-to.` before the node sees it.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Whether a request may name `queue` as its `reply_to`: the direct reply-to (as sent or
/// rewritten) or a client's `beds.reply.{unique}` queue. Nothing else, so a node never
/// publishes a reply into a work queue or someone else's queue.
pub fn is_reply_queue(queue: &str) -> bool {
    let under = |prefix: &str| {
        queue
            .strip_prefix(prefix)
            .is_some_and(|unique| !unique.is_empty())
    };
    queue == DIRECT_REPLY_TO || under(&format!("{DIRECT_REPLY_TO}.")) || under("beds.reply.")
}

/// A node's private invalidation queue; the suffix makes it unique. Named by the node, not
/// the broker: lapin's recovery re-declares a queue by its name, and the broker refuses to
/// declare a server-generated `amq.gen-…` name.
pub fn invalidation_queue(node: &str, unique: &str) -> String {
    format!("beds.inv.{node}.{unique}")
}

/// Headers BEDS sets on messages it parks in the retry lane or dead-letters (and the
/// signature it puts on everything it publishes). A client's `x-beds-*` headers are never
/// read.
pub mod headers {
    /// Attempts the request has had so far.
    pub const ATTEMPT: &str = "x-beds-attempt";
    /// Why it was dead-lettered, in words.
    pub const REASON: &str = "x-beds-reason";
    /// The error class of the last failure.
    pub const ERROR_CLASS: &str = "x-beds-error-class";
    /// The error code of the last failure.
    pub const ERROR_CODE: &str = "x-beds-error-code";
    /// The AMQP `user_id` of the request a node republished (retry lane, dead letter,
    /// replay): the node cannot publish another login's `user_id`, so it carries the
    /// caller here, under its signature.
    pub const CALLER: &str = "x-beds-user-id";
    /// The node's HMAC over what a message says (transport::signing).
    pub const SIGNATURE: &str = "x-beds-signature";
    /// The lineage of a message a node republished (retry, dead letter): its own id, its
    /// conversation, the message it stands for, its depth and the node's origin
    /// (its JSON object).
    pub const LINEAGE_ID: &str = "x-beds-lineage-id";
    pub const CORRELATION_ID: &str = "x-beds-correlation-id";
    pub const CAUSATION_ID: &str = "x-beds-causation-id";
    pub const DEPTH: &str = "x-beds-depth";
    pub const ORIGIN: &str = "x-beds-origin";
    /// Every header BEDS sets starts with this.
    pub const PREFIX: &str = "x-beds-";
    /// RabbitMQ's own record of dead-lettering.
    pub const DEATH: &str = "x-death";
}
