//! Shared code of cloister's model fuzz targets: the paths each input drives ([`exercise`], also replayed by
//! `model/tests/fuzz_regressions.rs`), structure-aware inputs ([`recipe`]) and the seed corpus ([`seeds`]).

pub mod exercise;
pub mod recipe;
pub mod seeds;
