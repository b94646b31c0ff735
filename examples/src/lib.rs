//! Runnable examples of the platform crates; see `src/bin`.
