//! The local HTTP API (axum). Shapes in `docs/api.md` and [`crate::view`].
//!
//! Every handler asks the daemon's actor through its [`Handle`]; the actor
//! answers from the replica it owns, so the API keeps answering while the node
//! is cut off from the fleet or its disk is full.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use dcloud_crdt::{Bundle, NodeId};
use serde::Deserialize;

use crate::daemon::{BUNDLE_SIZE_MAX_BYTES, Command, Handle, PublishError};
use crate::view;

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn gone(e: PublishError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// The router, bound to a daemon handle.
pub fn router(handle: Handle) -> Router {
    Router::new()
        .route("/v1/node", get(node))
        .route("/v1/fleet", get(fleet))
        .route("/v1/nodes/{id}", get(one_node))
        .route("/v1/policy", get(policy))
        .route("/v1/policy/snapshot", get(snapshot))
        .route("/v1/config", get(config))
        .route("/v1/rollout", get(rollout))
        .route("/v1/bundles", post(publish))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint; see docs/api.md") })
        .layer(DefaultBodyLimit::max(BUNDLE_SIZE_MAX_BYTES))
        .with_state(handle)
}

async fn node(State(h): State<Handle>) -> Response {
    match h.ask(Command::Node).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => gone(e),
    }
}

async fn fleet(State(h): State<Handle>) -> Response {
    match h.ask(Command::Fleet).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => gone(e),
    }
}

async fn one_node(State(h): State<Handle>, Path(id): Path<String>) -> Response {
    let Ok(n) = id.parse::<NodeId>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a node id (64 hex digits)"),
        );
    };
    match h.ask(|tx| Command::NodeRow(n, tx)).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("node {} is neither enrolled nor known here", n.short()),
        ),
        Err(e) => gone(e),
    }
}

async fn policy(State(h): State<Handle>) -> Response {
    match h.ask(Command::Policy).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => gone(e),
    }
}

async fn snapshot(State(h): State<Handle>) -> Response {
    match h.ask(Command::Snapshot).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => gone(e),
    }
}

async fn config(State(h): State<Handle>) -> Response {
    match h.ask(Command::Config).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => gone(e),
    }
}

#[derive(Deserialize)]
struct RolloutQuery {
    heads: Option<String>,
}

async fn rollout(State(h): State<Handle>, Query(q): Query<RolloutQuery>) -> Response {
    let heads = match q.heads.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => {
            let list: Vec<String> = s.split(',').map(|x| x.trim().to_string()).collect();
            match view::parse_heads(&list) {
                Ok(h) => Some(h),
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            }
        }
    };
    match h.ask(|tx| Command::Rollout(heads, tx)).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => gone(e),
    }
}

async fn publish(State(h): State<Handle>, body: Bytes) -> Response {
    let bundle = match Bundle::decode(&body, BUNDLE_SIZE_MAX_BYTES) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bundle does not decode: {e}"),
            );
        }
    };
    match h.ask(|tx| Command::Publish(bundle, tx)).await {
        Ok(Ok(v)) if v.accepted => Json(v).into_response(),
        Ok(Ok(v)) => (StatusCode::UNPROCESSABLE_ENTITY, Json(v)).into_response(),
        Ok(Err(e)) | Err(e) => gone(e),
    }
}

async fn metrics(State(h): State<Handle>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
        .into_response()
}
