"""The todo service's flow through a client openapi-python-client generated from its
/openapi: typed models in, typed models out, nothing written by hand but this script.

Usage: python generated_client_flow.py PACKAGE BASE_URL EMAIL
Prints one JSON line per stage. After {"stage": "workspace", ...} it waits for a line on
stdin (the caller subscribes to the workspace's channel on /ws meanwhile), then creates
and completes a todo, lists the todos, starts an export and prints its job.
"""
import importlib
import json
import sys
import uuid

package, base, email = sys.argv[1:4]


def mod(name):
    return importlib.import_module(f"{package}.{name}")


client_mod = mod("client")
models = mod("models")
register = mod("api.auth.register")
login = mod("api.auth.login")
create_workspace = mod("api.workspaces.create_workspace")
list_workspaces = mod("api.workspaces.list_workspaces")
create_todo = mod("api.todos.create_todo")
complete_todo = mod("api.todos.complete_todo")
get_todo = mod("api.todos.get_todo")
list_todos = mod("api.todos.list_todos")
start_export = mod("api.exports.start_export")
up = mod("api.contract.up_doc")


def report(**fields):
    print(json.dumps(fields), flush=True)


def expect(response, status, kind):
    assert response.status_code == status, (response.status_code, response.content)
    assert isinstance(response.parsed, kind), (type(response.parsed), response.content)
    return response.parsed


anonymous = client_mod.Client(base_url=base, raise_on_unexpected_status=True)
credentials = models.Credentials(email=email, password="correct horse battery")
user = expect(register.sync_detailed(client=anonymous, body=credentials), 201, models.User)
assert user.email == email
token = expect(login.sync_detailed(client=anonymous, body=credentials), 200, models.Token)
assert token.token_type == "Bearer" and token.expires_in > 0

# A wrong password is a typed problem, with its correlation id.
wrong = login.sync_detailed(client=anonymous, body=models.Credentials(email=email, password="not the password"))
problem = expect(wrong, 401, models.Problem)
assert problem.correlation_id, problem

client = client_mod.AuthenticatedClient(base_url=base, token=token.access_token, raise_on_unexpected_status=True)
key = str(uuid.uuid4())
workspace = expect(
    create_workspace.sync_detailed(client=client, body=models.NewWorkspace(name="generated"), idempotency_key=key),
    201,
    models.Workspace,
)
# The same key again: the same workspace, not a second one.
again = create_workspace.sync_detailed(client=client, body=models.NewWorkspace(name="generated"), idempotency_key=key)
assert again.status_code == 201 and again.parsed.id == workspace.id, again.content
assert again.headers.get("idempotency-replayed") == "true"
assert [w.id for w in list_workspaces.sync(client=client)] == [workspace.id]
report(stage="workspace", token=token.access_token, workspace=workspace.id)

sys.stdin.readline()
ws = uuid.UUID(workspace.id)
todo = expect(
    create_todo.sync_detailed(ws, client=client, body=models.NewTodo(title="typed milk"), idempotency_key=str(uuid.uuid4())),
    201,
    models.Todo,
)
assert todo.workspace_id == workspace.id and not todo.done
done = expect(
    complete_todo.sync_detailed(ws, uuid.UUID(todo.id), client=client, idempotency_key=str(uuid.uuid4())),
    200,
    models.Todo,
)
assert done.done
fetched = expect(get_todo.sync_detailed(ws, uuid.UUID(todo.id), client=client), 200, models.Todo)
assert fetched.done and fetched.title == "typed milk"
listed = list_todos.sync(ws, client=client)
assert [t.id for t in listed] == [todo.id], listed
missing = get_todo.sync_detailed(ws, uuid.uuid4(), client=client)
assert expect(missing, 404, models.Problem).status == 404
export = expect(start_export.sync_detailed(ws, client=client, idempotency_key=str(uuid.uuid4())), 202, models.ExportStarted)
health = up.sync_detailed(client=anonymous)
assert health.status_code == 200, health.content
report(
    stage="done",
    todo=todo.id,
    job=export.job_id,
    channel=export.channel,
    since={"epoch": export.since.epoch, "offset": export.since.offset},
)
