#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod clock;
pub mod config;
mod correlation;
mod envelope;
mod error;
mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod nats;
mod problem;
#[cfg(feature = "redis")]
pub mod redis;
mod retry;
pub mod sql;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{Secret, mask_url};
pub use correlation::{
    CORRELATION_ID_HEADER, CorrelationId, MAX_CORRELATION_ID_LEN, TRACEPARENT_HEADER, TRACESTATE_HEADER,
    current_traceparent, is_valid_traceparent, with_correlation, with_traceparent,
};
pub use envelope::{DEFAULT_SOURCE, Envelope, Event};
pub use error::{Error, ErrorKind, FieldError, Result};
pub use health::{CheckOutcome, CheckResult, HealthCheck, HealthReport, Status, log_startup, probe_all};
pub use problem::{DEFAULT_TYPE_BASE, PROBLEM_CONTENT_TYPE, Problem, http_status};
pub use retry::{RetryPolicy, retry};

/// Re-exported so backends implement [`HealthCheck`] without naming the crate.
pub use async_trait::async_trait;
