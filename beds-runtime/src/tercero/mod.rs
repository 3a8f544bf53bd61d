//! The tercero role's work, apart from the broker: reading write events, turning them into
//! counter changes for maintained counts, and the invalidations broadcast after them.
//! The consumer that feeds it batches lives with the other broker pools (`node`).

mod effect;
mod event;
mod invalidation;

pub(crate) use effect::effect;
pub(crate) use event::parse;
pub(crate) use invalidation::invalidation;

/// The tercero's queue, before the queue tag: every write event, whatever its domain.
pub const EVENT_QUEUE_KEY: &str = "evt.tercero";
/// The binding of the tercero's queue, before the queue tag.
pub const EVENT_BINDING: &str = "evt.#";
