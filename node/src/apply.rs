//! Applying the policy to the site: render this node's effective config to a
//! file, atomically, and run a command.
//!
//! The applier is its own task so that a slow or hanging command never blocks
//! replication. It holds at most one request: a newer effective config replaces
//! one not yet started (a `watch` channel), so a burst of policy changes runs
//! the command once for the latest. Each result goes back to the daemon, which
//! writes it into this node's status (`applied`: heads, error, exit code).
//!
//! Sealed secrets addressed to this node ([`dcloud_crdt::secret`]) are opened
//! here, with the node key, and written to their own file (mode 0600, never
//! the config file); the command gets its path as `DCLOUD_SECRETS_FILE`. A
//! secret that does not open fails the apply (the status names the entry,
//! never a value). Values are held only in this task, and only as long as
//! rendering takes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dcloud_crdt::secret::{SealedSecret, secrets_for};
use dcloud_crdt::{NodeId, Replica, SecretKey};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use crate::config::ApplyConfig;

/// Most bytes of the command's standard error kept for the log and the status.
pub const STDERR_KEPT_MAX_BYTES: usize = 2048;

/// What a node applies: its effective config and the secrets sealed to it
/// (still sealed).
#[derive(Clone, Debug, PartialEq)]
pub struct ApplyInput {
    /// The effective config.
    pub config: serde_json::Value,
    /// The sealed secrets addressed to this node, in order of precedence.
    pub sealed: Vec<SealedSecret>,
}

impl ApplyInput {
    /// The input of `me` under the policy `replica` holds (its region's
    /// scoped policy merged in); None when it is not an active member.
    pub fn of(replica: &Replica, me: &NodeId) -> Option<ApplyInput> {
        let policy = replica.policy();
        Some(ApplyInput {
            config: replica.effective_config(me)?,
            sealed: secrets_for(policy, me).into_iter().cloned().collect(),
        })
    }
}

/// What to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct ApplyRequest {
    /// Policy heads (hex) the config was resolved at.
    pub heads: Vec<String>,
    /// Heads (hex) of the region's scoped policy merged in (empty: none).
    pub regional: Vec<String>,
    /// The effective config and sealed secrets.
    pub input: ApplyInput,
}

/// What came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyResult {
    /// The heads of the request.
    pub heads: Vec<String>,
    /// The regional heads of the request.
    pub regional: Vec<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The command's exit code, when it ran and exited.
    pub exit_code: Option<i32>,
}

/// Errors rendering the config file.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Writing, syncing or renaming failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The handle the daemon keeps.
pub struct Applier {
    tx: watch::Sender<Option<ApplyRequest>>,
}

impl Applier {
    /// Start the applier task; results arrive on the returned receiver. `key`
    /// (the node key) opens the secrets sealed to this node.
    pub fn spawn(config: ApplyConfig, key: SecretKey) -> (Applier, mpsc::Receiver<ApplyResult>) {
        let (tx, mut rx) = watch::channel::<Option<ApplyRequest>>(None);
        let (res_tx, res_rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(req) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let result = apply_once(&config, &key, &req).await;
                if res_tx.send(result).await.is_err() {
                    break;
                }
            }
        });
        (Applier { tx }, res_rx)
    }

    /// Ask for `req` to be applied (replacing a request not yet started).
    pub fn submit(&self, req: ApplyRequest) {
        self.tx.send_replace(Some(req));
    }
}

/// Render `config` to `path` atomically: write a temporary file beside it, sync
/// it, rename it over the target, sync the directory.
pub fn render(path: &Path, config: &serde_json::Value) -> Result<(), RenderError> {
    write_atomically(path, &json_text(config), None)
}

/// Write `tree` to `path` atomically with mode 0600: a fresh temporary file
/// created 0600 beside it, synced, renamed over the target, directory synced.
pub fn render_secrets(path: &Path, tree: &serde_json::Value) -> Result<(), RenderError> {
    use std::os::unix::fs::PermissionsExt;
    let text = json_text(tree);
    // Unchanged, and still 0600: nothing to write (an apply of a policy that
    // changed no secret needs no disk, even a full one).
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o777 == 0o600
        && std::fs::read(path).is_ok_and(|old| old == text)
    {
        return Ok(());
    }
    write_atomically(path, &text, Some(0o600))
}

fn json_text(v: &serde_json::Value) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(v).expect("a JSON value serialises");
    text.push(b'\n');
    text
}

/// Write `text` to a temporary file beside `path`, sync it, rename it over
/// `path`, sync the directory. With `mode`, the temporary file is created
/// fresh with that mode (a stale one is removed first), so the content is
/// never readable under a wider mode, even for an instant.
fn write_atomically(path: &Path, text: &[u8], mode: Option<u32>) -> Result<(), RenderError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| RenderError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut f = match mode {
        None => std::fs::File::create(&tmp).map_err(io)?,
        Some(mode) => {
            match std::fs::remove_file(&tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
                .map_err(io)?
        }
    };
    f.write_all(text).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Open the sealed secrets with `key` and nest them by dotted path (later
/// entries, of higher precedence, win). An error names the entry only.
pub fn open_secrets(
    key: &SecretKey,
    sealed: &[SealedSecret],
) -> Result<serde_json::Value, dcloud_crdt::secret::SecretError> {
    let mut tree = serde_json::Value::Object(Default::default());
    for s in sealed {
        let Some(value) = s.open(key)? else {
            continue;
        };
        let mut t = serde_json::Value::String(value.expose().to_string());
        for seg in s.path.split('.').rev() {
            let mut obj = serde_json::Map::new();
            obj.insert(seg.to_string(), t);
            t = serde_json::Value::Object(obj);
        }
        dcloud_crdt::policy::deep_merge(&mut tree, t);
    }
    Ok(tree)
}

async fn apply_once(config: &ApplyConfig, key: &SecretKey, req: &ApplyRequest) -> ApplyResult {
    let mut result = ApplyResult {
        heads: req.heads.clone(),
        regional: req.regional.clone(),
        error: None,
        exit_code: None,
    };
    if let Some(file) = &config.secrets_file {
        let file = file.clone();
        let key = key.clone();
        let sealed = req.input.sealed.clone();
        let written = tokio::task::spawn_blocking(move || {
            let tree = open_secrets(&key, &sealed).map_err(|e| e.to_string())?;
            render_secrets(&file, &tree).map_err(|e| e.to_string())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                result.error = Some(e);
                return result;
            }
            Err(e) => {
                result.error = Some(format!("secrets task failed: {e}"));
                return result;
            }
        }
    } else if !req.input.sealed.is_empty() {
        result.error = Some(format!(
            "{} secret(s) are sealed to this site but no apply secrets file is configured",
            req.input.sealed.len()
        ));
        return result;
    }
    if let Some(file) = &config.file {
        let file = file.clone();
        let value = req.input.config.clone();
        let rendered = tokio::task::spawn_blocking(move || render(&file, &value)).await;
        match rendered {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                result.error = Some(e.to_string());
                return result;
            }
            Err(e) => {
                result.error = Some(format!("render task failed: {e}"));
                return result;
            }
        }
    }
    let Some(cmd) = &config.command else {
        return result;
    };
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .env("DCLOUD_POLICY_HEADS", req.heads.join(","))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(file) = &config.file {
        command.env("DCLOUD_CONFIG_FILE", file);
    }
    if let Some(file) = &config.secrets_file {
        command.env("DCLOUD_SECRETS_FILE", file);
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            result.error = Some(format!("cannot start apply command {cmd:?}: {e}"));
            return result;
        }
    };
    let stderr = child.stderr.take();
    let run = async {
        let mut kept = Vec::new();
        if let Some(mut s) = stderr {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = STDERR_KEPT_MAX_BYTES.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
        }
        (child.wait().await, kept)
    };
    match tokio::time::timeout(Duration::from_millis(config.timeout_ms), run).await {
        Err(_) => {
            result.error = Some(format!(
                "apply command timed out after {} ms and was killed",
                config.timeout_ms
            ));
        }
        Ok((Err(e), _)) => result.error = Some(format!("apply command: {e}")),
        Ok((Ok(status), stderr)) => {
            result.exit_code = status.code();
            if !status.success() {
                let tail = String::from_utf8_lossy(&stderr).trim().to_string();
                result.error = Some(match (status.code(), tail.is_empty()) {
                    (Some(c), true) => format!("apply command exited with status {c}"),
                    (Some(c), false) => format!("apply command exited with status {c}: {tail}"),
                    (None, _) => "apply command was killed by a signal".to_string(),
                });
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_then_runs_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("site.json");
        let cfg = ApplyConfig {
            file: Some(file.clone()),
            secrets_file: None,
            command: Some("test -s \"$DCLOUD_CONFIG_FILE\" && echo bad >&2 && exit 3".into()),
            timeout_ms: 5000,
        };
        let req = ApplyRequest {
            heads: vec!["ab".into()],
            regional: Vec::new(),
            input: ApplyInput {
                config: serde_json::json!({"a": 1}),
                sealed: Vec::new(),
            },
        };
        let key = SecretKey::from_seed([3; 32]);
        let r = apply_once(&cfg, &key, &req).await;
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(
            r.error.as_deref(),
            Some("apply command exited with status 3: bad")
        );
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"a": 1}));

        let slow = ApplyConfig {
            command: Some("sleep 5".into()),
            timeout_ms: 50,
            ..cfg
        };
        let r = apply_once(&slow, &key, &req).await;
        assert!(r.error.unwrap().contains("timed out"));
    }

    #[tokio::test]
    async fn secrets_are_opened_into_their_own_0600_file() {
        use std::collections::BTreeMap;
        use std::os::unix::fs::PermissionsExt;

        use dcloud_crdt::Level;
        use dcloud_crdt::secret::seal;

        let dir = tempfile::tempdir().unwrap();
        let me = SecretKey::from_seed([4; 32]);
        let other = SecretKey::from_seed([5; 32]);
        let fleet = seal(
            &Level::Fleet,
            "db.user",
            &BTreeMap::new(),
            b"app",
            &[me.public(), other.public()],
        )
        .unwrap();
        let mine = seal(
            &Level::Site(me.public()),
            "db.password",
            &BTreeMap::new(),
            b"s3cret-value",
            &[me.public()],
        )
        .unwrap();
        let cfg = ApplyConfig {
            file: Some(dir.path().join("site.json")),
            secrets_file: Some(dir.path().join("secrets.json")),
            command: Some("test \"$(stat -c %a \"$DCLOUD_SECRETS_FILE\")\" = 600".into()),
            timeout_ms: 5000,
        };
        let req = ApplyRequest {
            heads: vec!["ab".into()],
            regional: Vec::new(),
            input: ApplyInput {
                config: serde_json::json!({"a": 1}),
                sealed: vec![fleet.clone(), mine.clone()],
            },
        };
        let r = apply_once(&cfg, &me, &req).await;
        assert_eq!(r.error, None);
        let path = dir.path().join("secrets.json");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"db": {"user": "app", "password": "s3cret-value"}})
        );
        let config = std::fs::read_to_string(dir.path().join("site.json")).unwrap();
        assert!(!config.contains("s3cret"));

        // A tampered ciphertext fails the apply, naming the entry, not the value.
        let mut bad = mine.clone();
        let slot = bad.to.get_mut(&me.public().to_hex()).unwrap();
        slot.ct.replace_range(
            0..2,
            if slot.ct.starts_with("00") {
                "01"
            } else {
                "00"
            },
        );
        let req = ApplyRequest {
            heads: vec!["cd".into()],
            regional: Vec::new(),
            input: ApplyInput {
                config: serde_json::json!({"a": 1}),
                sealed: vec![bad],
            },
        };
        let err = apply_once(&cfg, &me, &req).await.error.unwrap();
        assert!(err.contains("does not open"), "{err}");
        assert!(!err.contains("s3cret"));
    }
}
