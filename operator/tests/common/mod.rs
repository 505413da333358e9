//! The operator's end-to-end tests run on the test kit's stack (`mixdown_testkit::stack`).

pub use mixdown_testkit::stack::*;
