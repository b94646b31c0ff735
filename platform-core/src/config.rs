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
