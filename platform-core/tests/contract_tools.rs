//! The HTTP contract checked by tools a user would run on it: schemathesis
//! property-tests every operation of `/openapi` (all checks on), openapi-python-client
//! generates a typed client that calls the service, and headless Chromium renders
//! `/swagger/` (the DOM is checked; the screenshot is kept).
//!
//! `scripts/start-services` installs the tools; `scripts/services.env` names them.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use platform_core::Error;
use platform_core::http::Contract;
use platform_core::testkit::{tool, unique_ident};
use utoipa::OpenApi as _;

/// An item of the test service.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
struct Item {
    /// The item's id.
    id: u32,
    /// What it is.
    title: String,
}

/// What creating an item takes.
#[derive(serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
struct NewItem {
    /// What it is.
    title: String,
}

/// The items the service holds.
type Items = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Reads item `id`.
#[utoipa::path(get, path = "/v1/items/{id}", params(("id" = u32, Path, description = "The item's id")),
    responses((status = 200, description = "The item", body = Item),
        // Served as application/problem+json, which the document says (schemathesis checks).
        (status = 404, description = "No such item", body = platform_core::Problem)))]
async fn get_item(State(items): State<Items>, UrlPath(id): UrlPath<u32>) -> Result<Json<Item>, Error> {
    let items = items.lock().unwrap();
    let title = id.checked_sub(1).and_then(|i| items.get(i as usize)).cloned();
    title.map(|title| Json(Item { id, title })).ok_or_else(|| Error::not_found(format!("item {id}")))
}

/// Creates an item.
#[utoipa::path(post, path = "/v1/items", request_body = NewItem,
    responses((status = 201, description = "Created", body = Item)))]
async fn create_item(State(items): State<Items>, Json(new): Json<NewItem>) -> (axum::http::StatusCode, Json<Item>) {
    let mut items = items.lock().unwrap();
    items.push(new.title.clone());
    let id = u32::try_from(items.len()).unwrap();
    (axum::http::StatusCode::CREATED, Json(Item { id, title: new.title }))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(get_item, create_item), components(schemas(Item, NewItem)))]
struct ItemsApi;

/// Starts the test service; returns its base URL.
async fn start() -> String {
    let contract = Contract::new("items", "1.0.0").with_api_version("1").with_openapi(ItemsApi::openapi());
    let app = axum::Router::new()
        .route("/v1/items/{id}", get(get_item))
        .route("/v1/items", post(create_item))
        .with_state(Items::default());
    let app = contract.apply(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// Runs `program` with `args` off the runtime's threads, at most `limit`.
async fn run(program: &Path, args: Vec<String>, dir: Option<PathBuf>, limit: Duration) -> Output {
    let program = program.to_owned();
    let shown = format!("{} {}", program.display(), args.join(" "));
    let task = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(&program);
        cmd.args(&args);
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        cmd.output()
    });
    tokio::time::timeout(limit, task)
        .await
        .unwrap_or_else(|_| panic!("{shown}: still running after {limit:?}"))
        .unwrap()
        .unwrap_or_else(|e| panic!("{shown}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_ident(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure() {
    let Some(st) = tool("SCHEMATHESIS") else { return };
    let base = start().await;
    let args = ["run", &format!("{base}/openapi"), "--checks", "all", "--max-examples", "30", "--seed", "1"];
    let out = run(&st, args.map(String::from).to_vec(), Some(scratch("st")), Duration::from_secs(300)).await;
    let report = text(&out);
    assert!(out.status.success(), "schemathesis found failures:\n{report}");
    // Every operation was exercised: the contract's five and the service's two.
    assert!(report.contains("Tested: 7"), "not every operation was tested:\n{report}");
    assert!(report.contains("No issues found"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_calls_the_service() {
    let Some(generator) = tool("OPENAPI_CLIENT") else { return };
    let base = start().await;
    let dir = scratch("pyclient");
    let args = vec!["generate".into(), "--url".into(), format!("{base}/openapi"), "--meta".into(), "none".into()];
    let out = run(&generator, args, Some(dir.clone()), Duration::from_secs(120)).await;
    assert!(out.status.success(), "generate:\n{}", text(&out));
    // The generator's own interpreter has its dependencies (httpx, attrs).
    let python = generator.with_file_name("python");
    let package = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().join("client.py").is_file())
        .unwrap_or_else(|| panic!("no package generated in {}", dir.display()))
        .file_name()
        .into_string()
        .unwrap();
    let script = format!(
        r#"
import importlib, json
pkg = "{package}"
client_mod = importlib.import_module(pkg + ".client")
client = client_mod.Client(base_url="{base}")
from importlib import import_module
contract = import_module(pkg + ".api.contract.contract_doc")
up = import_module(pkg + ".api.contract.up_doc")
got = contract.sync_detailed(client=client)
assert got.status_code == 200, got
body = json.loads(got.content)
assert body["service"] == "items" and body["api_version"] == "1", body
report = up.sync_detailed(client=client)
assert report.status_code == 200 and json.loads(report.content)["status"] == "up", report
print("ok", body["service"], body["version"])
"#
    );
    std::fs::write(dir.join("call.py"), script).unwrap();
    let out = run(&python, vec!["call.py".into()], Some(dir), Duration::from_secs(60)).await;
    assert!(out.status.success() && text(&out).contains("ok items 1.0.0"), "client:\n{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_renders_every_operation() {
    let Some(chromium) = tool("CHROMIUM") else { return };
    let base = start().await;
    let profile = scratch("chromium");
    let flags = |extra: &[String]| {
        let mut args = platform_core::testkit::chromium_flags(&profile);
        args.extend(["--virtual-time-budget=15000".to_owned(), "--window-size=1280,2200".to_owned()]);
        args.extend_from_slice(extra);
        args.push(format!("{base}/swagger/"));
        args
    };
    let out = run(&chromium, flags(&["--dump-dom".into()]), None, Duration::from_secs(120)).await;
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dom.contains("swagger-ui"), "no Swagger UI in the page:\n{}", text(&out));
    assert!(dom.contains(">items<") && dom.contains("1.0.0"), "titled after the service");
    for op in ["/up", "/livez", "/readyz", "/v1/contract", "/v1/items/{id}", "/v1/items"] {
        assert!(dom.contains(&format!("data-path=\"{op}\"")), "{op} not rendered");
    }
    // The screenshot is kept beside the build, for a person to look at.
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| PathBuf::from("target"), PathBuf::from);
    let png = target.join("artifacts").join("swagger.png");
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();
    let out = run(&chromium, flags(&[format!("--screenshot={}", png.display())]), None, Duration::from_secs(120)).await;
    assert!(png.is_file(), "no screenshot:\n{}", text(&out));
    eprintln!("screenshot: {}", png.display());
}
