//! Queue options and queue URLs: `scheme://…?queue=jobs&visibility_timeout=30s&max_attempts=5&dead_letter=jobs.dlq`.

use std::time::Duration;

use platform_core::config::{UrlParams, url_error};
use platform_core::{Error, Result, mask_url};
use url::Url;

/// The default queue name when the URL names none.
pub const DEFAULT_QUEUE: &str = "default";
/// The default lease length.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
/// The default number of deliveries before a message is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Options every backend takes from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueOptions {
    /// The queue's name (`queue=`; `memory://NAME` also works). Default `default`.
    pub queue: String,
    /// The lease length (`visibility_timeout=30s`).
    pub visibility_timeout: Duration,
    /// Deliveries before a failing message is dead-lettered (`max_attempts=5`).
    pub max_attempts: u32,
    /// The dead-letter queue's name (`dead_letter=`). Default `<queue>.dlq`.
    pub dead_letter: String,
    /// How long dedup keys are remembered (`dedup_window=5m`).
    pub dedup_window: Duration,
}

impl QueueOptions {
    /// Defaults for queue `name`.
    pub fn new(name: impl Into<String>) -> Self {
        let queue = name.into();
        Self {
            dead_letter: format!("{queue}.dlq"),
            queue,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            dedup_window: Duration::from_secs(300),
        }
    }

    /// Sets the lease length.
    #[must_use]
    pub fn with_visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility_timeout = d;
        self
    }

    /// Sets the attempts before dead-lettering.
    #[must_use]
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets the dead-letter queue's name.
    #[must_use]
    pub fn with_dead_letter(mut self, name: impl Into<String>) -> Self {
        self.dead_letter = name.into();
        self
    }

    /// Sets the dedup window.
    #[must_use]
    pub fn with_dedup_window(mut self, d: Duration) -> Self {
        self.dedup_window = d;
        self
    }

    /// Checks names and values.
    pub fn validate(&self) -> Result<()> {
        validate_name("queue", &self.queue)?;
        validate_name("dead_letter", &self.dead_letter)?;
        if self.dead_letter == self.queue {
            return Err(bad_param("dead_letter", "must differ from the queue"));
        }
        if self.max_attempts == 0 {
            return Err(bad_param("max_attempts", "must be at least 1"));
        }
        if self.visibility_timeout < Duration::from_millis(100) {
            return Err(bad_param("visibility_timeout", "must be at least 100ms"));
        }
        Ok(())
    }
}

/// Queue names: 1 to 200 characters of letters, digits, `-`, `_` and `.`.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(bad_param(what, &format!("{name:?} is not a valid queue name (letters, digits, -_.)")))
    }
}

fn bad_param(key: &str, why: &str) -> Error {
    url_error("queue", key, why)
}

/// A parsed queue URL. Backends take their own parameters with [`QueueUrl::take`]; [`QueueUrl::finish`]
/// rejects whatever is left, naming it.
pub struct QueueUrl {
    url: Url,
    params: UrlParams,
    queue_given: bool,
    /// The options every backend shares.
    pub options: QueueOptions,
}

impl std::fmt::Debug for QueueUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueUrl")
            .field("url", &self.masked())
            .field("params", &self.params)
            .field("options", &self.options)
            .finish()
    }
}

impl QueueUrl {
    /// Parses `raw` and its common parameters. Errors never show the password.
    pub fn parse(raw: &str) -> Result<Self> {
        let url = Url::parse(raw).map_err(|e| bad_param("url", &format!("{:?} is not a URL: {e}", mask_url(raw))))?;
        let params = UrlParams::parse("queue", url.query())?;
        let queue_given = params.contains("queue");
        let mut this = Self { url, params, queue_given, options: QueueOptions::new(DEFAULT_QUEUE) };
        let queue = this.take("queue").unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
        let mut options = QueueOptions::new(queue);
        if let Some(v) = this.take_duration("visibility_timeout")? {
            options.visibility_timeout = v;
        }
        if let Some(n) = this.take_parsed("max_attempts")? {
            options.max_attempts = n;
        }
        if let Some(v) = this.take_duration("dedup_window")? {
            options.dedup_window = v;
        }
        if let Some(v) = this.take("dead_letter") {
            options.dead_letter = v;
        }
        this.options = options;
        Ok(this)
    }

    /// Whether the URL named the queue with `queue=`.
    pub fn queue_given(&self) -> bool {
        self.queue_given
    }

    /// Replaces the queue name (and the default dead-letter name with it).
    pub fn set_queue(&mut self, queue: &str) {
        if self.options.dead_letter == format!("{}.dlq", self.options.queue) {
            self.options.dead_letter = format!("{queue}.dlq");
        }
        self.options.queue = queue.to_owned();
    }

    /// The URL's scheme.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The URL (with the parameters not yet taken still in its query).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Removes and returns parameter `key`.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.params.take(key)
    }

    /// Parameter `key` as a duration.
    pub fn take_duration(&mut self, key: &str) -> Result<Option<Duration>> {
        self.params.take_duration(key)
    }

    /// Parameter `key` parsed as `T`.
    pub fn take_parsed<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>> {
        self.params.take_number(key)
    }

    /// Removes the parameters in `driver_keys` and returns them, for the driver's own URL.
    pub fn take_driver_params(&mut self, driver_keys: &[&str]) -> Vec<(String, String)> {
        self.params.take_all(driver_keys)
    }

    /// Fails on any parameter nobody took, naming it and the backend; validates the options.
    pub fn finish(&self, backend: &str) -> Result<()> {
        self.params.finish(backend)?;
        self.options.validate()
    }

    /// The URL without any query, for the driver, with `extra` parameters added back.
    pub fn driver_url(&self, extra: &[(String, String)]) -> String {
        let mut url = self.url.clone();
        url.set_query(None);
        if !extra.is_empty() {
            url.query_pairs_mut().extend_pairs(extra);
        }
        url.to_string()
    }

    /// The URL for logs, password masked.
    pub fn masked(&self) -> String {
        mask_url(self.url.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_parameters() {
        let cases = [
            ("memory://x", DEFAULT_QUEUE, 30_000, 5, "default.dlq"),
            ("memory://x?queue=jobs", "jobs", 30_000, 5, "jobs.dlq"),
            ("redis://h?queue=jobs&visibility_timeout=2s&max_attempts=3", "jobs", 2_000, 3, "jobs.dlq"),
            ("postgres://u:p@h/db?queue=a&dead_letter=graveyard&visibility_timeout=1500ms", "a", 1_500, 5, "graveyard"),
        ];
        for (raw, queue, vt, attempts, dlq) in cases {
            let u = QueueUrl::parse(raw).unwrap();
            u.finish("test").unwrap();
            assert_eq!(u.options.queue, queue, "{raw}");
            assert_eq!(u.options.visibility_timeout, Duration::from_millis(vt), "{raw}");
            assert_eq!(u.options.max_attempts, attempts, "{raw}");
            assert_eq!(u.options.dead_letter, dlq, "{raw}");
        }
    }

    #[test]
    fn rejects_each_bad_part_by_name() {
        let cases = [
            ("::nope", "url"),
            ("redis://h?visibility_timeout=soon", "visibility_timeout"),
            ("redis://h?max_attempts=many", "max_attempts"),
            ("redis://h?max_attempts=0", "max_attempts"),
            ("redis://h?queue=has%20space", "queue"),
            ("redis://h?queue=a&dead_letter=a", "dead_letter"),
            ("redis://h?colour=blue", "colour"),
            ("redis://h?queue=a&queue=b", "queue"),
            ("redis://h?visibility_timeout=1ms", "visibility_timeout"),
        ];
        for (raw, field) in cases {
            let err = QueueUrl::parse(raw).and_then(|u| u.finish("redis")).unwrap_err();
            assert!(err.is_invalid_input(), "{raw}");
            assert_eq!(err.details()[0].field, field, "{raw}: {err}");
        }
    }

    #[test]
    fn errors_mask_passwords() {
        let err = QueueUrl::parse("redis://user:hunter2@h:notaport").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let u = QueueUrl::parse("amqp://guest:hunter2@h/%2f?queue=q").unwrap();
        assert!(!u.masked().contains("hunter2"));
        assert!(!format!("{u:?}").contains("hunter2"));
    }

    #[test]
    fn driver_url_drops_our_parameters() {
        let mut u = QueueUrl::parse("postgres://u@h/db?queue=a&sslmode=disable&application_name=x").unwrap();
        let extra = u.take_driver_params(&["sslmode", "application_name"]);
        u.finish("postgres").unwrap();
        assert_eq!(u.driver_url(&extra), "postgres://u@h/db?sslmode=disable&application_name=x");
    }
}
