//! Runnable examples of the platform crates; see `src/bin`.

pub mod todo;
