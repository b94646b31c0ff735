//! `/ws`: who may connect (a user's token) and subscribe (its workspaces), and the
//! forwarder that moves todo events from the bus to the hub.

use super::*;

/// The `/ws` credential of a user: its access token (`?access_token=` from a browser,
/// or `Bearer`), with the workspaces it is a member of as scopes `workspace:{id}`.
#[derive(Debug)]
pub(super) struct WsUser {
    pub(super) jwt: Arc<Jwt>,
    pub(super) db: Db,
}

#[async_trait::async_trait]
impl Authenticator for WsUser {
    fn method(&self) -> &'static str {
        "jwt"
    }

    async fn authenticate(&self, request: &RequestParts<'_>) -> Result<AuthOutcome> {
        let AuthOutcome::Authenticated(user) = self.jwt.authenticate(request).await? else {
            return Ok(AuthOutcome::Absent);
        };
        let rows = self
            .db
            .fetch_all(&Sql::new("SELECT workspace_id FROM members WHERE user_id = ?").bind(user.subject.clone()))
            .await?;
        let scopes = rows.iter().map(|r| r.get::<String>("workspace_id").map(|w| format!("workspace:{w}")));
        let scopes = scopes.collect::<Result<Vec<_>>>()?;
        Ok(AuthOutcome::Authenticated(user.with_scopes(scopes)))
    }
}

/// Who may do what on `/ws`: the shared key anything; a user subscribes to
/// `workspaces.{ws}.…` of its own workspaces and to `jobs.{id}.events` of a job whose id
/// it was given, with no wildcard, and publishes on `jobs.enqueue` only.
pub(super) fn ws_authorizer(who: &Principal, channel: &str, access: Access) -> bool {
    if who.method == "shared_key" {
        return true;
    }
    if access == Access::Publish {
        // Checked by the hook against the user's workspaces.
        return channel == platform_events::hub::JOBS_ENQUEUE;
    }
    if channel.contains(['*', '>']) {
        return false;
    }
    // A job's channel: its id is the capability, handed only to who started it.
    if let Some(job) = channel.strip_prefix("jobs.").and_then(|rest| rest.strip_suffix(".events")) {
        return !job.is_empty() && !job.contains('.');
    }
    let ws = channel.strip_prefix("workspaces.").and_then(|rest| rest.split('.').next());
    ws.is_some_and(|ws| who.scopes.contains(&format!("workspace:{ws}")))
}

/// The hub channel of a workspace's todo events.
pub fn channel_of(ws: &str) -> String {
    format!("workspaces.{ws}.todos")
}

/// Moves todo events from the bus to the hub, one consumer group for every instance of
/// the service (each event is shown once, through the broadcast every node shares).
pub(super) async fn forward(bus: Arc<dyn EventBus>, hub: Arc<Hub>, stop: CancellationToken) {
    let group = loop {
        match bus.subscribe("todo.>", "todo-hub").await {
            Ok(g) => break g,
            Err(e) => {
                tracing::warn!(error = %e, "subscribing to todo events failed; again in 1 s");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    while !stop.is_cancelled() {
        let batch = tokio::select! {
            () = stop.cancelled() => return,
            b = group.receive(64, Duration::from_secs(1)) => b,
        };
        let deliveries = match batch {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "receiving todo events failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for d in deliveries {
            let event = d.envelope();
            let Some(ws) = event.tenant_id.clone() else {
                let _ = d.dead_letter("a todo event without its workspace").await;
                continue;
            };
            let frame = json!({
                "type": event.full_type(), "event_id": event.event_id, "occurred_at": event.occurred_at.unix_timestamp(),
                "data": event.payload,
            });
            match hub.publish(&channel_of(&ws), frame).await {
                Ok(()) => {
                    let _ = d.ack().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the hub refused a todo event; redelivered in 1 s");
                    let _ = d.nack(Some(Duration::from_secs(1))).await;
                }
            }
        }
    }
}
