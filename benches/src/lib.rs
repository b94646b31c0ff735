//! Criterion benches of the platform crates; see `benches/` and `BENCHMARKS.md`.
