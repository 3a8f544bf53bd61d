//! BEDS with the domains of this repository compiled in: the generated record types,
//! input types, keys and the dispatch [`CATALOG`] for every file in `domains/`.

include!(concat!(env!("OUT_DIR"), "/beds_domains.rs"));
