//! The admin tool's side of a node's local HTTP API (see `docs/api.md`):
//! fetch the base snapshot, post a bundle, read rollout progress. Only plain
//! HTTP to a node's own API address, which listens on loopback by default.

use std::time::Duration;

use dcloud_crdt::{Bundle, ChangeHash};
use serde::Deserialize;

use crate::admin::files::BUNDLE_FILE_SIZE_MAX_BYTES;

/// Bound on one request, connection included.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Errors talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://HOST:PORT`.
    #[error(
        "{0:?} is not a node API address; expected http://HOST:PORT (for example http://127.0.0.1:7780)"
    )]
    BadUrl(String),
    /// Nothing answered.
    #[error("no dcloud daemon answering at {url}: {reason} (is it running? check `dcloud status`)")]
    Unreachable {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The node answered with an error.
    #[error("{url} answered {status}: {message}")]
    Status {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The node's `error` text, or the body.
        message: String,
    },
    /// The answer is not what the API documents.
    #[error("{url} answered something unexpected: {reason}")]
    Decode {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// The verdict on one change of a posted bundle.
#[derive(Clone, Debug, Deserialize)]
pub struct ChangeReport {
    /// "policy" or a status document.
    pub doc: String,
    /// Its hash.
    pub hash: Option<String>,
    /// applied, duplicate, pending, stale, rejected.
    pub outcome: String,
    /// Why, when rejected.
    pub reason: Option<String>,
}

/// The answer to `POST /v1/bundles`.
#[derive(Clone, Debug, Deserialize)]
pub struct PostReply {
    /// Nothing was rejected.
    pub accepted: bool,
    /// Trust roots refused.
    #[serde(default)]
    pub root_errors: Vec<String>,
    /// One report per change.
    #[serde(default)]
    pub reports: Vec<ChangeReport>,
    /// The first refusal, when not accepted.
    #[serde(default)]
    pub error: Option<String>,
}

/// A site in a rollout list.
#[derive(Clone, Debug, Deserialize)]
pub struct RolloutSite {
    /// Node id.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// The apply error (failed sites).
    #[serde(default)]
    pub error: Option<String>,
    /// Membership holds it down at the node asked.
    #[serde(default)]
    pub down: bool,
}

/// The answer to `GET /v1/rollout`.
#[derive(Clone, Debug, Deserialize)]
pub struct Rollout {
    /// The policy heads asked about.
    #[serde(default)]
    pub heads: Vec<String>,
    /// The node holds every head.
    #[serde(default)]
    pub known: bool,
    /// Active members.
    pub enrolled: usize,
    /// Of those, applied without error.
    pub applied: usize,
    /// applied == enrolled.
    pub complete: bool,
    /// Not yet applied.
    #[serde(default)]
    pub pending: Vec<RolloutSite>,
    /// Applied with an error.
    #[serde(default)]
    pub failed: Vec<RolloutSite>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// A client of one node's local API.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the node at `url` (`http://HOST:PORT`; a bare `HOST:PORT` is accepted).
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let url = url.trim().trim_end_matches('/');
        let base = if url.starts_with("http://") {
            url.to_string()
        } else if url.contains("://") || url.is_empty() {
            return Err(ClientError::BadUrl(url.to_string()));
        } else {
            format!("http://{url}")
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .no_proxy()
            .build()
            .map_err(|e| ClientError::BadUrl(format!("{base}: {e}")))?;
        reqwest::Url::parse(&base).map_err(|_| ClientError::BadUrl(base.clone()))?;
        Ok(Client { base, http })
    }

    /// The node's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        req.send().await.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            reason: error_chain(&e),
        })
    }

    async fn error_of(resp: reqwest::Response, url: &str) -> ClientError {
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        ClientError::Status {
            url: url.to_string(),
            status,
            message,
        }
    }

    /// `GET /v1/policy/snapshot`: the node's trust chain and policy changes.
    pub async fn snapshot(&self) -> Result<Bundle, ClientError> {
        let url = format!("{}/v1/policy/snapshot", self.base);
        let resp = self.send(self.http.get(&url), &url).await?;
        if !resp.status().is_success() {
            return Err(Self::error_of(resp, &url).await);
        }
        let bytes = resp.bytes().await.map_err(|e| ClientError::Decode {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        Bundle::decode(&bytes, BUNDLE_FILE_SIZE_MAX_BYTES).map_err(|e| ClientError::Decode {
            url,
            reason: format!("the snapshot is not a bundle: {e}"),
        })
    }

    /// `POST /v1/bundles`. A 422 (something refused) is returned as a reply
    /// with `accepted: false`; other failures are errors.
    pub async fn post_bundle(&self, bundle: &Bundle) -> Result<PostReply, ClientError> {
        let url = format!("{}/v1/bundles", self.base);
        let req = self
            .http
            .post(&url)
            .header("content-type", "application/octet-stream")
            .body(bundle.encode());
        let resp = self.send(req, &url).await?;
        let status = resp.status().as_u16();
        if status == 200 || status == 422 {
            let text = resp.text().await.unwrap_or_default();
            return serde_json::from_str(&text).map_err(|e| ClientError::Decode {
                url,
                reason: format!("{e}: {text}"),
            });
        }
        Err(Self::error_of(resp, &url).await)
    }

    /// `GET /v1/rollout?heads=...`.
    pub async fn rollout(&self, heads: &[ChangeHash]) -> Result<Rollout, ClientError> {
        let list: Vec<String> = heads.iter().map(|h| h.to_string()).collect();
        let url = format!("{}/v1/rollout?heads={}", self.base, list.join(","));
        let resp = self.send(self.http.get(&url), &url).await?;
        if !resp.status().is_success() {
            return Err(Self::error_of(resp, &url).await);
        }
        let text = resp.text().await.unwrap_or_default();
        serde_json::from_str(&text).map_err(|e| ClientError::Decode {
            url,
            reason: format!("{e}: {text}"),
        })
    }
}

/// An error and its sources, on one line ("connection refused" is usually a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}
