//! Helpers shared by the recipes' integration tests: the test harness's
//! (`zkr_testing::helpers`), and the Apache Curator peer for interop tests.
#![allow(dead_code, unused_imports)]

pub mod java;

pub use zkr_testing::helpers::*;
