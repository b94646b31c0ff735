//! One mapping of SQL databases' own error codes onto [`ErrorKind`], shared by every
//! crate that talks to PostgreSQL, MySQL/MariaDB, SQLite, SQL Server or Oracle.
//!
//! Each function answers `(kind, retryable)`: whether the same statement (or the
//! transaction around it) is worth running again as it is. A deadlock or a
//! serialization failure is a retryable `Conflict`; a lock or
//! statement timeout a retryable `Timeout`; a server going away
//! or out of connections a retryable `Unavailable`.
//! Integrity violations are `Conflict` (a unique violation `AlreadyExists`), bad SQL
//! and bad values `InvalidInput`. `None`: the code is not in the table, and the
//! caller decides (usually `Internal`).
//!
//! With the `sqlx` feature, [`map_sqlx`] also maps the driver's own errors (I/O, pool
//! timeouts, decoding) the same way for every crate.

use crate::ErrorKind::{
    self, AlreadyExists, Cancelled, Conflict, InvalidInput, NotFound, PermissionDenied, Timeout, Unauthenticated,
    Unavailable, Unsupported,
};

/// A kind and whether it is worth retrying as it is.
pub type Mapped = (ErrorKind, bool);

/// PostgreSQL, by SQLSTATE.
pub fn postgres_kind(sqlstate: &str) -> Option<Mapped> {
    Some(match sqlstate {
        "23505" => (AlreadyExists, false),
        "42P07" | "42P06" | "42710" => (AlreadyExists, false),
        "40001" | "40P01" => (Conflict, true),
        "55P03" | "57014" => (Timeout, true),
        "57P01" | "57P02" | "57P03" => (Unavailable, true),
        "28000" | "28P01" => (Unauthenticated, false),
        "42501" => (PermissionDenied, false),
        "42P01" | "3D000" | "3F000" => (NotFound, false),
        "54000" => (InvalidInput, false),
        c if c.starts_with("23") => (Conflict, false),
        c if c.starts_with("08") || c.starts_with("53") => (Unavailable, true),
        c if c.starts_with("42") || c.starts_with("22") || c.starts_with("25") => (InvalidInput, false),
        _ => return None,
    })
}

/// MySQL and MariaDB, by server error number (and the client's own 2002–2013).
pub fn mysql_kind(number: u16) -> Option<Mapped> {
    Some(match number {
        1062 | 1586 | 1050 | 1007 => (AlreadyExists, false),
        1451 | 1452 | 1216 | 1217 | 3819 | 4025 | 1048 => (Conflict, false),
        1213 => (Conflict, true),
        1205 | 1969 | 3024 => (Timeout, true),
        1045 | 1698 => (Unauthenticated, false),
        1044 | 1142 | 1143 | 1227 => (PermissionDenied, false),
        1146 | 1049 => (NotFound, false),
        1064 | 1054 | 1406 | 1264 | 1366 | 1292 | 1060 | 1061 | 1153 => (InvalidInput, false),
        1040 | 1053 | 1927 | 2002 | 2003 | 2006 | 2013 => (Unavailable, true),
        1317 => (Cancelled, false),
        _ => return None,
    })
}

/// The error number a statement raises (`THROW`) for a construct it cannot express in
/// T-SQL, so that the caller sees `Unsupported` rather than a syntax error.
pub const SQLSERVER_UNSUPPORTED: u32 = 59_999;

/// SQL Server (and Azure SQL), by error number.
pub fn sqlserver_kind(number: u32) -> Option<Mapped> {
    Some(match number {
        2627 | 2601 | 2714 | 1913 | 1801 | 15_023 => (AlreadyExists, false),
        547 | 515 => (Conflict, false),
        1205 | 3960 | 41_302 | 41_305 | 41_325 => (Conflict, true),
        1222 | 3_617_000 => (Timeout, true),
        18_456 | 18_452 | 18_486 | 18_487 | 18_488 => (Unauthenticated, false),
        229 | 230 | 262 | 297 | 300 | 916 | 15_247 => (PermissionDenied, false),
        208 | 4060 | 911 | 2812 | 3701 => (NotFound, false),
        102 | 105 | 156 | 170 | 207 | 209 | 213 | 220 | 232 | 241 | 242 | 245 | 295 | 2705 | 2628 | 8114 | 8115
        | 8152 | 8169 | 4145 | 137 | 3902 => (InvalidInput, false),
        SQLSERVER_UNSUPPORTED => (Unsupported, false),
        233 | 10_053 | 10_054 | 10_060 | 10_928 | 10_929 | 40_197 | 40_501 | 40_613 | 49_918 | 49_919 | 49_920
        | 4221 | 17_142 | 6005 => (Unavailable, true),
        3980 | 3617 => (Cancelled, false),
        _ => return None,
    })
}

/// Oracle Database, by ORA error number. ORA-20999 is what platform-db's Oracle
/// renderer raises for a construct it cannot express; ORA-20998 a migration lock not
/// granted in time.
pub fn oracle_kind(code: u32) -> Option<Mapped> {
    Some(match code {
        1 | 955 => (AlreadyExists, false),
        2291 | 2292 | 1400 | 2290 | 1407 => (Conflict, false),
        60 | 8177 => (Conflict, true),
        54 | 30_006 | 51 | 20_998 => (Timeout, true),
        1017 | 28_000 | 28_001 | 1005 => (Unauthenticated, false),
        1031 | 1045 | 1_950 => (PermissionDenied, false),
        942 | 4043 | 1418 | 2289 => (NotFound, false),
        900 | 904 | 906 | 907 | 911 | 917 | 918 | 920 | 921 | 923 | 933 | 936 | 1722 | 1858 | 1861 | 12_899 | 1438
        | 6502 | 1008 => (InvalidInput, false),
        20_999 => (Unsupported, false),
        3113 | 3114 | 3135 | 12_170 | 12_514 | 12_516 | 12_520 | 12_528 | 12_537 | 12_541 | 12_543 | 1033 | 1034
        | 1089 | 1090 | 1092 | 18 | 20 => (Unavailable, true),
        1013 => (Cancelled, false),
        _ => return None,
    })
}

/// SQLite, by extended result code; `message` tells "no such table" from other errors.
pub fn sqlite_kind(code: i32, message: &str) -> Option<Mapped> {
    Some(match code {
        2067 | 1555 => (AlreadyExists, false),
        _ => match code & 0xff {
            19 => (Conflict, false),
            5 | 6 => (Unavailable, true),
            3 | 8 | 23 => (PermissionDenied, false),
            13 | 14 => (Unavailable, false),
            1 if message.starts_with("no such table") => (NotFound, false),
            1 | 18 | 20 | 25 => (InvalidInput, false),
            _ => return None,
        },
    })
}

/// Refuses driver parameters that demand TLS (`sslmode=require`, `verify-ca`,
/// `verify-full`; `ssl-mode=REQUIRED`, `VERIFY_CA`, `VERIFY_IDENTITY`), which the sqlx
/// of these crates is built without: `Unsupported` at open, naming the parameter,
/// instead of a connection error later. `disable`, `prefer` and the like pass.
pub fn refuse_tls(krate: &str, params: &[(String, String)]) -> crate::Result<()> {
    for (key, value) in params {
        let key_is_mode = matches!(key.as_str(), "sslmode" | "ssl-mode" | "ssl_mode");
        let demands = matches!(
            value.to_ascii_lowercase().replace('_', "-").as_str(),
            "require" | "required" | "verify-ca" | "verify-full" | "verify-identity"
        );
        if key_is_mode && demands {
            return Err(crate::Error::new(
                crate::ErrorKind::Unsupported,
                format!("{key}={value}: TLS is not compiled into {krate}"),
            )
            .with_op("open")
            .with_detail(key.clone(), "TLS is not compiled in"));
        }
    }
    Ok(())
}

/// Maps a sqlx error: the driver's own failures the same way for every database, and a
/// database's error by `db_kind` (one of the tables above), `Internal` when it has none.
#[cfg(feature = "sqlx")]
pub fn map_sqlx(
    backend: &'static str,
    e: sqlx::Error,
    db_kind: impl FnOnce(&dyn sqlx::error::DatabaseError) -> Option<Mapped>,
) -> crate::Error {
    let (kind, retryable) = match &e {
        sqlx::Error::Configuration(_) => (InvalidInput, false),
        sqlx::Error::Database(db) => db_kind(db.as_ref()).unwrap_or((ErrorKind::Internal, false)),
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_) => {
            (Unavailable, true)
        }
        sqlx::Error::PoolTimedOut => (Timeout, true),
        sqlx::Error::PoolClosed => (Cancelled, false),
        sqlx::Error::RowNotFound => (NotFound, false),
        sqlx::Error::ColumnNotFound(_) | sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            (InvalidInput, false)
        }
        _ => (ErrorKind::Internal, false),
    };
    let message = match &e {
        sqlx::Error::PoolTimedOut => "timed out waiting for a free connection (acquire_timeout)".to_owned(),
        other => other.to_string(),
    };
    crate::Error::new(kind, message).with_backend(backend).with_retryable(retryable).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oracle_table() {
        assert_eq!(oracle_kind(1), Some((AlreadyExists, false)));
        assert_eq!(oracle_kind(2291), Some((Conflict, false)));
        assert_eq!(oracle_kind(60), Some((Conflict, true)));
        assert_eq!(oracle_kind(54), Some((Timeout, true)));
        assert_eq!(oracle_kind(1017), Some((Unauthenticated, false)));
        assert_eq!(oracle_kind(1031), Some((PermissionDenied, false)));
        assert_eq!(oracle_kind(942), Some((NotFound, false)));
        assert_eq!(oracle_kind(933), Some((InvalidInput, false)));
        assert_eq!(oracle_kind(20_999), Some((Unsupported, false)));
        assert_eq!(oracle_kind(3113), Some((Unavailable, true)));
        assert_eq!(oracle_kind(99_999), None);
    }

    #[test]
    fn sqlserver_table() {
        assert_eq!(sqlserver_kind(2627), Some((AlreadyExists, false)));
        assert_eq!(sqlserver_kind(2601), Some((AlreadyExists, false)));
        assert_eq!(sqlserver_kind(547), Some((Conflict, false)));
        assert_eq!(sqlserver_kind(1205), Some((Conflict, true)));
        assert_eq!(sqlserver_kind(1222), Some((Timeout, true)));
        assert_eq!(sqlserver_kind(18_456), Some((Unauthenticated, false)));
        assert_eq!(sqlserver_kind(229), Some((PermissionDenied, false)));
        assert_eq!(sqlserver_kind(208), Some((NotFound, false)));
        assert_eq!(sqlserver_kind(102), Some((InvalidInput, false)));
        assert_eq!(sqlserver_kind(SQLSERVER_UNSUPPORTED), Some((Unsupported, false)));
        assert_eq!(sqlserver_kind(40_613), Some((Unavailable, true)));
        assert_eq!(sqlserver_kind(1), None);
    }

    #[test]
    fn postgres_table() {
        let cases = [
            ("23505", Some((AlreadyExists, false))),
            ("42P07", Some((AlreadyExists, false))),
            ("23503", Some((Conflict, false))),
            ("23514", Some((Conflict, false))),
            ("23502", Some((Conflict, false))),
            ("40001", Some((Conflict, true))),
            ("40P01", Some((Conflict, true))),
            ("55P03", Some((Timeout, true))),
            ("57014", Some((Timeout, true))),
            ("57P01", Some((Unavailable, true))),
            ("53300", Some((Unavailable, true))),
            ("53100", Some((Unavailable, true))),
            ("08006", Some((Unavailable, true))),
            ("28P01", Some((Unauthenticated, false))),
            ("42501", Some((PermissionDenied, false))),
            ("42P01", Some((NotFound, false))),
            ("3D000", Some((NotFound, false))),
            ("42601", Some((InvalidInput, false))),
            ("22P02", Some((InvalidInput, false))),
            ("22001", Some((InvalidInput, false))),
            ("54000", Some((InvalidInput, false))),
            ("XX000", None),
        ];
        for (code, want) in cases {
            assert_eq!(postgres_kind(code), want, "{code}");
        }
    }

    #[test]
    fn mysql_table() {
        let cases = [
            (1062, Some((AlreadyExists, false))),
            (1050, Some((AlreadyExists, false))),
            (1452, Some((Conflict, false))),
            (3819, Some((Conflict, false))),
            (1048, Some((Conflict, false))),
            (1213, Some((Conflict, true))),
            (1205, Some((Timeout, true))),
            (3024, Some((Timeout, true))),
            (1045, Some((Unauthenticated, false))),
            (1142, Some((PermissionDenied, false))),
            (1044, Some((PermissionDenied, false))),
            (1146, Some((NotFound, false))),
            (1064, Some((InvalidInput, false))),
            (1406, Some((InvalidInput, false))),
            (2013, Some((Unavailable, true))),
            (1040, Some((Unavailable, true))),
            (1317, Some((Cancelled, false))),
            (1105, None),
        ];
        for (number, want) in cases {
            assert_eq!(mysql_kind(number), want, "{number}");
        }
    }

    #[test]
    fn tls_modes_that_demand_tls_are_refused() {
        let p = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        for (k, v) in [
            ("sslmode", "require"),
            ("sslmode", "verify-full"),
            ("ssl-mode", "VERIFY_IDENTITY"),
            ("ssl-mode", "REQUIRED"),
        ] {
            let err = refuse_tls("platform-db", &p(k, v)).unwrap_err();
            assert!(err.is_unsupported() && err.details()[0].field == k, "{k}={v}: {err}");
        }
        for (k, v) in
            [("sslmode", "disable"), ("sslmode", "prefer"), ("ssl-mode", "DISABLED"), ("application_name", "require")]
        {
            refuse_tls("platform-db", &p(k, v)).unwrap();
        }
    }

    #[test]
    fn sqlite_table() {
        let cases = [
            (2067, "", Some((AlreadyExists, false))),
            (1555, "", Some((AlreadyExists, false))),
            (787, "", Some((Conflict, false))),
            (275, "", Some((Conflict, false))),
            (1299, "", Some((Conflict, false))),
            (19, "", Some((Conflict, false))),
            (5, "", Some((Unavailable, true))),
            (517, "", Some((Unavailable, true))),
            (6, "", Some((Unavailable, true))),
            (8, "", Some((PermissionDenied, false))),
            (14, "", Some((Unavailable, false))),
            (1, "no such table: t", Some((NotFound, false))),
            (1, "near \"SELEKT\": syntax error", Some((InvalidInput, false))),
            (11, "", None),
        ];
        for (code, message, want) in cases {
            assert_eq!(sqlite_kind(code, message), want, "{code} {message}");
        }
    }
}
