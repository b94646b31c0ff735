//! Tenant scope.
//!
//! # Contract
//! - [`Db::with_tenant`] runs work in one transaction that carries the tenant id. On
//!   PostgreSQL it runs `SELECT set_config('app.tenant_id', $1, true)` first: the setting
//!   lasts until the transaction ends, committed or not, so a pooled connection never
//!   carries it to the next borrower.
//! - **PostgreSQL enforces it** through row-level security policies written against
//!   `current_setting('app.tenant_id', true)`, for example
//!   `CREATE POLICY tenant ON notes USING (tenant_id = current_setting('app.tenant_id', true))`.
//!   Outside `with_tenant` the setting is `NULL`, so a query sees no tenant's rows (fail
//!   closed). [`check_row_level_security`] verifies at startup that every tenant table has
//!   RLS enabled **and forced** (otherwise its owner bypasses it) and that the connected
//!   role is neither a superuser nor `BYPASSRLS`.
//! - **MySQL and SQLite enforce nothing**: they have no row-level security. `with_tenant`
//!   records the tenant on the [`Tx`], and [`filter`] builds the `tenant_id = …` condition
//!   from it, failing when no tenant is set. Queries that don't use the filter are not
//!   scoped; review them as you would any query.

use futures::future::BoxFuture;
use platform_core::{Error, ErrorKind, Result};
use sea_query::{Expr, ExprTrait as _, IntoColumnRef};

use crate::{Db, Dialect, Sql, Tx};

/// The PostgreSQL setting that carries the tenant id.
pub const SETTING: &str = "app.tenant_id";

fn validate(tenant: &str) -> Result<()> {
    if tenant.is_empty() || tenant.len() > 255 || tenant.chars().any(char::is_control) {
        return Err(Error::invalid_input(format!("tenant id {tenant:?} must be 1-255 printable characters"))
            .with_op("with_tenant")
            .with_detail("tenant", "empty, too long or has control characters"));
    }
    Ok(())
}

impl Db {
    /// Runs `f` in a transaction scoped to `tenant`: committed on `Ok`, rolled back on
    /// `Err`. See the [module docs](crate::tenant) for what each database enforces.
    pub async fn with_tenant<T, F>(&self, tenant: &str, f: F) -> Result<T>
    where
        T: Send,
        F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<T>> + Send,
    {
        validate(tenant)?;
        let mut tx = self.begin().await?;
        if self.dialect() == Dialect::Postgres {
            tx.execute(&Sql::new("SELECT set_config(?, ?, true)").bind(SETTING).bind(tenant)).await?;
        }
        tx.tenant = Some(tenant.to_owned());
        tx.run(f).await
    }
}

impl Tx {
    /// Scopes this transaction to `tenant` from here on, as [`Db::with_tenant`] does
    /// at its start: for work that another helper opened the transaction for (an
    /// idempotent request's). A transaction already scoped to another tenant is
    /// `InvalidInput`: one transaction, one tenant.
    pub async fn enter_tenant(&mut self, tenant: &str) -> Result<()> {
        validate(tenant)?;
        match self.tenant.as_deref() {
            Some(t) if t == tenant => return Ok(()),
            Some(t) => {
                return Err(Error::invalid_input(format!("the transaction is scoped to tenant {t:?} already"))
                    .with_op("enter_tenant"));
            }
            None => {}
        }
        if self.dialect() == Dialect::Postgres {
            self.execute(&Sql::new("SELECT set_config(?, ?, true)").bind(SETTING).bind(tenant)).await?;
        }
        self.tenant = Some(tenant.to_owned());
        Ok(())
    }
}

/// `column = <the transaction's tenant>`, for `and_where`; `InvalidInput` outside
/// [`Db::with_tenant`], so an unscoped query fails instead of reading every tenant.
pub fn filter(tx: &Tx, column: impl IntoColumnRef) -> Result<Expr> {
    let tenant = tx
        .tenant()
        .ok_or_else(|| Error::invalid_input("no tenant: run this inside Db::with_tenant").with_op("tenant_filter"))?;
    Ok(Expr::col(column).eq(tenant.to_owned()))
}

/// PostgreSQL: refuses (with `PermissionDenied`, naming every problem) unless each of
/// `tables` has row-level security enabled and forced with at least one policy, and the
/// connected role is neither superuser nor `BYPASSRLS`. Other databases: `Unsupported`.
pub async fn check_row_level_security(db: &Db, tables: &[&str]) -> Result<()> {
    if db.dialect() != Dialect::Postgres {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("{} has no row-level security; tenant scope is the filter helper only", db.dialect()),
        )
        .with_backend("db")
        .with_op("check_row_level_security"));
    }
    let mut problems = Vec::new();
    let role = db
        .fetch_one(&Sql::new(
            "SELECT current_user::text AS name, rolsuper AS sup, rolbypassrls AS bypass FROM pg_roles WHERE rolname = current_user",
        ))
        .await?;
    let name: String = role.get("name")?;
    if role.get::<bool>("sup")? {
        problems.push(format!("role {name} is a superuser and bypasses row-level security"));
    }
    if role.get::<bool>("bypass")? {
        problems.push(format!("role {name} has BYPASSRLS"));
    }
    for table in tables {
        let row = db
            .fetch_optional(
                &Sql::new(
                    "SELECT c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced, \
                     (SELECT COUNT(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies \
                     FROM pg_class c WHERE c.oid = to_regclass(?)",
                )
                .bind(table.to_string()),
            )
            .await?;
        let Some(row) = row else {
            problems.push(format!("table {table} does not exist"));
            continue;
        };
        if !row.get::<bool>("enabled")? {
            problems.push(format!("table {table}: row-level security is not enabled"));
        }
        if !row.get::<bool>("forced")? {
            problems.push(format!("table {table}: row-level security is not forced (its owner bypasses it)"));
        }
        if row.get::<i64>("policies")? == 0 {
            problems.push(format!("table {table}: no policy (every query sees nothing)"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::PermissionDenied,
            format!("tenant isolation is not enforced: {}", problems.join("; ")),
        )
        .with_backend("postgres")
        .with_op("check_row_level_security"))
    }
}
