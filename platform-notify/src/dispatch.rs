//! The dispatcher: routes a notification by tag and severity to fallback chains of
//! notifiers, and owns every policy the drivers leave out.
//!
//! ```rust,ignore
//! let dispatcher = Dispatcher::new()
//!     .notifier("slack-ops", platform_notify::open("slack://T…/B…/X…")?)
//!     .notifier("teams-ops", platform_notify::open("teams://…")?)
//!     .route(Route::new("ops", &["slack-ops", "teams-ops"]).tag("ops").min_severity(Severity::Warning))?;
//! let report = dispatcher.notify(&Notification::new("disk full").tag("ops").severity(Severity::Critical), &Address::Configured).await;
//! assert!(report.delivered());
//! ```
//!
//! # Contract
//! - Every route whose tags and severity match gets the notification; a notification
//!   no route takes is reported as unrouted (and logged), never dropped in silence.
//! - In a route, notifiers are tried in order: the next one is used when the one
//!   before failed for good, or its breaker is open.
//! - A retryable failure is sent again up to [`RetryPolicy::attempts`] times, after the
//!   vendor's delay when it gave one (full-jitter exponential backoff otherwise); a
//!   vendor's delay longer than [`RetryPolicy::max_delay`] moves on to the next notifier.
//! - A delay a vendor announced (a 429's `retry_after`, Discord's remaining 0) holds
//!   every send to that notifier until it passes: they wait, none is sent into a
//!   known limit.
//! - A gone recipient is reported to the [`RecipientHook`]; a moved one too, and the
//!   notification goes to the new address at once.
//! - Text longer than a notifier takes is shortened by [`crate::driver::shorten`]'s rule.
//! - A notifier that fails [`Breaker::failures`] times running (retryable failures and
//!   configuration errors) is skipped for [`Breaker::open_for`]; then one send at a
//!   time is let through, whose answer closes the breaker (a success, or a failure that
//!   is the recipient's or the payload's) and whose failure opens it again.
//! - In dry-run mode nothing is sent; the report names the notifier that would have.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use platform_core::{Error, Result};
use tracing::Instrument as _;

use crate::driver::shorten;
use crate::{Address, Disposition, Notification, Notifier, NotifyError, Receipt, Severity};

/// How often and how long to retry one notifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Sends per notifier, the first included (3).
    pub attempts: u32,
    /// The first backoff step when the vendor gives no delay (500 ms), doubling.
    pub base: Duration,
    /// The longest wait taken before moving on to the next notifier (30 s).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 3, base: Duration::from_millis(500), max_delay: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// `attempts` sends, backoff from `base`, waits up to `max_delay`.
    pub fn new(attempts: u32, base: Duration, max_delay: Duration) -> Self {
        Self { attempts: attempts.max(1), base, max_delay }
    }

    /// Full jitter: uniform in `[0, base * 2^(attempt-1)]`, at most `max_delay`.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(self.max_delay);
        let r = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0;
        ceiling.mul_f64(r)
    }
}

/// When a notifier is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Breaker {
    /// Failures in a row that open it (5).
    pub failures: u32,
    /// How long it stays open (30 s).
    pub open_for: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Self { failures: 5, open_for: Duration::from_secs(30) }
    }
}

impl Breaker {
    /// Opens after `failures` in a row, for `open_for`.
    pub fn new(failures: u32, open_for: Duration) -> Self {
        Self { failures: failures.max(1), open_for }
    }
}

/// Where a notification goes: a fallback chain of notifiers, for the notifications
/// whose tags and severity match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    name: String,
    chain: Vec<String>,
    tags: BTreeSet<String>,
    min_severity: Severity,
}

impl Route {
    /// A route named `name` over `chain` (notifier names, tried in order), taking every
    /// notification until narrowed.
    pub fn new(name: impl Into<String>, chain: &[&str]) -> Self {
        Self {
            name: name.into(),
            chain: chain.iter().map(|s| (*s).to_owned()).collect(),
            tags: BTreeSet::new(),
            min_severity: Severity::Info,
        }
    }

    /// Only notifications with this tag (any of the tags given, when several).
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }

    /// Only notifications at least this severe.
    #[must_use]
    pub fn min_severity(mut self, severity: Severity) -> Self {
        self.min_severity = severity;
        self
    }

    fn takes(&self, n: &Notification) -> bool {
        n.severity >= self.min_severity && (self.tags.is_empty() || self.tags.iter().any(|t| n.tags.contains(t)))
    }
}

/// Told about recipients to prune or update.
#[async_trait]
pub trait RecipientHook: std::fmt::Debug + Send + Sync {
    /// `address` is gone from `notifier` (a 410, an unregistered device, a blocked
    /// bot): stop sending to it.
    async fn gone(&self, notifier: &str, address: &Address, error: &NotifyError);
    /// `from` moved to `to` on `notifier`: store `to`. The dispatcher already sent there.
    async fn moved(&self, notifier: &str, from: &Address, to: &Address);
}

/// What became of a notification on one route.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// Delivered by `notifier`.
    Sent {
        /// The route.
        route: String,
        /// The notifier that delivered.
        notifier: String,
        /// What the vendor said.
        receipt: Receipt,
        /// Sends it took, over the whole chain.
        attempts: u32,
    },
    /// Dry run: `notifier` would have been tried first.
    DryRun {
        /// The route.
        route: String,
        /// The notifier.
        notifier: String,
    },
    /// Every notifier of the route failed; each one's last error, in chain order.
    Failed {
        /// The route.
        route: String,
        /// Notifier name and its last error.
        errors: Vec<(String, NotifyError)>,
    },
}

/// What became of a notification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// One per route that took it.
    pub deliveries: Vec<Delivery>,
}

impl Report {
    /// Whether a route took it and every route that took it delivered it (or would
    /// have, in a dry run).
    pub fn delivered(&self) -> bool {
        !self.deliveries.is_empty() && self.deliveries.iter().all(|d| !matches!(d, Delivery::Failed { .. }))
    }

    /// Whether no route took it.
    pub fn unrouted(&self) -> bool {
        self.deliveries.is_empty()
    }
}

/// Counters since the dispatcher was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Notifications delivered (per route).
    pub sent: u64,
    /// Routes that failed.
    pub failed: u64,
    /// Sends that were retries or fallbacks.
    pub retried: u64,
    /// Notifications no route took.
    pub unrouted: u64,
}

#[derive(Debug, Default)]
struct Health {
    failures: u32,
    open_until: Option<Instant>,
    paused_until: Option<Instant>,
    /// A send let through a breaker whose time is up is under way: the others wait
    /// for its verdict (skipped as if open).
    probing: bool,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    unrouted: AtomicU64,
}

/// Routes, retries, falls back, paces and reports (see the [module](self) docs).
#[derive(Debug, Default)]
pub struct Dispatcher {
    notifiers: HashMap<String, Arc<dyn Notifier>>,
    routes: Vec<Route>,
    retry: RetryPolicy,
    breaker: Breaker,
    hook: Option<Arc<dyn RecipientHook>>,
    dry_run: bool,
    health: Mutex<HashMap<String, Health>>,
    counters: Counters,
}

enum Tried {
    Sent(Receipt),
    Failed(NotifyError),
}

impl Dispatcher {
    /// No notifiers, no routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `notifier` under `name`.
    #[must_use]
    pub fn notifier(mut self, name: impl Into<String>, notifier: Arc<dyn Notifier>) -> Self {
        self.notifiers.insert(name.into(), notifier);
        self
    }

    /// Adds `route`; a notifier it names that was not added is `InvalidInput`.
    pub fn route(mut self, route: Route) -> Result<Self> {
        if route.chain.is_empty() {
            return Err(Error::invalid_input(format!("route {:?} has no notifier", route.name)));
        }
        if let Some(unknown) = route.chain.iter().find(|n| !self.notifiers.contains_key(*n)) {
            return Err(Error::invalid_input(format!("route {:?} names unknown notifier {unknown:?}", route.name))
                .with_detail("route", format!("{unknown} is not a notifier")));
        }
        self.routes.push(route);
        Ok(self)
    }

    /// The retry policy.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The breaker policy.
    #[must_use]
    pub fn breaker(mut self, breaker: Breaker) -> Self {
        self.breaker = breaker;
        self
    }

    /// Who hears of gone and moved recipients.
    #[must_use]
    pub fn hook(mut self, hook: Arc<dyn RecipientHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Sends nothing; reports what would have been tried.
    #[must_use]
    pub fn dry_run(mut self, on: bool) -> Self {
        self.dry_run = on;
        self
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            unrouted: c.unrouted.load(Ordering::Relaxed),
        }
    }

    /// Whether `notifier`'s breaker is open now.
    pub fn is_open(&self, notifier: &str) -> bool {
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        health.get(notifier).and_then(|h| h.open_until).is_some_and(|until| until > Instant::now())
    }

    /// Sends `notification` to `to` on every route that takes it.
    pub async fn notify(&self, notification: &Notification, to: &Address) -> Report {
        let mut report = Report::default();
        for route in self.routes.iter().filter(|r| r.takes(notification)) {
            let span = tracing::info_span!("notify", route = %route.name, id = %notification.id);
            report.deliveries.push(self.deliver(route, notification, to).instrument(span).await);
        }
        if report.unrouted() {
            self.counters.unrouted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(id = %notification.id, tags = ?notification.tags, severity = ?notification.severity, "no route takes this notification");
        }
        report
    }

    /// The names of the routes that take `notification`.
    pub fn routes_for(&self, notification: &Notification) -> Vec<String> {
        self.routes.iter().filter(|r| r.takes(notification)).map(|r| r.name.clone()).collect()
    }

    /// Sends `notification` on route `route` alone; `None` when there is no such route.
    pub async fn notify_route(&self, route: &str, notification: &Notification, to: &Address) -> Option<Delivery> {
        let route = self.routes.iter().find(|r| r.name == route)?;
        let span = tracing::info_span!("notify", route = %route.name, id = %notification.id);
        let delivery = self.deliver(route, notification, to).instrument(span).await;
        Some(delivery)
    }

    async fn deliver(&self, route: &Route, n: &Notification, to: &Address) -> Delivery {
        let mut errors = Vec::new();
        let mut attempts = 0;
        for name in &route.chain {
            let Some(notifier) = self.notifiers.get(name) else { continue };
            if !self.admit(name) {
                errors.push((
                    name.clone(),
                    NotifyError::new(notifier.driver(), Disposition::Retry { after: None }, "breaker open"),
                ));
                continue;
            }
            if self.dry_run {
                return Delivery::DryRun { route: route.name.clone(), notifier: name.clone() };
            }
            let caps = notifier.capabilities();
            let short = shorten(n, caps.max_text);
            let address = if caps.addresses { to.clone() } else { Address::Configured };
            match self.try_notifier(name, notifier.as_ref(), &short, address, &mut attempts).await {
                Tried::Sent(receipt) => {
                    self.counters.sent.fetch_add(1, Ordering::Relaxed);
                    return Delivery::Sent { route: route.name.clone(), notifier: name.clone(), receipt, attempts };
                }
                Tried::Failed(e) => {
                    tracing::warn!(notifier = %name, error = %e, "notifier failed; trying the next");
                    errors.push((name.clone(), e));
                }
            }
        }
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        Delivery::Failed { route: route.name.clone(), errors }
    }

    fn with_health<T>(&self, name: &str, f: impl FnOnce(&mut Health) -> T) -> T {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        f(health.entry(name.to_owned()).or_default())
    }

    async fn try_notifier(
        &self,
        name: &str,
        notifier: &dyn Notifier,
        n: &Notification,
        mut address: Address,
        attempts: &mut u32,
    ) -> Tried {
        let mut moved = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A delay the vendor announced holds every send to it.
            let paused =
                self.with_health(name, |h| h.paused_until).and_then(|u| u.checked_duration_since(Instant::now()));
            if let Some(wait) = paused {
                if wait > self.retry.max_delay {
                    let after = Some(wait);
                    return Tried::Failed(NotifyError::new(
                        notifier.driver(),
                        Disposition::Retry { after },
                        "paused by the vendor",
                    ));
                }
                tokio::time::sleep(wait).await;
            }
            *attempts += 1;
            if *attempts > 1 {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
            }
            let span = tracing::info_span!("notify.send", notifier = %name, driver = notifier.driver(), attempt);
            let result = notifier.send(n, &address).instrument(span).await;
            let e = match result {
                Ok(receipt) => {
                    let pause = receipt.pause.map(|p| Instant::now() + p);
                    self.with_health(name, |h| {
                        *h = Health { failures: 0, open_until: None, paused_until: pause, probing: false };
                    });
                    return Tried::Sent(receipt);
                }
                Err(e) => e,
            };
            match &e.disposition {
                Disposition::Retry { after } => {
                    self.failed(name);
                    let wait = after.unwrap_or_else(|| self.retry.backoff(attempt));
                    if after.is_some() {
                        self.with_health(name, |h| h.paused_until = Some(Instant::now() + wait));
                    }
                    if attempt >= self.retry.attempts || wait > self.retry.max_delay || self.is_open(name) {
                        return Tried::Failed(e);
                    }
                    if after.is_none() {
                        tokio::time::sleep(wait).await;
                    }
                }
                Disposition::FixConfig => {
                    self.failed(name);
                    return Tried::Failed(e);
                }
                // The notifier answered: its breaker has no quarrel with it.
                Disposition::RecipientMoved { to } if !moved => {
                    self.healthy(name);
                    if let Some(hook) = &self.hook {
                        hook.moved(name, &address, to).await;
                    }
                    address = to.clone();
                    moved = true;
                }
                Disposition::RecipientGone => {
                    self.healthy(name);
                    if let Some(hook) = &self.hook {
                        hook.gone(name, &address, &e).await;
                    }
                    return Tried::Failed(e);
                }
                _ => {
                    self.healthy(name);
                    return Tried::Failed(e);
                }
            }
        }
    }

    /// One more failure in a row; the breaker opens at the threshold (again at once
    /// when it was half open).
    /// Marks `name` as answering: its breaker closes.
    fn healthy(&self, name: &str) {
        self.with_health(name, |h| {
            h.failures = 0;
            h.open_until = None;
            h.probing = false;
        });
    }

    /// Whether a send may go to `name`: not while its breaker is open; once its time
    /// is up, one send at a time until one succeeds (half open).
    fn admit(&self, name: &str) -> bool {
        let threshold = self.breaker.failures;
        self.with_health(name, |h| match h.open_until {
            Some(until) if until > Instant::now() => false,
            Some(_) if h.failures >= threshold => !std::mem::replace(&mut h.probing, true),
            _ => true,
        })
    }

    fn failed(&self, name: &str) {
        let breaker = self.breaker;
        self.with_health(name, |h| {
            h.failures += 1;
            h.probing = false;
            if h.failures >= breaker.failures {
                h.open_until = Some(Instant::now() + breaker.open_for);
                tracing::warn!(notifier = %name, open_for = ?breaker.open_for, "breaker opened");
            }
        });
    }
}
