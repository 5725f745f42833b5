//! Flannel's HTTP API: `GET /boot`, `/users.lookup`, `/users.info`, `/channels.lookup`,
//! `/channels.info`, plus `/metrics` and `/health`.
//!
//! The token comes from `Authorization: Bearer …` or a `token` query parameter. Answers are
//! Slack-style JSON: `{"ok":true,...}` or `{"ok":false,"error":"<name>"}`, with status 200 for
//! a refused query (as Slack), 404 for an unknown path, 405 (`method_not_allowed`) for a
//! query path with another HTTP method than GET, and 503 when a workspace cannot be loaded.
//! Every refusal is counted (`switchboard_flannel_errors_total`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use shared::telemetry::Health;

use crate::metrics as m;
use crate::service::{Flannel, QueryError, QueryResult};

/// The query routes plus `/metrics` and `/health`.
pub fn router(flannel: Arc<Flannel>, health: Health) -> Router {
    Router::new()
        .route("/boot", get(boot))
        .route("/users.lookup", get(users_lookup))
        .route("/users.info", get(users_info))
        .route("/channels.lookup", get(channels_lookup))
        .route("/channels.info", get(channels_info))
        .fallback(|| async { refused(QueryError::UnknownMethod) })
        .with_state(flannel)
        .merge(shared::telemetry::ops_router("flannel", health))
        // Last, so it covers every route above: every query is a GET.
        .method_not_allowed_fallback(|| async { refused(QueryError::MethodNotAllowed) })
}

/// The answer to a request no query serves (an unknown path, or a known one with another
/// HTTP method than GET), counted under the method label `unknown`.
fn refused(e: QueryError) -> Response {
    m::REQUESTS.with_label_values(&["unknown"]).inc();
    tracing::debug!(error = %e, "request to no query refused");
    error_response(&e)
}

/// A request's parameters and token.
struct Request {
    params: HashMap<String, String>,
    /// `Err` when an `Authorization` header is there but is not a readable bearer token.
    token: Result<Option<String>, QueryError>,
}

impl Request {
    fn new(headers: &HeaderMap, query: Option<String>) -> Request {
        let params: HashMap<String, String> = query
            .as_deref()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let token = match headers.get(header::AUTHORIZATION) {
            Some(value) => value
                .to_str()
                .ok()
                .and_then(shared::auth::bearer)
                .map(|t| Some(t.to_string()))
                .ok_or(QueryError::InvalidAuth),
            None => Ok(params.get("token").cloned()),
        };
        Request { params, token }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }
}

async fn answer(
    method: &'static str,
    result: impl std::future::Future<Output = QueryResult>,
) -> Response {
    let start = Instant::now();
    m::REQUESTS.with_label_values(&[method]).inc();
    let response = match result.await {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => {
            match &e {
                QueryError::ServiceUnavailable(_) => {
                    tracing::warn!(method, error = %e, "flannel query failed")
                }
                _ => tracing::debug!(method, error = %e, "flannel query refused"),
            }
            error_response(&e)
        }
    };
    m::REQUEST_DURATION
        .with_label_values(&[method])
        .observe(start.elapsed().as_secs_f64());
    response
}

fn error_response(e: &QueryError) -> Response {
    m::ERRORS.with_label_values(&[e.code()]).inc();
    let status = match e {
        QueryError::UnknownMethod => StatusCode::NOT_FOUND,
        QueryError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        QueryError::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (
        status,
        axum::Json(serde_json::json!({ "ok": false, "error": e.code() })),
    )
        .into_response()
}

async fn boot(
    State(f): State<Arc<Flannel>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let req = Request::new(&headers, q);
    answer("boot", async {
        let token = req.token.clone()?;
        f.boot(token.as_deref()).await
    })
    .await
}

async fn users_lookup(
    State(f): State<Arc<Flannel>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let req = Request::new(&headers, q);
    answer("users.lookup", async {
        let token = req.token.clone()?;
        f.users_lookup(token.as_deref(), req.get("prefix"), req.get("limit"))
            .await
    })
    .await
}

async fn users_info(
    State(f): State<Arc<Flannel>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let req = Request::new(&headers, q);
    answer("users.info", async {
        let token = req.token.clone()?;
        f.users_info(token.as_deref(), req.get("user")).await
    })
    .await
}

async fn channels_lookup(
    State(f): State<Arc<Flannel>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let req = Request::new(&headers, q);
    answer("channels.lookup", async {
        let token = req.token.clone()?;
        f.channels_lookup(token.as_deref(), req.get("prefix"), req.get("limit"))
            .await
    })
    .await
}

async fn channels_info(
    State(f): State<Arc<Flannel>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let req = Request::new(&headers, q);
    answer("channels.info", async {
        let token = req.token.clone()?;
        f.channels_info(token.as_deref(), req.get("channel")).await
    })
    .await
}
