//! Workspaces and their todos: each query in the workspace's tenant scope, each
//! change behind an idempotency key, with its event staged in the same transaction.

use super::*;

/// Creates a workspace; its creator is its first member.
#[utoipa::path(post, path = "/v1/workspaces", request_body = NewWorkspace, tag = "workspaces",
    params(IdempotencyKeyHeader),
    responses((status = 201, description = "Created", body = Workspace, links(
        ("CreateTodo" = (operation_id = "create_todo", parameters(("ws" = "$response.body#/id")))),
        ("ListTodos" = (operation_id = "list_todos", parameters(("ws" = "$response.body#/id")))),
        ("StartExport" = (operation_id = "start_export", parameters(("ws" = "$response.body#/id")))),
        ("CreateIngestEndpoint" = (operation_id = "create_ingest_endpoint", parameters(("ws" = "$response.body#/id"))))))),
    security(("bearer" = [])))]
pub(super) async fn create_workspace(State(st): State<AppState>, who: Principal, idem: Idempotent) -> Response {
    let new: NewWorkspace = match idem.json().and_then(|n: NewWorkspace| check_len("name", &n.name, 200).map(|()| n)) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    idem.run(&st.db, move |tx| {
        Box::pin(async move {
            let ws = Workspace { id: uuid::Uuid::now_v7().to_string(), name: new.name };
            let insert = Sql::new("INSERT INTO workspaces (id, name, owner_id, created_at) VALUES (?, ?, ?, ?)")
                .bind(ws.id.clone())
                .bind(ws.name.clone())
                .bind(who.subject.clone())
                .bind(now_ms());
            tx.execute(&insert).await?;
            let member = Sql::new("INSERT INTO members (workspace_id, user_id) VALUES (?, ?)")
                .bind(ws.id.clone())
                .bind(who.subject.clone());
            tx.execute(&member).await?;
            stored(StatusCode::CREATED, &ws)
        })
    })
    .await
}

/// The workspaces one is a member of.
#[utoipa::path(get, path = "/v1/workspaces", tag = "workspaces",
    responses((status = 200, description = "Mine", body = [Workspace])), security(("bearer" = [])))]
pub(super) async fn list_workspaces(State(st): State<AppState>, who: Principal) -> Result<Json<Vec<Workspace>>> {
    let rows = st
        .db
        .fetch_all(
            &Sql::new(
                "SELECT w.id, w.name FROM workspaces w JOIN members m ON m.workspace_id = w.id \
                 WHERE m.user_id = ? ORDER BY w.created_at, w.id",
            )
            .bind(who.subject),
        )
        .await?;
    let list = rows.iter().map(|r| Ok(Workspace { id: r.get("id")?, name: r.get("name")? })).collect::<Result<_>>()?;
    Ok(Json(list))
}

pub(super) fn todo_of(r: &platform_db::Row) -> Result<Todo> {
    Ok(Todo {
        id: r.get("id")?,
        workspace_id: r.get("workspace_id")?,
        title: r.get("title")?,
        done: r.get("done")?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
    })
}

pub(super) const TODO_COLUMNS: &str = "id, workspace_id, title, done, created_at, updated_at";

pub(super) async fn find_todo(tx: &mut Tx, id: &str) -> Result<Todo> {
    let ws = tx.tenant().unwrap_or_default().to_owned();
    let sql = format!("SELECT {TODO_COLUMNS} FROM todos WHERE id = ? AND workspace_id = ?");
    let row = tx.fetch_optional(&Sql::new(sql).bind(id).bind(ws)).await?;
    row.as_ref().map(todo_of).transpose()?.ok_or_else(|| Error::not_found(format!("todo {id} does not exist")))
}

pub(super) async fn insert_todo(tx: &mut Tx, todo: &Todo) -> Result<()> {
    let insert = Sql::new(format!("INSERT INTO todos ({TODO_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"))
        .bind(todo.id.clone())
        .bind(todo.workspace_id.clone())
        .bind(todo.title.clone())
        .bind(todo.done)
        .bind(todo.created_at)
        .bind(todo.updated_at);
    tx.execute(&insert).await.map(|_| ())
}

/// Writes `event` about `todo` to the outbox, in the change's transaction (unless the
/// service runs without events).
pub(super) async fn stage<E: Event>(tx: &mut Tx, events: bool, event: E, ws: &str) -> Result<()> {
    if !events {
        return Ok(());
    }
    let envelope = Envelope::new(event).with_tenant(ws).into_json()?;
    relay::stage(tx, &envelope.event_type.clone(), &envelope).await
}

/// Creates a todo.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/todos", request_body = NewTodo, tag = "todos",
    params(("ws" = String, Path, format = Uuid, description = "The workspace"), IdempotencyKeyHeader),
    responses((status = 201, description = "Created", body = Todo, links(
        ("GetTodo" = (operation_id = "get_todo",
            parameters(("ws" = "$response.body#/workspace_id"), ("id" = "$response.body#/id")))),
        ("UpdateTodo" = (operation_id = "update_todo",
            parameters(("ws" = "$response.body#/workspace_id"), ("id" = "$response.body#/id")))),
        ("CompleteTodo" = (operation_id = "complete_todo",
            parameters(("ws" = "$response.body#/workspace_id"), ("id" = "$response.body#/id")))),
        ("DeleteTodo" = (operation_id = "delete_todo",
            parameters(("ws" = "$response.body#/workspace_id"), ("id" = "$response.body#/id")))))),
        (status = 404, description = "No such workspace", body = platform_core::Problem)),
    security(("bearer" = [])))]
pub(super) async fn create_todo(
    State(st): State<AppState>,
    who: Principal,
    Path(ws): Path<String>,
    idem: Idempotent,
) -> Response {
    let new: NewTodo = match idem.json().and_then(|n: NewTodo| check_len("title", &n.title, 500).map(|()| n)) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let events = st.events;
    idem.run(&st.db, move |tx| {
        Box::pin(async move {
            tx.enter_tenant(&ws).await?;
            require_member(tx, &ws, &who.subject).await?;
            let todo = Todo::new(&ws, new.title);
            insert_todo(tx, &todo).await?;
            stage(tx, events, TodoCreated { todo: todo.clone() }, &ws).await?;
            stored(StatusCode::CREATED, &todo)
        })
    })
    .await
}

/// The workspace's todos, oldest first.
#[utoipa::path(get, path = "/v1/workspaces/{ws}/todos", tag = "todos",
    params(("ws" = String, Path, format = Uuid, description = "The workspace")),
    responses((status = 200, description = "Its todos", body = [Todo]),
        (status = 404, description = "No such workspace", body = platform_core::Problem)),
    security(("bearer" = [])))]
pub(super) async fn list_todos(
    State(st): State<AppState>,
    who: Principal,
    Path(ws): Path<String>,
) -> Result<Json<Vec<Todo>>> {
    let todos = st
        .db
        .with_tenant(&ws.clone(), move |tx| {
            Box::pin(async move {
                require_member(tx, &ws, &who.subject).await?;
                let sql = format!("SELECT {TODO_COLUMNS} FROM todos WHERE workspace_id = ? ORDER BY created_at, id");
                let rows = tx.fetch_all(&Sql::new(sql).bind(ws)).await?;
                rows.iter().map(todo_of).collect::<Result<Vec<_>>>()
            })
        })
        .await?;
    Ok(Json(todos))
}

/// One todo.
#[utoipa::path(get, path = "/v1/workspaces/{ws}/todos/{id}", tag = "todos",
    params(("ws" = String, Path, format = Uuid, description = "The workspace"), ("id" = String, Path, format = Uuid, description = "The todo")),
    responses((status = 200, description = "The todo", body = Todo),
        (status = 404, description = "No such todo", body = platform_core::Problem)),
    security(("bearer" = [])))]
pub(super) async fn get_todo(
    State(st): State<AppState>,
    who: Principal,
    Path((ws, id)): Path<(String, String)>,
) -> Result<Json<Todo>> {
    let todo = st
        .db
        .with_tenant(&ws.clone(), move |tx| {
            Box::pin(async move {
                require_member(tx, &ws, &who.subject).await?;
                find_todo(tx, &id).await
            })
        })
        .await?;
    Ok(Json(todo))
}

/// What a change does.
pub(super) enum Change {
    Patch(TodoPatch),
    Complete,
    Delete,
}

pub(super) async fn change(
    st: AppState,
    who: Principal,
    ws: String,
    id: String,
    idem: Idempotent,
    what: Change,
) -> Response {
    let events = st.events;
    idem.run(&st.db, move |tx| {
        Box::pin(async move {
            tx.enter_tenant(&ws).await?;
            require_member(tx, &ws, &who.subject).await?;
            let mut todo = find_todo(tx, &id).await?;
            let was_done = todo.done;
            match what {
                Change::Delete => {
                    let delete =
                        Sql::new("DELETE FROM todos WHERE id = ? AND workspace_id = ?").bind(id).bind(ws.clone());
                    tx.execute(&delete).await?;
                    stage(tx, events, TodoDeleted { todo }, &ws).await?;
                    return Ok(StoredResponse::empty(StatusCode::NO_CONTENT));
                }
                Change::Complete => todo.done = true,
                Change::Patch(patch) => {
                    if let Some(title) = patch.title {
                        check_len("title", &title, 500)?;
                        todo.title = title;
                    }
                    if let Some(done) = patch.done {
                        todo.done = done;
                    }
                }
            }
            todo.updated_at = now_ms();
            let update =
                Sql::new("UPDATE todos SET title = ?, done = ?, updated_at = ? WHERE id = ? AND workspace_id = ?")
                    .bind(todo.title.clone())
                    .bind(todo.done)
                    .bind(todo.updated_at)
                    .bind(todo.id.clone())
                    .bind(ws.clone());
            tx.execute(&update).await?;
            // Done now and not before: completed; anything else: updated.
            if todo.done && !was_done {
                stage(tx, events, TodoCompleted { todo: todo.clone() }, &ws).await?;
            } else {
                stage(tx, events, TodoUpdated { todo: todo.clone() }, &ws).await?;
            }
            stored(StatusCode::OK, &todo)
        })
    })
    .await
}

/// Changes a todo's title or state.
#[utoipa::path(patch, path = "/v1/workspaces/{ws}/todos/{id}", request_body = TodoPatch, tag = "todos",
    params(("ws" = String, Path, format = Uuid, description = "The workspace"), ("id" = String, Path, format = Uuid, description = "The todo"), IdempotencyKeyHeader),
    responses((status = 200, description = "Changed", body = Todo),
        (status = 404, description = "No such todo", body = platform_core::Problem)),
    security(("bearer" = [])))]
pub(super) async fn update_todo(
    State(st): State<AppState>,
    who: Principal,
    Path((ws, id)): Path<(String, String)>,
    idem: Idempotent,
) -> Response {
    match idem.json::<TodoPatch>() {
        Ok(patch) => change(st, who, ws, id, idem, Change::Patch(patch)).await,
        Err(e) => e.into_response(),
    }
}

/// Marks a todo done.
#[utoipa::path(post, path = "/v1/workspaces/{ws}/todos/{id}/complete", tag = "todos",
    params(("ws" = String, Path, format = Uuid, description = "The workspace"), ("id" = String, Path, format = Uuid, description = "The todo"), IdempotencyKeyHeader),
    responses((status = 200, description = "Done", body = Todo),
        (status = 404, description = "No such todo", body = platform_core::Problem)),
    security(("bearer" = [])))]
pub(super) async fn complete_todo(
    State(st): State<AppState>,
    who: Principal,
    Path((ws, id)): Path<(String, String)>,
    idem: Idempotent,
) -> Response {
    change(st, who, ws, id, idem, Change::Complete).await
}

/// Deletes a todo.
#[utoipa::path(delete, path = "/v1/workspaces/{ws}/todos/{id}", tag = "todos",
    params(("ws" = String, Path, format = Uuid, description = "The workspace"), ("id" = String, Path, format = Uuid, description = "The todo"), IdempotencyKeyHeader),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such todo", body = platform_core::Problem)),
    security(("bearer" = [])))]
pub(super) async fn delete_todo(
    State(st): State<AppState>,
    who: Principal,
    Path((ws, id)): Path<(String, String)>,
    idem: Idempotent,
) -> Response {
    change(st, who, ws, id, idem, Change::Delete).await
}
