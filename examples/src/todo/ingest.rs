//! Signed import: another system posts todos to a workspace's endpoint, signed as
//! Standard Webhooks; each delivery is imported once.

use super::*;

/// A signed-import endpoint of a workspace: another system posts todos to `url`,
/// signed as Standard Webhooks with `secret`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngestEndpoint {
    /// Its id (the last segment of `url`).
    pub endpoint_id: String,
    /// Where to post: `/v1/ingest/{endpoint_id}`.
    pub url: String,
    /// The signing secret (`whsec_…`), shown once.
    pub secret: String,
}

/// What a signed import carries.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportBatch {
    /// The todos to create (at most 500).
    #[schema(max_items = 500)]
    pub todos: Vec<NewTodo>,
}

/// What a signed import did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Imported {
    /// Todos created by this delivery (0 for a repeated one).
    pub imported: usize,
    /// Whether this `webhook-id` was imported before (a sender's retry): nothing was
    /// done again.
    pub duplicate: bool,
}

/// Makes a signed-import endpoint for the workspace.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/ingest-endpoints", tag = "ingest",
    params(("ws" = String, Path, format = Uuid, description = "The workspace"), IdempotencyKeyHeader),
    responses((status = 201, description = "Made", body = IngestEndpoint),
        (status = 404, description = "No such workspace", body = platform_core::Problem)),
    security(("bearer" = [])))]
pub(super) async fn create_ingest_endpoint(
    State(st): State<AppState>,
    who: Principal,
    Path(ws): Path<String>,
    idem: Idempotent,
) -> Response {
    idem.run(&st.db, move |tx| {
        Box::pin(async move {
            require_member(tx, &ws, &who.subject).await?;
            let key: Vec<u8> =
                uuid::Uuid::new_v4().as_bytes().iter().chain(uuid::Uuid::new_v4().as_bytes()).copied().collect();
            let secret = {
                use base64::Engine as _;
                format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key))
            };
            let id = uuid::Uuid::now_v7().to_string();
            let insert =
                Sql::new("INSERT INTO ingest_endpoints (id, workspace_id, secret, created_at) VALUES (?, ?, ?, ?)")
                    .bind(id.clone())
                    .bind(ws)
                    .bind(secret.clone())
                    .bind(now_ms());
            tx.execute(&insert).await?;
            stored(StatusCode::CREATED, &IngestEndpoint { url: format!("/v1/ingest/{id}"), endpoint_id: id, secret })
        })
    })
    .await
}

/// Imports todos another system sends, signed (`webhook-id`, `webhook-timestamp`,
/// `webhook-signature`); each `webhook-id` is imported once, however often it comes.
#[utoipa::path(post, path = "/v1/ingest/{endpoint}", request_body = ImportBatch, tag = "ingest",
    params(("endpoint" = String, Path, format = Uuid, description = "The endpoint"),
        ("webhook-id" = String, Header, description = "The delivery's id"),
        ("webhook-timestamp" = String, Header, description = "Seconds since the epoch"),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256>`")),
    responses((status = 200, description = "Imported", body = Imported),
        (status = 401, description = "Not signed with the endpoint's secret", body = platform_core::Problem)))]
pub(super) async fn ingest(
    State(st): State<AppState>,
    who: Principal,
    Path(endpoint): Path<String>,
    headers: axum::http::HeaderMap,
    Json(batch): Json<ImportBatch>,
) -> Result<Json<Imported>> {
    if who.method != "hmac" || who.subject != format!("ingest:{endpoint}") {
        return Err(Error::new(ErrorKind::Unauthenticated, "sign the delivery with the endpoint's secret"));
    }
    if batch.todos.len() > 500 {
        return Err(Error::invalid_input("at most 500 todos a delivery").with_detail("todos", "over 500"));
    }
    for t in &batch.todos {
        check_len("title", &t.title, 500)?;
    }
    let delivery = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let row = st
        .db
        .fetch_optional(&Sql::new("SELECT workspace_id FROM ingest_endpoints WHERE id = ?").bind(endpoint.clone()))
        .await?;
    let ws: String = row.ok_or_else(|| Error::not_found("no such endpoint"))?.get("workspace_id")?;
    let events = st.events;
    let done = st
        .db
        .with_tenant(&ws.clone(), move |tx| {
            Box::pin(async move {
                if !platform_db::inbox::record(tx, &format!("ingest:{endpoint}"), &delivery).await? {
                    return Ok(Imported { imported: 0, duplicate: true });
                }
                let imported = batch.todos.len();
                for new in batch.todos {
                    let todo = Todo::new(&ws, new.title);
                    insert_todo(tx, &todo).await?;
                    stage(tx, events, TodoCreated { todo }, &ws).await?;
                }
                Ok(Imported { imported, duplicate: false })
            })
        })
        .await?;
    Ok(Json(done))
}

/// Endpoint secrets, from the database.
#[derive(Debug)]
pub(super) struct DbIngestSecrets(pub(super) Db);

#[async_trait::async_trait]
impl platform_auth::ingest::IngestSecrets for DbIngestSecrets {
    async fn secrets(&self, endpoint: &str) -> Result<Vec<platform_core::Secret<Vec<u8>>>> {
        let row =
            self.0.fetch_optional(&Sql::new("SELECT secret FROM ingest_endpoints WHERE id = ?").bind(endpoint)).await?;
        row.map(|r| platform_auth::ingest::decode_secret(&r.get::<String>("secret")?)).into_iter().collect()
    }
}

/// Repeated `webhook-id`s pass the signature check: the inbox (in the import's own
/// transaction) makes each one count once, so a sender's retry gets a 200 and a replayed
/// capture changes nothing.
#[derive(Debug)]
pub(super) struct InboxDeduplicates;

#[async_trait::async_trait]
impl platform_auth::ingest::ReplayGuard for InboxDeduplicates {
    async fn first_seen(&self, _scope: &str, _id: &str, _ttl: Duration) -> Result<bool> {
        Ok(true)
    }
}
