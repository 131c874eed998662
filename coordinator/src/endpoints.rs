//! The table of API operations: one place that says, for every route, which scope it needs and
//! what it answers. Authentication reads the scopes from here and the OpenAPI document is
//! generated from here, so neither can drift from the other.

/// One operation of the API (paths relative to `/api/v1/orchestrator`).
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    /// `None`: open (health, readiness, the OpenAPI document).
    pub scope: Option<&'static str>,
    pub summary: &'static str,
    pub success: u16,
    /// Error statuses besides 401/403 (added for every scoped operation).
    pub errors: &'static [u16],
    /// The request body schema, if any (a name under `components.schemas`).
    pub body: Option<&'static str>,
    /// The success body's schema (a name under `components.schemas`); `None`: a free-form object
    /// (the probes, the summary, this document).
    pub answer: Option<&'static str>,
}

/// One row of [`ENDPOINTS`], positionally, so the table reads as a table.
#[allow(clippy::too_many_arguments)]
const fn op(
    method: &'static str,
    path: &'static str,
    scope: Option<&'static str>,
    summary: &'static str,
    success: u16,
    errors: &'static [u16],
    body: Option<&'static str>,
    answer: Option<&'static str>,
) -> Endpoint {
    Endpoint { method, path, scope, summary, success, errors, body, answer }
}

const DAGS_READ: Option<&str> = Some("orchestrator:dags:read");
const DAGS_WRITE: Option<&str> = Some("orchestrator:dags:write");
const DAGS_DELETE: Option<&str> = Some("orchestrator:dags:delete");
const EXEC_READ: Option<&str> = Some("orchestrator:executions:read");
const EXEC_WRITE: Option<&str> = Some("orchestrator:executions:write");
const EXEC_CANCEL: Option<&str> = Some("orchestrator:executions:cancel");
const CHECKPOINTS_READ: Option<&str> = Some("orchestrator:checkpoints:read");
const CHECKPOINTS_DELETE: Option<&str> = Some("orchestrator:checkpoints:delete");
const PROVENANCE_READ: Option<&str> = Some("orchestrator:provenance:read");

/// Most items in one page of a list (`limit`).
pub const MAX_PAGE_LIMIT: i64 = 500;
/// Items in a page when `limit` is absent.
pub const DEFAULT_PAGE_LIMIT: i64 = 50;

/// Granted every scope.
pub const ADMIN_SCOPE: &str = "orchestrator:admin";

pub const ENDPOINTS: &[Endpoint] = &[
    op("post", "/dags", DAGS_WRITE, "Create a DAG", 201, &[400, 409, 413, 415, 422], Some("Dag"), Some("DagSaved")),
    op("get", "/dags", DAGS_READ, "List DAGs", 200, &[400], None, Some("DagPage")),
    op("get", "/dags/{dag_id}", DAGS_READ, "Get a DAG", 200, &[404], None, Some("DagView")),
    op(
        "put",
        "/dags/{dag_id}",
        DAGS_WRITE,
        "Update a DAG (per-node merge)",
        200,
        &[400, 404, 412, 413, 415, 422],
        Some("DagUpdate"),
        Some("DagSaved"),
    ),
    op("delete", "/dags/{dag_id}", DAGS_DELETE, "Delete a DAG", 200, &[404], None, Some("DagDeleted")),
    op("post", "/dags/{dag_id}/validate", DAGS_READ, "Validate a stored DAG", 200, &[404], None, Some("Validation")),
    op(
        "post",
        "/dags/{dag_id}/execute",
        EXEC_WRITE,
        "Start an execution",
        202,
        &[400, 404, 409, 413, 415, 503],
        Some("ExecuteRequest"),
        Some("ExecutionAccepted"),
    ),
    op("get", "/executions", EXEC_READ, "List executions", 200, &[400], None, Some("ExecutionPage")),
    op("get", "/executions/{execution_id}", EXEC_READ, "Get an execution", 200, &[404], None, Some("ExecutionView")),
    op("get", "/executions/{execution_id}/trace", EXEC_READ, "Per-node trace", 200, &[404], None, Some("Trace")),
    op(
        "post",
        "/executions/{execution_id}/cancel",
        EXEC_CANCEL,
        "Cancel an execution",
        202,
        &[404, 409],
        None,
        Some("CancelRequested"),
    ),
    op(
        "post",
        "/executions/{execution_id}/resume",
        EXEC_WRITE,
        "Resume from checkpoints",
        202,
        &[404, 409],
        None,
        Some("Resumed"),
    ),
    op(
        "get",
        "/executions/{execution_id}/provenance",
        PROVENANCE_READ,
        "Provenance chain and its verification",
        200,
        &[404],
        None,
        Some("ProvenanceReport"),
    ),
    op(
        "get",
        "/checkpoints/{execution_id}",
        CHECKPOINTS_READ,
        "List checkpoints",
        200,
        &[404],
        None,
        Some("CheckpointList"),
    ),
    op(
        "delete",
        "/checkpoints/{execution_id}",
        CHECKPOINTS_DELETE,
        "Delete checkpoints",
        200,
        &[404, 409],
        None,
        Some("CheckpointsDeleted"),
    ),
    op("get", "/metrics", EXEC_READ, "JSON summary of executions", 200, &[], None, None),
    op(
        "post",
        "/dags/import",
        DAGS_WRITE,
        "Create a DAG from YAML text",
        201,
        &[400, 409, 413, 415, 422],
        Some("ImportRequest"),
        Some("DagSaved"),
    ),
    op("get", "/dags/{dag_id}/export", DAGS_READ, "Export a DAG as YAML", 200, &[404], None, Some("DagExport")),
    op("get", "/dags/{dag_id}/visualize", DAGS_READ, "Mermaid diagram of a DAG", 200, &[404], None, Some("DagGraph")),
    op("get", "/health", None, "Health of the service and its dependencies", 200, &[], None, None),
    op("get", "/ready", None, "Readiness (PostgreSQL and RabbitMQ reachable)", 200, &[503], None, None),
    op("get", "/openapi.json", None, "This OpenAPI document", 200, &[], None, None),
];

/// The scope an operation needs (`None`: open). `HEAD` is a `GET`; anything the table does not
/// know needs the admin scope, so a route added without its entry fails closed.
pub fn scope_for(method: &str, path: &str) -> Option<&'static str> {
    let path = path.strip_prefix("/api/v1/orchestrator").unwrap_or(path);
    let method = if method.eq_ignore_ascii_case("head") { "get" } else { method };
    ENDPOINTS
        .iter()
        .find(|e| e.method.eq_ignore_ascii_case(method) && e.path == path)
        .map_or(Some(ADMIN_SCOPE), |e| e.scope)
}
