//! Configuration: secrets that never print, masked URLs, and a `{PREFIX}_*` env reader.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use crate::{Error, Result};

/// What [`Secret`] and [`mask_url`] print in place of a secret.
pub const MASK: &str = "***";

/// A value that never shows in `Debug`, `Display` or serialized output.
///
/// Read it with [`Secret::expose`]. Deserializing reads the plain value, so a config
/// struct can hold `Secret<String>` fields.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret value. Call it only where the value is needed, never for logging.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the secret value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl<T> serde::Serialize for Secret<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Secret<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        T::deserialize(d).map(Self)
    }
}

/// Whether a parameter or variable name looks like it holds a secret
/// (`password`, `token`, `secret`, `key`, `sig`, `access_key`, `X-Amz-Signature`…).
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('-', "_");
    const EXACT: &[&str] = &["key", "sig", "pass", "pwd", "auth", "sas", "code"];
    const CONTAINS: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "token",
        "signature",
        "credential",
        "apikey",
        "api_key",
        "access_key",
        "private_key",
        "account_key",
        "authorization",
        "session_key",
    ];
    EXACT.contains(&n.as_str())
        || CONTAINS.iter().any(|c| n.contains(c))
        || n.ends_with("_key")
        || n.ends_with("_sig")
        || n.ends_with("_pass")
        || n.ends_with("_pwd")
}

/// Masks the password and the secret-looking query parameters of a URL.
///
/// `redis://user:hunter2@host/0?token=abc&db=1` becomes
/// `redis://user:***@host/0?token=***&db=1`. A string that does not parse as a URL is
/// masked conservatively: everything between `://` and `@` is hidden.
pub fn mask_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some(MASK));
            }
            if url.query().is_some() {
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if is_secret_name(&k) { MASK.to_owned() } else { v.into_owned() };
                        (k.into_owned(), v)
                    })
                    .collect();
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            // A user name that is itself a token (`https://TOKEN@host`) is hidden too.
            if url.password().is_none() && !url.username().is_empty() && url.username().len() >= 20 {
                let _ = url.set_username(MASK);
            }
            url.to_string().replace("%2A%2A%2A", MASK)
        }
        Err(_) => mask_unparsed(raw),
    }
}

fn mask_unparsed(raw: &str) -> String {
    let Some(start) = raw.find("://").map(|i| i + 3) else {
        return raw.to_owned();
    };
    match raw[start..].rfind('@') {
        Some(at) => format!("{}{MASK}{}", &raw[..start], &raw[start + at..]),
        None => raw.to_owned(),
    }
}

/// Parses a duration: `250ms`, `30s`, `5m`, `2h`, `1d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let bad = || Error::invalid_input(format!("\"{s}\" is not a duration (use e.g. 250ms, 30s, 5m, 2h)"));
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "us" | "µs" => value / 1_000_000.0,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// Parses a boolean the way people write it in env files: `true/false`, `1/0`, `yes/no`, `on/off`.
pub fn parse_bool(s: &str) -> Result<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(Error::invalid_input(format!("\"{s}\" is not a boolean (use true or false)"))),
    }
}

/// A percent-encoded URL part (user name, password, path segment) decoded; `+` stays a
/// plus, as it does outside a query.
pub fn url_decode(part: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", part.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The one shape of a bad backend URL: `InvalidInput` from `open`, message
/// `"{what} url: {key} {why}"`, and a field detail naming `key`. `what` is the crate's
/// concern (`queue`, `store`, `database`).
pub fn url_error(what: &str, key: &str, why: &str) -> Error {
    Error::invalid_input(format!("{what} url: {key} {why}")).with_op("open").with_detail(key, why)
}

/// A URL scheme this build cannot open: `Unsupported` naming the feature of `krate`
/// that enables it, or, for a scheme no feature enables, `InvalidInput` listing the
/// schemes this build opens. `url` is shown masked.
pub fn scheme_error(krate: &str, scheme: &str, feature: Option<&str>, supported: &[&str], url: &str) -> Error {
    let masked = mask_url(url);
    let err = match feature {
        Some(feature) => Error::new(
            crate::ErrorKind::Unsupported,
            format!("scheme {scheme:?} needs feature {feature:?} of {krate} (url {masked:?})"),
        )
        .with_detail("scheme", format!("needs feature {feature:?}")),
        None => Error::invalid_input(format!(
            "unknown url scheme {scheme:?} in {masked:?}; this build of {krate} opens: {}",
            supported.join(", ")
        ))
        .with_detail("scheme", "unknown scheme"),
    };
    err.with_op("open")
}

/// The query parameters of a backend URL, taken one by one by the code that
/// understands them; [`finish`](UrlParams::finish) rejects whatever is left, naming
/// it. Every error has the shape of [`url_error`].
///
/// ```
/// use platform_core::config::UrlParams;
/// let mut p = UrlParams::parse("queue", Some("queue=jobs&visibility_timeout=2s&colour=blue")).unwrap();
/// assert_eq!(p.take("queue").as_deref(), Some("jobs"));
/// assert_eq!(p.take_duration("visibility_timeout").unwrap(), Some(std::time::Duration::from_secs(2)));
/// let err = p.finish("redis").unwrap_err();
/// assert_eq!(err.details()[0].field, "colour");
/// ```
#[derive(Clone)]
pub struct UrlParams {
    what: &'static str,
    params: BTreeMap<String, String>,
}

impl fmt::Debug for UrlParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be secrets; the keys say enough.
        f.debug_struct("UrlParams").field("what", &self.what).field("keys", &self.params.keys()).finish()
    }
}

impl UrlParams {
    /// Decodes a URL's query (`None`: no parameters). A key given twice is an error.
    pub fn parse(what: &'static str, query: Option<&str>) -> Result<Self> {
        let mut params = BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if params.insert(k.to_string(), v.to_string()).is_some() {
                return Err(url_error(what, &k, "is given twice"));
            }
        }
        Ok(Self { what, params })
    }

    /// The error for parameter `key`, in the shape every URL error has.
    pub fn error(&self, key: &str, why: &str) -> Error {
        url_error(self.what, key, why)
    }

    /// Whether `key` was given and not yet taken.
    pub fn contains(&self, key: &str) -> bool {
        self.params.contains_key(key)
    }

    /// Removes and returns parameter `key`.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.params.remove(key)
    }

    /// Parameter `key` as a duration (`250ms`, `30s`, `5m`).
    pub fn take_duration(&mut self, key: &str) -> Result<Option<Duration>> {
        self.take(key).map(|v| parse_duration(&v).map_err(|e| self.error(key, e.message()))).transpose()
    }

    /// Parameter `key` as a number (or anything else parsed with `FromStr`).
    pub fn take_number<T: FromStr>(&mut self, key: &str) -> Result<Option<T>> {
        self.take(key).map(|v| v.parse().map_err(|_| self.error(key, &format!("{v:?} is not a number")))).transpose()
    }

    /// Parameter `key` as a boolean (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`).
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        self.take(key)
            .map(|v| parse_bool(&v).map_err(|_| self.error(key, &format!("{v:?} is not true or false"))))
            .transpose()
    }

    /// Removes the parameters among `keys` that are present, in the order of `keys`:
    /// the driver's own, to hand on.
    pub fn take_all(&mut self, keys: &[&str]) -> Vec<(String, String)> {
        keys.iter().filter_map(|k| self.take(k).map(|v| ((*k).to_owned(), v))).collect()
    }

    /// Fails on any parameter nobody took, naming it and `backend`.
    pub fn finish(&self, backend: &str) -> Result<()> {
        match self.params.keys().next() {
            None => Ok(()),
            Some(key) => {
                Err(Error::invalid_input(format!("{} url: unknown parameter {key:?} for {backend}", self.what))
                    .with_op("open")
                    .with_detail(key.clone(), format!("not a parameter of {backend}")))
            }
        }
    }
}

/// Reads `{PREFIX}_*` variables, with errors that name the variable and the bad value
/// (masked when the variable looks secret), and remembers what it read so the
/// effective configuration can be logged with secrets masked.
///
/// ```
/// use platform_core::config::Env;
/// let env = Env::from_pairs("QUEUE", [("QUEUE_URL", "redis://:pw@localhost"), ("QUEUE_WORKERS", "4")]);
/// assert_eq!(env.get::<u32>("WORKERS").unwrap(), Some(4));
/// assert_eq!(env.effective()[0], ("QUEUE_WORKERS".to_string(), "4".to_string()));
/// ```
pub struct Env {
    prefix: String,
    source: Option<BTreeMap<String, String>>,
    read: Mutex<BTreeMap<String, String>>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env")
            .field("prefix", &self.prefix)
            .field("effective", &self.effective())
            .finish_non_exhaustive()
    }
}

impl Env {
    /// Reads the process environment under `prefix` (`QUEUE` reads `QUEUE_URL`, …).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: normalize_prefix(prefix), source: None, read: Mutex::default() }
    }

    /// Reads from the given pairs instead of the process environment (for tests and
    /// for configs loaded from elsewhere).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(prefix: &str, pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let source = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        Self { prefix: normalize_prefix(prefix), source: Some(source), read: Mutex::default() }
    }

    /// The full variable name for `key` (`URL` → `QUEUE_URL`).
    pub fn var_name(&self, key: &str) -> String {
        if self.prefix.is_empty() { key.to_owned() } else { format!("{}_{key}", self.prefix) }
    }

    /// The raw value of `{PREFIX}_{key}`, if set and not empty.
    pub fn raw(&self, key: &str) -> Option<String> {
        let name = self.var_name(key);
        let value = match &self.source {
            Some(map) => map.get(&name).cloned(),
            None => std::env::var(&name).ok(),
        }
        .filter(|v| !v.is_empty())?;
        let shown = if is_secret_name(&name) { MASK.to_owned() } else { mask_url(&value) };
        self.read.lock().unwrap_or_else(|e| e.into_inner()).insert(name, shown);
        Some(value)
    }

    /// `{PREFIX}_{key}` parsed as `T`, or `None` when unset.
    pub fn get<T>(&self, key: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.parse_with(key, |v| v.parse::<T>().map_err(|e| e.to_string()))
    }

    /// `{PREFIX}_{key}` parsed as `T`; an error naming the variable when unset.
    pub fn require<T>(&self, key: &str) -> Result<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.get(key)?.ok_or_else(|| {
            let name = self.var_name(key);
            Error::invalid_input(format!("{name} is not set")).with_detail(name, "required")
        })
    }

    /// `{PREFIX}_{key}` as a duration (`30s`, `250ms`, or seconds).
    pub fn duration(&self, key: &str) -> Result<Option<Duration>> {
        self.parse_with(key, |v| parse_duration(v).map_err(|e| e.message().to_owned()))
    }

    /// `{PREFIX}_{key}` as a boolean.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.parse_with(key, |v| parse_bool(v).map_err(|e| e.message().to_owned()))
    }

    /// `{PREFIX}_{key}` as a secret.
    pub fn secret(&self, key: &str) -> Result<Option<Secret<String>>> {
        let name = self.var_name(key);
        let value = self.raw(key).map(Secret::new);
        if value.is_some() {
            self.read.lock().unwrap_or_else(|e| e.into_inner()).insert(name, MASK.to_owned());
        }
        Ok(value)
    }

    fn parse_with<T>(&self, key: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<Option<T>> {
        let Some(raw) = self.raw(key) else { return Ok(None) };
        let name = self.var_name(key);
        parse(&raw).map(Some).map_err(|why| {
            let shown = if is_secret_name(&name) { MASK.to_owned() } else { mask_url(&raw) };
            Error::invalid_input(format!("{name}={shown:?} is invalid: {why}")).with_detail(name, why)
        })
    }

    /// Every variable read so far with its value, secrets masked, sorted by name.
    pub fn effective(&self) -> Vec<(String, String)> {
        self.read.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Logs the effective configuration, one tracing line per variable, secrets masked.
    pub fn log_effective(&self) {
        for (name, value) in self.effective() {
            tracing::info!(target: "platform::config", variable = %name, value = %value, "config");
        }
    }
}

fn normalize_prefix(prefix: &str) -> String {
    prefix.trim_end_matches('_').to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_params_name_each_bad_part() {
        type Step = fn(&mut UrlParams) -> Result<()>;
        let cases: [(&str, Step, &str); 5] = [
            ("a=1&a=2", |_| Ok(()), "a"),
            ("wait=soon", |p| p.take_duration("wait").map(drop), "wait"),
            ("n=many", |p| p.take_number::<u32>("n").map(drop), "n"),
            ("tls=maybe", |p| p.take_bool("tls").map(drop), "tls"),
            ("colour=blue", |p| p.finish("redis"), "colour"),
        ];
        for (query, step, field) in cases {
            let err = UrlParams::parse("queue", Some(query)).and_then(|mut p| step(&mut p)).unwrap_err();
            assert!(err.is_invalid_input(), "{query}");
            assert_eq!(err.op(), "open", "{query}");
            assert_eq!(err.details()[0].field, field, "{query}: {err}");
            assert!(err.to_string().contains("queue url:"), "{query}: {err}");
        }
        let mut p = UrlParams::parse("store", Some("x=1&tls=on&n=7&k=v")).unwrap();
        assert_eq!(p.take_bool("tls").unwrap(), Some(true));
        assert_eq!(p.take_number::<u8>("n").unwrap(), Some(7));
        let driver = p.take_all(&["k", "missing", "x"]);
        assert_eq!(driver, [("k".to_owned(), "v".to_owned()), ("x".to_owned(), "1".to_owned())]);
        p.finish("s3").unwrap();
    }

    #[test]
    fn scheme_errors() {
        let err = scheme_error("platform-queue", "redis", Some("redis"), &["memory"], "redis://u:hunter2@h");
        assert!(err.is_unsupported() && err.to_string().contains("feature \"redis\""), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = scheme_error("platform-queue", "pigeon", None, &["memory", "sqlite"], "pigeon://coop");
        assert!(err.is_invalid_input() && err.to_string().contains("memory, sqlite"), "{err}");
        assert_eq!(err.details()[0].field, "scheme");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s:?} {s} {s:#?}"), "*** *** ***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        let back: Secret<String> = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(back.expose(), "hunter2");
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Cfg {
            user: String,
            password: Secret<String>,
        }
        let cfg: Cfg = serde_json::from_str(r#"{"user":"u","password":"hunter2"}"#).unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn masks_urls() {
        let cases = [
            ("redis://user:hunter2@localhost:6379/0", "redis://user:***@localhost:6379/0"),
            ("postgres://u:p%40ss@db/app?sslmode=require", "postgres://u:***@db/app?sslmode=require"),
            ("amqp://guest:guest@127.0.0.1:5672/%2f", "amqp://guest:***@127.0.0.1:5672/%2f"),
            (
                "s3://bucket?access_key=AKIA&secret_key=xyz&region=eu",
                "s3://bucket?access_key=***&secret_key=***&region=eu",
            ),
            (
                "https://h/p?sig=abc&X-Amz-Signature=def&token=t&x=1",
                "https://h/p?sig=***&X-Amz-Signature=***&token=***&x=1",
            ),
            ("redis://localhost:6379", "redis://localhost:6379"),
            ("not a url://user:pw@host", "not a url://***@host"),
            ("plain", "plain"),
        ];
        for (input, expected) in cases {
            assert_eq!(mask_url(input), expected, "{input}");
            assert!(!mask_url(input).contains("hunter2"));
        }
    }

    #[test]
    fn secret_names() {
        for n in [
            "password",
            "DB_PASSWORD",
            "token",
            "api-key",
            "access_key",
            "X-Amz-Signature",
            "sig",
            "client_secret",
            "key",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in ["url", "region", "visibility_timeout", "max_attempts", "user", "db"] {
            assert!(!is_secret_name(n), "{n}");
        }
    }

    #[test]
    fn durations() {
        let ok = [("250ms", 250), ("30s", 30_000), ("5m", 300_000), ("2h", 7_200_000), ("1.5", 1_500), ("0", 0)];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(ms), "{s}");
        }
        for s in ["", "abc", "10 parsecs", "-1s", "s"] {
            assert!(parse_duration(s).unwrap_err().is_invalid_input(), "{s}");
        }
    }

    #[test]
    fn env_reader_names_variable_and_value() {
        let env = Env::from_pairs(
            "queue_",
            [("QUEUE_WORKERS", "four"), ("QUEUE_WAIT", "3s"), ("QUEUE_PASSWORD", "hunter2"), ("QUEUE_EMPTY", "")],
        );
        let err = env.get::<u32>("WORKERS").unwrap_err();
        assert!(err.is_invalid_input());
        assert!(err.to_string().contains("QUEUE_WORKERS=\"four\""), "{err}");
        assert_eq!(err.details()[0].field, "QUEUE_WORKERS");
        assert_eq!(env.duration("WAIT").unwrap(), Some(Duration::from_secs(3)));
        assert_eq!(env.get::<u32>("EMPTY").unwrap(), None);
        assert_eq!(env.get::<u32>("MISSING").unwrap(), None);
        let err = env.require::<u32>("MISSING").unwrap_err();
        assert!(err.to_string().contains("QUEUE_MISSING is not set"));
        let err = env.get::<u32>("PASSWORD").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"));
        assert_eq!(env.secret("PASSWORD").unwrap().unwrap().expose(), "hunter2");
        assert!(env.bool("WAIT").is_err());
    }

    #[test]
    fn effective_config_is_masked() {
        let env =
            Env::from_pairs("DB", [("DB_URL", "postgres://u:hunter2@h/db"), ("DB_TOKEN", "abc"), ("DB_POOL", "5")]);
        let _ = env.raw("URL");
        let _ = env.secret("TOKEN");
        let _ = env.get::<u8>("POOL");
        let shown = format!("{:?}", env.effective());
        assert!(shown.contains("postgres://u:***@h/db"), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("abc"), "{shown}");
        assert!(format!("{env:?}").contains("DB_POOL"));
        env.log_effective();
    }

    #[test]
    fn reads_process_env() {
        let env = Env::new("PLATFORM_CORE_SURELY_UNSET");
        assert_eq!(env.get::<u32>("X").unwrap(), None);
        assert_eq!(env.var_name("URL"), "PLATFORM_CORE_SURELY_UNSET_URL");
    }
}
