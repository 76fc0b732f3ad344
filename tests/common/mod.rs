//! Helpers shared by the integration tests: the test harness's (`zkr_testing::helpers`).
#![allow(unused_imports)]

pub use zkr_testing::helpers::*;
