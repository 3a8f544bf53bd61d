//! The names BEDS uses on the broker, in one place for server, client and tools: routing
//! keys, queue-name formats and the headers dead letters carry.

/// Routing key (before the queue tag) of reads.
pub const READ_KEY: &str = "rec.read";
/// Routing key (before the queue tag) of writes.
pub const WRITE_KEY: &str = "rec.write";

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

/// A node's private invalidation queue; the suffix makes it unique. Named by the node, not
/// the broker: lapin's recovery re-declares a queue by its name, and the broker refuses to
/// declare a server-generated `amq.gen-…` name.
pub fn invalidation_queue(node: &str, unique: &str) -> String {
    format!("beds.inv.{node}.{unique}")
}

/// Headers BEDS sets on messages it parks in the retry lane or dead-letters.
pub mod headers {
    /// Attempts the request has had so far.
    pub const ATTEMPT: &str = "x-beds-attempt";
    /// Why it was dead-lettered, in words.
    pub const REASON: &str = "x-beds-reason";
    /// The error class of the last failure.
    pub const ERROR_CLASS: &str = "x-beds-error-class";
    /// The error code of the last failure.
    pub const ERROR_CODE: &str = "x-beds-error-code";
    /// Every header BEDS sets starts with this.
    pub const PREFIX: &str = "x-beds-";
    /// RabbitMQ's own record of dead-lettering.
    pub const DEATH: &str = "x-death";
}
