//! Exports: jobs on platform-queue, their progress on `/ws`, the file in
//! platform-store with a presigned link, a notification through platform-notify.

use super::*;

/// What an export job carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ExportJob {
    pub(super) workspace_id: String,
    pub(super) requested_by: String,
}

/// An export under way: its job id, the channel its progress goes to, and where in the
/// hub's history to start following it so that nothing is missed.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportStarted {
    /// The job's id.
    pub job_id: String,
    /// Subscribe here on `/ws` for `queued`, `running`, `progress`, `succeeded` (with
    /// `result.url`, a download link) or `failed`.
    pub channel: String,
    /// Give this as `since` when subscribing: the events from the job's start on.
    pub since: Since,
}

/// A position in the hub's history.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Since {
    /// The history's epoch.
    pub epoch: String,
    /// The offset.
    pub offset: u64,
}

/// Starts an export of the workspace's todos: a job on the queue, its progress on
/// `/ws`, a download link and a notification when it is done.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/exports", tag = "exports",
    params(("ws" = String, Path, format = Uuid, description = "The workspace"), IdempotencyKeyHeader),
    responses((status = 202, description = "Started", body = ExportStarted),
        (status = 404, description = "No such workspace", body = platform_core::Problem)),
    security(("bearer" = [])))]
pub(super) async fn start_export(
    State(st): State<AppState>,
    who: Principal,
    Path(ws): Path<String>,
    idem: Idempotent,
) -> Response {
    let (hub, queue) = (Arc::clone(&st.hub), Arc::clone(&st.jobs));
    idem.run(&st.db, move |tx| {
        Box::pin(async move {
            require_member(tx, &ws, &who.subject).await?;
            let job = ExportJob { workspace_id: ws, requested_by: who.subject };
            let started = enqueue_export(&hub, queue.as_ref(), job).await?;
            stored(StatusCode::ACCEPTED, &started)
        })
    })
    .await
}

/// Enqueues `job`: where to follow it from is taken before, so nothing is missed.
pub(super) async fn enqueue_export(
    hub: &Hub,
    queue: &dyn platform_queue::Queue,
    job: ExportJob,
) -> Result<ExportStarted> {
    let (epoch, offset) = hub.position();
    let job_id = hub.enqueue_job(queue, serde_json::to_value(&job)?).await?;
    Ok(ExportStarted { channel: format!("jobs.{job_id}.events"), job_id, since: Since { epoch, offset } })
}

/// `{"op":"publish","channel":"jobs.enqueue","data":{"workspace_id":…}}` on `/ws`: an
/// export of a workspace the connection's user is a member of (as its token said when
/// it connected); answered with what `POST …/exports` answers.
pub(super) fn ws_enqueue(
    hub: Arc<std::sync::OnceLock<Arc<Hub>>>,
    queue: Arc<dyn platform_queue::Queue>,
) -> platform_events::hub::PublishHook {
    Arc::new(move |who: &Principal, data: serde_json::Value| {
        let (hub, queue) = (Arc::clone(&hub), Arc::clone(&queue));
        let ws = data.get("workspace_id").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
        let member = who.method == "shared_key" || who.scopes.contains(&format!("workspace:{ws}"));
        let requested_by = who.subject.clone();
        Box::pin(async move {
            if ws.is_empty() || !member {
                return Err(Error::not_found(format!("workspace {ws:?} does not exist")));
            }
            let hub = hub.get().ok_or_else(|| Error::new(ErrorKind::Unavailable, "starting"))?;
            let job = ExportJob { workspace_id: ws, requested_by };
            let started = enqueue_export(hub, queue.as_ref(), job).await?;
            Ok(serde_json::to_value(started)?)
        })
    })
}

/// What the export worker needs.
#[derive(Clone)]
pub(super) struct Exporter {
    pub(super) db: Db,
    pub(super) hub: Arc<Hub>,
    pub(super) store: Arc<dyn platform_store::BlobStore>,
    pub(super) notify: Arc<platform_notify::Dispatcher>,
    /// The queue's `max_attempts`: the delivery that fails on it is the last.
    pub(super) max_attempts: u32,
}

impl Exporter {
    pub(super) async fn run(&self, delivery: Arc<platform_queue::Delivery>) -> Result<()> {
        use platform_events::hub::JobEvent;
        use platform_store::BlobStoreExt as _;
        let id = platform_events::hub::job_id(&delivery).unwrap_or_default().to_owned();
        let job: ExportJob = delivery.json()?;
        self.hub.job_event(&id, JobEvent::Running).await?;
        let outcome = async {
            let ws = job.workspace_id.clone();
            let todos = self
                .db
                .with_tenant(&ws.clone(), move |tx| {
                    Box::pin(async move {
                        let sql =
                            format!("SELECT {TODO_COLUMNS} FROM todos WHERE workspace_id = ? ORDER BY created_at, id");
                        let rows = tx.fetch_all(&Sql::new(sql).bind(ws)).await?;
                        rows.iter().map(todo_of).collect::<Result<Vec<_>>>()
                    })
                })
                .await?;
            self.hub.job_event(&id, JobEvent::Progress(50)).await?;
            let body = serde_json::to_vec(&json!({
                "workspace_id": job.workspace_id, "exported_at": now_ms(), "todos": todos,
            }))?;
            let key = format!("exports/{}/{id}.json", job.workspace_id);
            self.store.as_ref().put_bytes(&key, body).await?;
            let url = self.store.presign(platform_store::PresignMethod::Get, &key, Duration::from_secs(3600)).await?;
            Ok::<_, Error>((url, todos.len()))
        }
        .await;
        let (url, count) = match outcome {
            Ok(done) => done,
            Err(e) => {
                // The worker dead-letters bad input at once, and anything on its last try.
                let last = delivery.attempt() >= self.max_attempts || e.kind() == ErrorKind::InvalidInput;
                if last {
                    self.hub.job_event(&id, JobEvent::Failed(e.message().to_owned())).await?;
                }
                return Err(e);
            }
        };
        self.hub.job_event(&id, JobEvent::Succeeded(json!({"url": url.as_str(), "count": count}))).await?;
        let note = platform_notify::Notification::new(format!("{count} todos exported: {url}"))
            .title("Export ready")
            .tag("exports")
            .data("workspace_id", job.workspace_id.clone())
            .data("url", url.as_str())
            .with_id(id.clone());
        let report = self.notify.notify(&note, &platform_notify::Address::Configured).await;
        if !report.delivered() {
            tracing::warn!(target: "todo", job = %id, "the export notification was not delivered: {report:?}");
        }
        Ok(())
    }
}

/// Serves what the local store's presigned URLs point at (`/files/{key}?X-Platform-…`).
pub(super) async fn download(
    State(files): State<Files>,
    Path(key): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response> {
    use platform_store::BlobStoreExt as _;
    let Some(verifier) = &files.verifier else { return Err(Error::not_found("no such file")) };
    let encoded: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
    let key = verifier.verify("GET", &encoded.replace("%2F", "/"), query.as_deref().unwrap_or_default())?;
    let bytes = files.store.as_ref().get_bytes(&key).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

#[derive(Clone)]
pub(super) struct Files {
    pub(super) store: Arc<dyn platform_store::BlobStore>,
    pub(super) verifier: Option<Arc<platform_store::presign::Verifier>>,
}

/// The store URL with a presigning secret and base for the local stores (which have no
/// HTTP server of their own: the service serves `/files/`), and that secret. The secret
/// is `presign_secret=` when the URL has one, else derived from `JWT_SIGNING_KEY` when
/// that is set (so links outlive a restart and work on every instance sharing the key),
/// else made up for this start.
pub(super) fn with_presigning(
    store_url: &str,
    public_url: &str,
    signing_key: Option<&platform_core::Secret<String>>,
) -> Result<(String, Option<String>)> {
    use sha2::Digest as _;
    let mut url =
        url::Url::parse(store_url).map_err(|e| Error::invalid_input(format!("STORE_URL is not a URL: {e}")))?;
    if !matches!(url.scheme(), "file" | "memory") {
        return Ok((store_url.to_owned(), None));
    }
    if let Some((_, secret)) = url.query_pairs().find(|(k, _)| k == "presign_secret") {
        return Ok((store_url.to_owned(), Some(secret.into_owned())));
    }
    let secret = match signing_key {
        Some(key) => {
            let digest = sha2::Sha256::new()
                .chain_update(b"platform todo: presigned downloads\0")
                .chain_update(key.expose().trim().as_bytes())
                .finalize();
            digest.iter().map(|b| format!("{b:02x}")).collect()
        }
        None => format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()),
    };
    let base = format!("{}/files/", public_url.trim_end_matches('/'));
    url.query_pairs_mut().append_pair("presign_secret", &secret).append_pair("presign_base", &base);
    Ok((url.to_string(), Some(secret)))
}
