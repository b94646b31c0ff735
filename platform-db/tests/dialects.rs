//! SQL Server and Oracle, which have no server here that can run the conformance
//! suite: SQL Server against a TDS server and scripted TDS exchanges, Oracle against
//! scripted sessions. Each module says what it covers; the README's matrix says what
//! ran against what.

#[path = "dialects/oracle.rs"]
mod oracle;
#[path = "dialects/sqlserver.rs"]
mod sqlserver;
#[path = "dialects/sqlserver_tds.rs"]
mod sqlserver_tds;

/// Checks `lines` against `tests/golden/{name}`, one line each.
fn golden(name: &str, lines: &[String]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    // Values travel as parameters, so the text holds no clock or checksum.
    let text: String = lines.iter().map(|l| format!("{}\n", l.replace('\n', " "))).collect();
    platform_core::testkit::assert_golden(&path, &text);
}
