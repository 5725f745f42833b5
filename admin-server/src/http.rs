//! The admin HTTP API: read the ring, add, drain or remove a channel server.
//!
//! - `GET /ring`: epoch, members with status, vnodes.
//! - `POST /ring/members` `{"id":"cs-4","mesh_addr":"127.0.0.1:7204"}`: add (it owns channels
//!   once it connects).
//! - `POST /ring/members/{id}/drain`: move its channels away, keep it running.
//! - `DELETE /ring/members/{id}`: forget it.
//! - `GET /ring/owner/{channel}`: which member owns a channel now.
//!
//! Bind it to loopback or a private admin network: it has no authentication of its own.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use shared::ids::{ChannelId, NodeId};

use crate::metrics as m;
use crate::state::RingAuthority;

pub fn router(authority: Arc<RingAuthority>) -> Router {
    Router::new()
        .route("/ring", get(ring))
        .route("/ring/members", post(add))
        .route("/ring/members/{id}/drain", post(drain))
        .route("/ring/members/{id}", delete(remove))
        .route("/ring/owner/{channel}", get(owner))
        .with_state(authority)
}

fn error(status: StatusCode, name: &str) -> Response {
    m::BAD_REQUESTS.with_label_values(&[name]).inc();
    (status, Json(json!({ "ok": false, "error": name }))).into_response()
}

async fn ring(State(a): State<Arc<RingAuthority>>) -> Response {
    let ring = a.current();
    Json(json!({
        "ok": true,
        "epoch": ring.epoch().0,
        "vnodes": ring.state().vnodes,
        "members": a.members(),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    id: String,
    mesh_addr: String,
}

async fn add(
    State(a): State<Arc<RingAuthority>>,
    body: Result<Json<AddMember>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return error(StatusCode::BAD_REQUEST, "invalid_json");
    };
    if body.id.is_empty() || body.id.len() > 128 {
        return error(StatusCode::BAD_REQUEST, "invalid_id");
    }
    if body.mesh_addr.parse::<std::net::SocketAddr>().is_err() {
        return error(StatusCode::BAD_REQUEST, "invalid_mesh_addr");
    }
    a.add(NodeId(body.id), body.mesh_addr);
    Json(json!({ "ok": true, "epoch": a.current().epoch().0 })).into_response()
}

/// A path segment; `None` for one that does not decode (bad percent-encoding, not UTF-8),
/// which the handler answers with its JSON error rather than axum's plain-text one.
fn segment(path: Result<Path<String>, PathRejection>) -> Option<String> {
    path.ok().map(|Path(s)| s)
}

async fn drain(
    State(a): State<Arc<RingAuthority>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(id) = segment(id) else {
        return error(StatusCode::BAD_REQUEST, "invalid_id");
    };
    if a.drain(&NodeId(id)) {
        Json(json!({ "ok": true, "epoch": a.current().epoch().0 })).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "member_not_found")
    }
}

async fn remove(
    State(a): State<Arc<RingAuthority>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(id) = segment(id) else {
        return error(StatusCode::BAD_REQUEST, "invalid_id");
    };
    if a.remove(&NodeId(id)) {
        Json(json!({ "ok": true, "epoch": a.current().epoch().0 })).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "member_not_found")
    }
}

async fn owner(
    State(a): State<Arc<RingAuthority>>,
    channel: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(channel) = segment(channel) else {
        return error(StatusCode::BAD_REQUEST, "invalid_channel");
    };
    let Some(channel) = ChannelId::parse(&channel) else {
        return error(StatusCode::BAD_REQUEST, "invalid_channel");
    };
    let ring = a.current();
    match ring.owner(&channel) {
        Some(m) => Json(json!({ "ok": true, "epoch": ring.epoch().0, "owner": m.node, "mesh_addr": m.mesh_addr })).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no_owner"),
    }
}
