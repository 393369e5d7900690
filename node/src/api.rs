//! The local HTTP API (axum). Shapes in `docs/api.md` and [`crate::view`].
//!
//! Every handler asks the daemon's actor through its [`Handle`]; the actor
//! answers from the replica it owns, so the API keeps answering while the node
//! is cut off from the fleet or its disk is full.
//!
//! Every request first passes [`guard`]: its `Host` must name this API (DNS
//! rebinding), and at most [`API_IN_FLIGHT_MAX`] requests are served at once.
//! The writes, `POST /v1/bundles` and `POST /v1/freshness`, also pass [`write_guard`]: no `Origin`
//! (a browser page) and `Content-Type: application/octet-stream` (which no
//! form and no "simple" cross-site request can send).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use dcloud_crdt::{Bundle, NodeId};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::daemon::{BUNDLE_SIZE_MAX_BYTES, Command, Handle, PublishError};
use crate::view;

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn gone(e: PublishError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// Requests served at once; more wait up to [`API_QUEUE_WAIT`], then get 503.
pub const API_IN_FLIGHT_MAX: usize = 64;

/// How long a request waits for one of the [`API_IN_FLIGHT_MAX`] slots.
pub const API_QUEUE_WAIT: Duration = Duration::from_secs(1);

/// Bound on serving one request, reading its body included (then 408).
pub const API_REQUEST_MAX: Duration = Duration::from_secs(60);

/// What [`guard`] needs: the address the API is bound to, and the slots.
#[derive(Clone)]
struct Guard {
    bound: SocketAddr,
    slots: Arc<Semaphore>,
}

/// The router, bound to a daemon handle; `bound` is the address the API
/// listens on (the one `Host` may name besides loopback names).
pub fn router(handle: Handle, bound: SocketAddr) -> Router {
    let guard_state = Guard {
        bound,
        slots: Arc::new(Semaphore::new(API_IN_FLIGHT_MAX)),
    };
    Router::new()
        .route("/v1/node", get(node))
        .route("/v1/fleet", get(fleet))
        .route("/v1/nodes/{id}", get(one_node))
        .route("/v1/policy", get(policy))
        .route("/v1/policy/snapshot", get(snapshot))
        .route("/v1/config", get(config))
        .route("/v1/rollout", get(rollout))
        .route(
            "/v1/bundles",
            post(publish).layer(middleware::from_fn(write_guard)),
        )
        .route(
            "/v1/freshness",
            post(publish_freshness).layer(middleware::from_fn(write_guard)),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint; see docs/api.md") })
        .layer(DefaultBodyLimit::max(BUNDLE_SIZE_MAX_BYTES))
        .with_state(handle)
        .layer(middleware::from_fn_with_state(guard_state, guard))
}

/// Every request: a `Host` naming this API, then a slot.
async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    if let Err((status, why)) = check_host(&req, g.bound) {
        return error(status, why);
    }
    let Ok(Ok(_slot)) = tokio::time::timeout(API_QUEUE_WAIT, g.slots.acquire()).await else {
        return (
            [(header::RETRY_AFTER, "1")],
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{API_IN_FLIGHT_MAX} requests are in flight already; retry shortly"),
            ),
        )
            .into_response();
    };
    match tokio::time::timeout(API_REQUEST_MAX, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {API_REQUEST_MAX:?}"),
        ),
    }
}

/// The `Host` header (exactly one) and any authority in the request target
/// must name this API; see [`host_allowed`].
fn check_host(req: &Request, bound: SocketAddr) -> Result<(), (StatusCode, String)> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "exactly one Host header is required".into(),
        ));
    };
    let Ok(host) = host.to_str() else {
        return Err((
            StatusCode::BAD_REQUEST,
            "the Host header is not text".into(),
        ));
    };
    let target = req.uri().authority().map(|a| a.as_str());
    for name in std::iter::once(host).chain(target) {
        if !host_allowed(name, bound) {
            tracing::debug!(host = %name, "refusing a request for a foreign Host");
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "Host {name:?} is not this API: use {bound} or a loopback name (localhost, 127.0.0.1, [::1])"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether a `Host` value (`name`, `name:port`, `[v6]`, `[v6]:port`) names
/// this API: `localhost` or a loopback address with any port, or the bound
/// address (its port or none). When bound to a wildcard address, any IP
/// literal with that port. A DNS name other than `localhost` never is: that
/// is what a rebinding page sends.
fn host_allowed(host: &str, bound: SocketAddr) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, "")) => (v6, None),
            Some((v6, rest)) => match rest.strip_prefix(':') {
                Some(port) => (v6, Some(port)),
                None => return false,
            },
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    let port = match port.map(str::parse::<u16>) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => return false,
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    // A bracketed name must be an IPv6 address, an unbracketed one IPv4.
    let ip = match (host.starts_with('['), name.parse::<IpAddr>()) {
        (true, Ok(ip @ IpAddr::V6(_))) | (false, Ok(ip @ IpAddr::V4(_))) => ip,
        _ => return false,
    };
    if ip.is_loopback() {
        return true;
    }
    let port_ok = port.is_none_or(|p| p == bound.port());
    port_ok && (ip == bound.ip() || bound.ip().is_unspecified())
}

/// The write: no `Origin` (sent by browsers on cross-site and same-site
/// fetches alike), and a content type no HTML form can produce. Both are
/// checked before the body is read.
async fn write_guard(req: Request, next: Next) -> Response {
    let headers = req.headers();
    if headers.contains_key(header::ORIGIN) {
        return error(
            StatusCode::FORBIDDEN,
            "a request with an Origin header (from a web page) cannot publish; use dcloud publish or dcloud-admin publish",
        );
    }
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    if !essence.is_some_and(|e| e.eq_ignore_ascii_case("application/octet-stream")) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a bundle must be posted with Content-Type: application/octet-stream",
        );
    }
    next.run(req).await
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
        Ok(Ok(v)) if v.malformed => (StatusCode::BAD_REQUEST, Json(v)).into_response(),
        Ok(Ok(v)) => (StatusCode::UNPROCESSABLE_ENTITY, Json(v)).into_response(),
        Ok(Err(e @ PublishError::OutsideRegion { .. })) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        Ok(Err(e)) | Err(e) => gone(e),
    }
}

async fn publish_freshness(State(h): State<Handle>, body: Bytes) -> Response {
    if body.len() > dcloud_crdt::freshness::FRESHNESS_SIZE_MAX_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a freshness statement is at most {} bytes",
                dcloud_crdt::freshness::FRESHNESS_SIZE_MAX_BYTES
            ),
        );
    }
    match h.ask(|tx| Command::Freshness(body.to_vec(), tx)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e) => gone(e),
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

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn host_names_this_api_or_loopback_only() {
        let bound = "10.0.0.5:7780".parse().unwrap();
        for ok in [
            "10.0.0.5:7780",
            "10.0.0.5",
            "127.0.0.5:1",
            "localhost",
            "localhost:7780",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.0.0.1:7780",
            "[::1]",
            "[::1]:7780",
        ] {
            assert!(host_allowed(ok, bound), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:7780",
            "localhost.attacker.example",
            "10.0.0.5:7781",
            "10.0.0.1:7780",
            "::1",
            "[127.0.0.1]",
            "[::1",
            "[::1]x",
            "localhost:port",
            "user@localhost",
            "",
        ] {
            assert!(!host_allowed(bad, bound), "{bad}");
        }
        let any = "0.0.0.0:7780".parse().unwrap();
        assert!(host_allowed("10.0.0.1:7780", any));
        assert!(host_allowed("10.0.0.1", any));
        assert!(!host_allowed("10.0.0.1:80", any));
        assert!(!host_allowed("node1.internal:7780", any));
        let v6 = "[::]:7780".parse().unwrap();
        assert!(host_allowed("[fd00::1]:7780", v6));
    }
}
