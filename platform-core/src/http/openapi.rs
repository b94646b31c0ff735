//! `GET /openapi` and Swagger UI at `/swagger/`.

use axum::Router;
use utoipa::OpenApi as _;
use utoipa::openapi::{self, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::ServiceInfo;
use super::health::HEALTH_JSON;
use crate::{CheckResult, FieldError, HealthReport, PROBLEM_CONTENT_TYPE, Problem, Status};

/// The contract's own operations and schemas.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(up_doc, livez_doc, healthz_doc, readyz_doc, contract_doc),
    components(schemas(Problem, FieldError, HealthReport, CheckResult, Status, ServiceInfo)),
    tags((name = "contract", description = "What every service built on the platform answers"))
)]
struct ContractApi;

/// The full health report: every dependency with status, latency and version.
#[utoipa::path(get, path = "/up", tag = "contract", responses(
    (status = 200, description = "Up, or degraded (only non-critical dependencies down)",
        content((HealthReport = "application/json"), (serde_json::Value = HEALTH_JSON))),
    (status = 503, description = "A critical dependency is down",
        content((HealthReport = "application/json"), (serde_json::Value = HEALTH_JSON))),
))]
#[expect(dead_code, reason = "documents the route, served by health::up")]
fn up_doc() {}

/// The process answers; no dependency is asked.
#[utoipa::path(get, path = "/livez", tag = "contract", responses(
    (status = 200, description = "Alive", body = HealthReport),
))]
#[expect(dead_code, reason = "documents the route")]
fn livez_doc() {}

/// The same as `/livez`, for older probes.
#[utoipa::path(get, path = "/healthz", tag = "contract", responses(
    (status = 200, description = "Alive", body = HealthReport),
))]
#[expect(dead_code, reason = "documents the route")]
fn healthz_doc() {}

/// Critical dependencies only; 503 while the service drains at shutdown.
#[utoipa::path(get, path = "/readyz", tag = "contract", responses(
    (status = 200, description = "Ready", body = HealthReport),
    (status = 503, description = "A critical dependency is down, or the service is draining", body = HealthReport),
))]
#[expect(dead_code, reason = "documents the route")]
fn readyz_doc() {}

/// The service's name, version, deployment mode and contract versions.
#[utoipa::path(get, path = "/v1/contract", tag = "contract", responses(
    (status = 200, description = "The service contract", body = ServiceInfo),
))]
#[expect(dead_code, reason = "documents the route")]
fn contract_doc() {}

/// The document `/openapi` serves: the service's own (or a bare one), titled and
/// versioned after the service, with the contract's operations and schemas merged in, and every operation's error
/// responses documented as problem+json (the `default` response), which the layers
/// make true of every route.
pub(super) fn document(info: &ServiceInfo, own: Option<OpenApi>) -> OpenApi {
    let mut doc = own.unwrap_or_else(|| {
        let mut bare = OpenApi::new(openapi::Info::new(&info.service, &info.version), openapi::Paths::new());
        bare.info.description = Some(format!("The HTTP API of {}", info.service));
        bare
    });
    // The document describes this service: its name and version, whatever crate the
    // service's own document was derived in.
    doc.info.title.clone_from(&info.service);
    doc.info.version.clone_from(&info.version);
    doc.merge(ContractApi::openapi());
    let problem = openapi::ResponseBuilder::new()
        .description("An error, as RFC 9457 problem details")
        .content(
            PROBLEM_CONTENT_TYPE,
            openapi::ContentBuilder::new().schema(Some(openapi::Ref::from_schema_name("Problem"))).build(),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            for response in op.responses.responses.values_mut() {
                if let openapi::RefOr::T(response) = response {
                    problems_as_problem_json(response);
                }
            }
            op.responses.responses.entry("default".into()).or_insert_with(|| problem.clone().into());
        }
    }
    doc
}

/// A response documented as `body = Problem` is served as `application/problem+json`
/// (the problem layer makes it so), whatever media type the route's annotation
/// defaulted to: the document says what the wire carries.
fn problems_as_problem_json(response: &mut openapi::Response) {
    let problem_ref = openapi::Ref::from_schema_name("Problem").ref_location;
    let is_problem = |content: &openapi::RefOr<openapi::Content>| {
        matches!(content, openapi::RefOr::T(c)
            if matches!(&c.schema, Some(openapi::RefOr::Ref(r)) if r.ref_location == problem_ref))
    };
    if response.content.len() == 1
        && response.content.get("application/json").is_some_and(is_problem)
        && let Some(content) = response.content.shift_remove("application/json")
    {
        response.content.insert(PROBLEM_CONTENT_TYPE.to_owned(), content);
    }
}

fn operations(item: &mut openapi::PathItem) -> impl Iterator<Item = &mut openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// `/openapi` (JSON) and Swagger UI at `/swagger/`, its files compiled in.
pub(super) fn routes(doc: OpenApi) -> Router {
    Router::new().merge(SwaggerUi::new("/swagger").url("/openapi", doc))
}
