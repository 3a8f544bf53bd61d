//! The traits generated record types implement.

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::meta::TemplateMeta;

/// A record type compiled from a template (usually via `#[derive(Record)]`).
pub trait Record: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The record's key type.
    type Id: Key;
    /// What a caller sends to create one.
    type Create: Serialize + Send + Sync;
    /// What a caller sends to change one.
    type Patch: Serialize + Send + Sync;
    /// The compiled declaration.
    const META: &'static TemplateMeta;
}

/// A named query compiled from a declaration.
pub trait Query: 'static {
    /// The typed parameters a caller sends.
    type Params: Serialize + Send + Sync;
    /// What each item of a page is: the record, or the record with its `with` values.
    type Item: DeserializeOwned + Send + 'static;
    const META: &'static crate::meta::QueryMeta;
}

/// A record key (a UUID or a sequence number) with its template in the type; it
/// serialises as the `id` the envelope carries.
/// A record of a template declaring `locking`: the typed client's `lock`, `unlock` and
/// token-carrying writes are offered for these alone. Generated with the `Record` impl.
pub trait Locking: Record {}

/// A record of a template declaring `journal`: the typed client's `history` and
/// `fetch_as_of` are offered for these alone. Generated with the `Record` impl.
pub trait Journaled: Record {}

pub trait Key: Serialize + DeserializeOwned + Copy + Send + Sync + 'static {}

/// Marker kinds the derive uses to check that a field's Rust type matches its declaration.
pub mod kinds {
    use std::marker::PhantomData;

    #[derive(Debug)]
    pub struct Str;
    #[derive(Debug)]
    pub struct Integer;
    #[derive(Debug)]
    pub struct BigInt;
    #[derive(Debug)]
    pub struct Float;
    #[derive(Debug)]
    pub struct Date;
    #[derive(Debug)]
    pub struct Enum;
    #[derive(Debug)]
    pub struct Json;
    #[derive(Debug)]
    pub struct Bool;
    #[derive(Debug)]
    pub struct Timestamp;
    #[derive(Debug)]
    pub struct Uuid;
    #[derive(Debug)]
    pub struct Ref;
    #[derive(Debug)]
    pub struct Optional<K>(PhantomData<K>);
}

/// Implemented by the Rust types a field of kind `K` may have.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot hold a field declared as `{K}`",
    note = "string/text -> String, integer -> i32, bigint -> i64, float -> f64, bool -> bool, timestamp -> Timestamp, date -> Date, uuid -> Uuid, json -> serde_json::Value, enum -> a Copy + Eq serde enum, reference -> the target's Id type; wrap in Option for `optional`"
)]
pub trait FieldType<K> {}

impl FieldType<kinds::Str> for String {}
impl FieldType<kinds::Integer> for i32 {}
impl FieldType<kinds::BigInt> for i64 {}
impl FieldType<kinds::Float> for f64 {}
impl FieldType<kinds::Date> for crate::value::Date {}
impl FieldType<kinds::Json> for serde_json::Value {}
impl<T: Serialize + DeserializeOwned + Copy + Eq> FieldType<kinds::Enum> for T {}
impl FieldType<kinds::Bool> for bool {}
impl FieldType<kinds::Timestamp> for crate::value::Timestamp {}
impl FieldType<kinds::Uuid> for Uuid {}
impl<T: Key> FieldType<kinds::Ref> for T {}
impl<K, T: FieldType<K>> FieldType<kinds::Optional<K>> for Option<T> {}

/// Compile-time check emitted by the derive for every field.
pub const fn assert_field<T: FieldType<K>, K>() {}
