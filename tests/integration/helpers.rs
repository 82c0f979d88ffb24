//! The test kit (`crates/testkit`), under the name the integration tests use for it.

pub use testkit::*;
