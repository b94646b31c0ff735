//! Database URLs: the driver's own URL plus pool parameters, every parameter checked.
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `max_connections` | 10 (1 for `sqlite::memory:`) | pool size |
//! | `min_connections` | 0 | connections kept open |
//! | `acquire_timeout` | `10s` | wait for a free connection before `Timeout` |
//! | `idle_timeout` | `10m` | close connections idle this long |
//! | `max_lifetime` | `30m` | recycle connections this old |
//! | `lock_timeout` | `60s` | wait for another instance's migration lock |
//! | `schema` | — | PostgreSQL only: the `search_path` of every connection |
//!
//! Besides these, each driver's own parameters pass through (PostgreSQL: `sslmode`,
//! `sslrootcert`, `sslcert`, `sslkey`, `application_name`, `options`, …; MySQL:
//! `ssl-mode`, `ssl-ca`, `charset`, `collation`, `timezone`, …; SQLite: `mode`, `cache`,
//! `immutable`, `vfs`; SQL Server: `encrypt` (`required`, the default, `on`, `off`,
//! `not_supported`), `trust_server_certificate`, `ca_file`, `application_name`; Oracle:
//! `call_timeout`). Anything else is an `InvalidInput` error naming the parameter.

use std::time::Duration;

use platform_core::config::{UrlParams, scheme_error, url_error};
use platform_core::{Error, Result, mask_url};

use crate::Dialect;

const POSTGRES_PARAMS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];
const MYSQL_PARAMS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslca",
    "ssl-ca",
    "charset",
    "collation",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "socket",
    "timezone",
    "time-zone",
];
const SQLITE_PARAMS: &[&str] = &["mode", "cache", "immutable", "vfs"];
const SQLSERVER_PARAMS: &[&str] = &["encrypt", "trust_server_certificate", "ca_file", "application_name"];
const ORACLE_PARAMS: &[&str] = &["call_timeout"];

/// What a database URL says: the dialect, the driver URL and the pool settings.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DbOptions {
    /// Which database.
    pub dialect: Dialect,
    /// The URL handed to the driver: ours with the pool parameters taken out.
    pub driver_url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Connections kept open.
    pub min_connections: u32,
    /// Wait for a free connection.
    pub acquire_timeout: Duration,
    /// Close idle connections after this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Recycle connections this old (`None`: never).
    pub max_lifetime: Option<Duration>,
    /// Wait this long for another instance's migration lock.
    pub lock_timeout: Duration,
    /// PostgreSQL `search_path`.
    pub schema: Option<String>,
    /// Whether this is a private in-memory SQLite database.
    pub in_memory: bool,
}

impl std::fmt::Debug for DbOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbOptions")
            .field("dialect", &self.dialect)
            .field("driver_url", &mask_url(&self.driver_url))
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("lock_timeout", &self.lock_timeout)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

fn bad(key: &str, why: &str) -> Error {
    url_error("database", key, why)
}

impl DbOptions {
    /// Parses a database URL; errors name the part that is wrong, with secrets masked.
    pub fn parse(raw: &str) -> Result<Self> {
        let masked = mask_url(raw);
        let (scheme, _) = raw
            .split_once(':')
            .ok_or_else(|| bad("url", &format!("{masked:?} has no scheme (postgres://, mysql://, sqlite://)")))?;
        let dialect = match scheme {
            "postgres" | "postgresql" => Dialect::Postgres,
            "mysql" | "mariadb" => Dialect::Mysql,
            "sqlite" => Dialect::Sqlite,
            "sqlserver" | "mssql" => Dialect::SqlServer,
            "oracle" => Dialect::Oracle,
            other => return Err(scheme_error("platform-db", other, None, &crate::schemes(), raw)),
        };
        if !dialect.enabled() {
            return Err(scheme_error("platform-db", scheme, Some(dialect.feature()), &crate::schemes(), raw));
        }
        let (base, query) = match raw.split_once('?') {
            Some((b, q)) => (b.to_owned(), q.to_owned()),
            None => (raw.to_owned(), String::new()),
        };
        let base = if scheme == "mariadb" { format!("mysql{}", &base[scheme.len()..]) } else { base };
        let in_memory = dialect == Dialect::Sqlite && (base == "sqlite::memory:" || base == "sqlite://:memory:");
        if dialect != Dialect::Sqlite {
            url::Url::parse(&base).map_err(|e| bad("url", &format!("{masked:?} is not a URL: {e}")))?;
        }
        let mut params = UrlParams::parse("database", Some(&query))?;
        let max_connections = params.take_number("max_connections")?.unwrap_or(if in_memory { 1 } else { 10 });
        let min_connections = params.take_number("min_connections")?.unwrap_or(u32::from(in_memory));
        let acquire_timeout = params.take_duration("acquire_timeout")?.unwrap_or(Duration::from_secs(10));
        let idle_timeout = params.take_duration("idle_timeout")?.or(Some(Duration::from_secs(600)));
        let max_lifetime = params.take_duration("max_lifetime")?.or(Some(Duration::from_secs(1800)));
        let lock_timeout = params.take_duration("lock_timeout")?.unwrap_or(Duration::from_secs(60));
        let schema = params.take("schema");
        if max_connections == 0 {
            return Err(bad("max_connections", "must be at least 1"));
        }
        if min_connections > max_connections {
            return Err(bad("min_connections", "must not exceed max_connections"));
        }
        if in_memory && max_connections != 1 {
            return Err(bad("max_connections", "must be 1 for sqlite::memory: (one private database)"));
        }
        if let Some(s) = &schema {
            if dialect != Dialect::Postgres {
                return Err(bad("schema", "is a PostgreSQL parameter"));
            }
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(bad("schema", &format!("{s:?} is not a plain identifier")));
            }
        }
        let allowed = match dialect {
            Dialect::Postgres => POSTGRES_PARAMS,
            Dialect::Mysql => MYSQL_PARAMS,
            Dialect::Sqlite => SQLITE_PARAMS,
            Dialect::SqlServer => SQLSERVER_PARAMS,
            Dialect::Oracle => ORACLE_PARAMS,
        };
        let driver = params.take_all(allowed);
        params.finish(dialect.name())?;
        if !matches!(dialect, Dialect::SqlServer | Dialect::Oracle) {
            platform_core::sql::refuse_tls("platform-db", &driver)?;
        }
        let rest: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&driver).finish();
        let driver_url = if rest.is_empty() { base } else { format!("{base}?{rest}") };
        #[cfg(feature = "sqlserver")]
        if dialect == Dialect::SqlServer {
            crate::sqlserver::config(&driver_url)?;
        }
        #[cfg(feature = "oracle")]
        if dialect == Dialect::Oracle {
            crate::oracle::config(&driver_url)?;
        }
        Ok(Self {
            dialect,
            driver_url,
            max_connections,
            min_connections,
            acquire_timeout,
            idle_timeout: if in_memory { None } else { idle_timeout },
            max_lifetime: if in_memory { None } else { max_lifetime },
            lock_timeout,
            schema,
            in_memory,
        })
    }

    /// The URL with the password masked, for logs.
    pub fn masked(&self) -> String {
        mask_url(&self.driver_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked() {
        let err = DbOptions::parse("oracle://x").unwrap_err();
        assert!(err.is_invalid_input() && err.to_string().contains("oracle"), "{err}");
        let err = DbOptions::parse("sqlite://x.db?max_conections=3").unwrap_err();
        assert!(err.to_string().contains("max_conections"), "{err}");
        let err = DbOptions::parse("sqlite://x.db?acquire_timeout=soon").unwrap_err();
        assert!(err.to_string().contains("acquire_timeout"), "{err}");
        let err = DbOptions::parse("sqlite::memory:?max_connections=4").unwrap_err();
        assert!(err.to_string().contains("max_connections"), "{err}");
        let o = DbOptions::parse("sqlite://x.db?max_connections=3&mode=rwc").unwrap();
        assert_eq!((o.max_connections, o.driver_url.as_str()), (3, "sqlite://x.db?mode=rwc"));
        assert!(DbOptions::parse("sqlite::memory:").unwrap().in_memory);
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn secrets_are_masked() {
        let err = DbOptions::parse("postgres://u:hunter2@h/db?bogus=1").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let o = DbOptions::parse("postgres://u:hunter2@h/db?schema=app&sslmode=disable").unwrap();
        assert!(!format!("{o:?}").contains("hunter2"));
        assert_eq!(o.schema.as_deref(), Some("app"));
        let err = DbOptions::parse("postgres://u:hunter2@h/db?sslmode=require").unwrap_err();
        assert!(err.is_unsupported() && !err.to_string().contains("hunter2"), "{err}");
        let err = DbOptions::parse("postgres://u:hunter2@h/db?schema=a;drop").unwrap_err();
        assert!(!err.to_string().contains("hunter2") && err.to_string().contains("schema"), "{err}");
    }
}
