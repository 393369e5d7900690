//! Sealed secrets: a policy value that only its target sites can read.
//!
//! The admin tool seals a value to every target site with HPKE (RFC 9180,
//! base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305; the
//! `hpke` crate). The sealed value is a policy entry like any other
//! (`secret/<level>/<path>`), signed by the authority and gossiped to every
//! site, so relays and other sites hold only ciphertext. A target decrypts it
//! when it applies the policy and writes it to its own secrets file.
//!
//! **Keys.** A site's encryption key pair is derived from its ed25519 node key
//! (`node.key`): the X25519 secret is the ed25519 secret scalar (the first half
//! of SHA-512 of the seed, clamped) and the X25519 public key is the node id's
//! Edwards point mapped to Montgomery form. So the encryption public key of an
//! enrolled site is its node id, which the enrolment already names and signs:
//! nothing new to publish, nothing a relay could substitute. Using one key pair
//! for Ed25519 signatures and an X25519 KEM is proven jointly secure by
//! Thormarker, "On using the same key pair for Ed25519 and an X25519 based
//! KEM" (2021), and is what age does for `ssh-ed25519` recipients. The cost:
//! the encryption key cannot be rotated apart from the node's identity
//! (re-keying a site is a new node id, a new enrolment).
//!
//! **Binding.** Each ciphertext's HPKE `info` is
//! `dcloud/secret/v1 \0 <document key> \0 <sealing id>`, and its AAD is the
//! target's node id, so a ciphertext moved to another path, another sealing or
//! another site's slot does not open.
//!
//! **What is published.** The level, path, label selector, sealing id, the
//! target node ids and their ciphertexts. No digest of the plaintext is
//! published (it would let anyone test guesses of a low-entropy secret); the
//! digest shown to operators is of the sealed entry.

use std::collections::BTreeMap;
use std::fmt;

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::keys::{NodeId, SecretKey};
use crate::policy::{Level, Policy, check_path, check_region, config_key};

/// The version of the sealed-secret entry this build writes and reads.
pub const SEALED_FORMAT_VERSION: u32 = 1;
/// The HPKE `info` prefix (domain separation, versioned with the format).
pub const SEAL_CONTEXT: &[u8] = b"dcloud/secret/v1\0";
/// Largest plaintext of one secret.
pub const SECRET_SIZE_MAX_BYTES: usize = 4 << 10;
/// Document-key prefix of sealed secrets.
pub const SECRET_KEY_PREFIX: &str = "secret/";

/// Why sealing or opening failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The entry's format version is not this build's.
    #[error(
        "sealed secret format version {0} is not read by this build (it reads version {SEALED_FORMAT_VERSION})"
    )]
    UnknownVersion(u32),
    /// The entry does not parse.
    #[error("sealed secret is malformed: {0}")]
    Malformed(String),
    /// The value is too large.
    #[error("secret is {0} bytes, over the {SECRET_SIZE_MAX_BYTES}-byte limit")]
    TooLarge(usize),
    /// The value is not UTF-8 text.
    #[error("secret is not UTF-8 text; encode binary values (base64, hex) before sealing")]
    NotText,
    /// No site to seal to.
    #[error("no enrolled, unrevoked site matches {0}; nothing to seal to")]
    NoTargets(String),
    /// A target's key cannot be used (not a valid, strong ed25519 point).
    #[error("site {0} has a key that cannot receive sealed values")]
    BadTargetKey(String),
    /// HPKE refused to seal.
    #[error("sealing to site {0} failed")]
    Seal(String),
    /// The ciphertext for this site does not open: tampered, moved to another
    /// path or site, or sealed to another key.
    #[error(
        "sealed secret {key} does not open for this site (tampered, moved, or sealed to another key)"
    )]
    Open {
        /// The document key.
        key: String,
    },
}

/// One target's ciphertext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedTo {
    /// The HPKE encapsulated key (hex, 32 bytes).
    pub enc: String,
    /// The ciphertext with its tag (hex).
    pub ct: String,
}

/// A sealed secret: the JSON value of a `secret/...` policy entry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedSecret {
    /// Format version ([`SEALED_FORMAT_VERSION`]).
    pub v: u32,
    /// `fleet`, `region:NAME` or `site:NODE_ID`.
    pub level: String,
    /// Dotted path in the site's secrets tree.
    pub path: String,
    /// Labels a target must carry (all of them).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// This sealing's random id (hex, 16 bytes): a re-seal gets a new one.
    pub id: String,
    /// Ciphertext per target node id (hex).
    pub to: BTreeMap<String, SealedTo>,
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealedSecret({} {} to {} sites, digest {})",
            self.level,
            self.path,
            self.to.len(),
            self.digest()
        )
    }
}

/// A decrypted secret value. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Plaintext(String);

impl Plaintext {
    /// The value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext(<{} bytes, redacted>)", self.0.len())
    }
}

/// `fleet`, `region:NAME`, `site:NODE_ID` for a level.
pub fn level_text(level: &Level) -> String {
    match level {
        Level::Fleet => "fleet".into(),
        Level::Region(r) => format!("region:{r}"),
        Level::Site(n) => format!("site:{n}"),
    }
}

/// The level of a `level` field.
pub fn parse_level_text(s: &str) -> Result<Level, SecretError> {
    if s == "fleet" {
        return Ok(Level::Fleet);
    }
    if let Some(r) = s.strip_prefix("region:") {
        check_region(r).map_err(|e| SecretError::Malformed(e.to_string()))?;
        return Ok(Level::Region(r.to_string()));
    }
    if let Some(n) = s.strip_prefix("site:") {
        return n
            .parse::<NodeId>()
            .map(Level::Site)
            .map_err(|e| SecretError::Malformed(e.to_string()));
    }
    Err(SecretError::Malformed(format!("level {s:?}")))
}

/// The document key of a secret: `secret/fleet/<path>`, `secret/region/<r>/<path>`,
/// `secret/site/<id>/<path>`.
pub fn secret_key(level: &Level, path: &str) -> String {
    format!("{SECRET_KEY_PREFIX}{}", config_key(level, path))
}

fn info(doc_key: &str, id: &str) -> Vec<u8> {
    let mut v = SEAL_CONTEXT.to_vec();
    v.extend_from_slice(doc_key.as_bytes());
    v.push(0);
    v.extend_from_slice(id.as_bytes());
    v
}

fn recipient_key(node: &NodeId) -> Result<<X25519HkdfSha256 as hpke::Kem>::PublicKey, SecretError> {
    let vk = node
        .verifying_key()
        .map_err(|_| SecretError::BadTargetKey(node.short()))?;
    <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(vk.to_montgomery().as_bytes())
        .map_err(|_| SecretError::BadTargetKey(node.short()))
}

/// The active members a secret at `level` with `selector` is sealed to:
/// enrolled, not revoked, in the level, carrying every selector label.
pub fn targets(policy: &Policy, level: &Level, selector: &BTreeMap<String, String>) -> Vec<NodeId> {
    policy
        .members
        .iter()
        .filter(|(id, _)| policy.is_active_member(id))
        .filter(|(id, m)| match level {
            Level::Fleet => true,
            Level::Region(r) => m.region == *r,
            Level::Site(n) => *id == n,
        })
        .filter(|(_, m)| {
            selector
                .iter()
                .all(|(k, v)| m.labels.get(k).is_some_and(|mv| mv == v))
        })
        .map(|(id, _)| *id)
        .collect()
}

/// Seal `value` to `targets`.
pub fn seal(
    level: &Level,
    path: &str,
    selector: &BTreeMap<String, String>,
    value: &[u8],
    targets: &[NodeId],
) -> Result<SealedSecret, SecretError> {
    check_path(path).map_err(|e| SecretError::Malformed(e.to_string()))?;
    if value.len() > SECRET_SIZE_MAX_BYTES {
        return Err(SecretError::TooLarge(value.len()));
    }
    if std::str::from_utf8(value).is_err() {
        return Err(SecretError::NotText);
    }
    if targets.is_empty() {
        return Err(SecretError::NoTargets(format!(
            "{} {path}",
            level_text(level)
        )));
    }
    let mut id = [0u8; 16];
    rand::fill(&mut id);
    let id = hex::encode(id);
    let doc_key = secret_key(level, path);
    let info = info(&doc_key, &id);
    let mut rng = rand::rng();
    let mut to = BTreeMap::new();
    for t in targets {
        let pk = recipient_key(t)?;
        let (enc, ct) = hpke::single_shot_seal_with_rng::<
            ChaCha20Poly1305,
            HkdfSha256,
            X25519HkdfSha256,
        >(&OpModeS::Base, &pk, &info, value, &t.0, &mut rng)
        .map_err(|_| SecretError::Seal(t.short()))?;
        to.insert(
            t.to_hex(),
            SealedTo {
                enc: hex::encode(enc.to_bytes()),
                ct: hex::encode(ct),
            },
        );
    }
    Ok(SealedSecret {
        v: SEALED_FORMAT_VERSION,
        level: level_text(level),
        path: path.to_string(),
        selector: selector.clone(),
        id,
        to,
    })
}

impl SealedSecret {
    /// Parse the JSON text of a `secret/...` entry stored under `doc_key`,
    /// refusing another format version and an entry whose level and path are
    /// not its key's.
    pub fn parse(doc_key: &str, text: &str) -> Result<SealedSecret, SecretError> {
        let probe: serde_json::Value =
            serde_json::from_str(text).map_err(|e| SecretError::Malformed(e.to_string()))?;
        match probe.get("v").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(SEALED_FORMAT_VERSION) => {}
            Some(v) => {
                return Err(SecretError::UnknownVersion(
                    v.min(u64::from(u32::MAX)) as u32
                ));
            }
            None => return Err(SecretError::Malformed("no format version `v`".into())),
        }
        let s: SealedSecret =
            serde_json::from_value(probe).map_err(|e| SecretError::Malformed(e.to_string()))?;
        let level = parse_level_text(&s.level)?;
        if secret_key(&level, &s.path) != doc_key {
            return Err(SecretError::Malformed(format!(
                "entry names {} {} but is stored at {doc_key}",
                s.level, s.path
            )));
        }
        Ok(s)
    }

    /// The entry's JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a sealed secret serialises")
    }

    /// Its level.
    pub fn level(&self) -> Result<Level, SecretError> {
        parse_level_text(&self.level)
    }

    /// Its document key.
    pub fn doc_key(&self) -> Result<String, SecretError> {
        Ok(secret_key(&self.level()?, &self.path))
    }

    /// The nodes it is sealed to (ids that do not parse are skipped).
    pub fn sealed_to(&self) -> Vec<NodeId> {
        self.to.keys().filter_map(|k| k.parse().ok()).collect()
    }

    /// A short digest of the sealed entry (never of the plaintext).
    pub fn digest(&self) -> String {
        let h = sha2::Sha256::digest(self.to_json().as_bytes());
        hex::encode(&h[..8])
    }

    /// Open this site's ciphertext: `Ok(None)` when it is not a target.
    pub fn open(&self, key: &SecretKey) -> Result<Option<Plaintext>, SecretError> {
        let me = key.public();
        let Some(sealed) = self.to.get(&me.to_hex()) else {
            return Ok(None);
        };
        let doc_key = self.doc_key()?;
        let fail = || SecretError::Open {
            key: doc_key.clone(),
        };
        let enc = hex::decode(&sealed.enc).map_err(|_| fail())?;
        let ct = hex::decode(&sealed.ct).map_err(|_| fail())?;
        let enc =
            <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&enc).map_err(|_| fail())?;
        let sk = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(&key.x25519_secret())
            .map_err(|_| fail())?;
        let pt = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &sk,
            &enc,
            &info(&doc_key, &self.id),
            &ct,
            &me.0,
        )
        .map_err(|_| fail())?;
        String::from_utf8(pt)
            .map(Plaintext)
            .map(Some)
            .map_err(|_| fail())
    }
}

/// The X25519 public key a node id stands for (its Edwards point in
/// Montgomery form); None for a key that is not a valid, strong point.
pub fn x25519_public(node: &NodeId) -> Option<[u8; 32]> {
    node.verifying_key()
        .ok()
        .map(|vk| vk.to_montgomery().to_bytes())
}

/// The secrets sealed to `node`, in order of precedence (fleet, then its
/// region, then its site), each with its document key.
pub fn secrets_for<'a>(policy: &'a Policy, node: &NodeId) -> Vec<&'a SealedSecret> {
    let me = node.to_hex();
    let rank = |s: &SealedSecret| match s.level() {
        Ok(Level::Fleet) => 0,
        Ok(Level::Region(_)) => 1,
        Ok(Level::Site(_)) => 2,
        Err(_) => 3,
    };
    let mut out: Vec<&SealedSecret> = policy
        .secrets
        .values()
        .filter(|s| s.to.contains_key(&me))
        .collect();
    out.sort_by_key(|s| (rank(s), s.path.split('.').count(), s.path.clone()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(seed: u8) -> SecretKey {
        SecretKey::from_seed([seed; 32])
    }

    #[test]
    fn sealed_value_opens_only_for_its_targets() {
        let (a, b, c) = (node(1), node(2), node(3));
        let s = seal(
            &Level::Region("eu".into()),
            "db.password",
            &BTreeMap::new(),
            b"hunter2-plaintext",
            &[a.public(), b.public()],
        )
        .unwrap();
        assert_eq!(s.open(&a).unwrap().unwrap().expose(), "hunter2-plaintext");
        assert_eq!(s.open(&b).unwrap().unwrap().expose(), "hunter2-plaintext");
        assert_eq!(s.open(&c).unwrap(), None);
        let text = s.to_json();
        assert!(!text.contains("hunter2"));
        let back = SealedSecret::parse("secret/region/eu/db.password", &text).unwrap();
        assert_eq!(back, s);
        assert!(!format!("{:?}", s.open(&a).unwrap()).contains("hunter2"));
    }

    #[test]
    fn moved_or_tampered_ciphertext_does_not_open() {
        let (a, b) = (node(1), node(2));
        let s = seal(
            &Level::Fleet,
            "x",
            &BTreeMap::new(),
            b"v",
            &[a.public(), b.public()],
        )
        .unwrap();
        // Another path.
        let mut moved = s.clone();
        moved.path = "y".into();
        assert!(matches!(moved.open(&a), Err(SecretError::Open { .. })));
        // Another sealing id.
        let mut moved = s.clone();
        moved.id = "00".repeat(16);
        assert!(matches!(moved.open(&a), Err(SecretError::Open { .. })));
        // a's ciphertext in b's slot: sealed to another key, and bound to a.
        let mut moved = s.clone();
        let a_ct = moved.to[&a.public().to_hex()].clone();
        moved.to.insert(b.public().to_hex(), a_ct);
        assert!(matches!(moved.open(&b), Err(SecretError::Open { .. })));
        // One flipped byte of ciphertext.
        let mut bad = s.clone();
        let slot = bad.to.get_mut(&a.public().to_hex()).unwrap();
        let mut ct = hex::decode(&slot.ct).unwrap();
        ct[0] ^= 1;
        slot.ct = hex::encode(ct);
        assert!(matches!(bad.open(&a), Err(SecretError::Open { .. })));
    }

    #[test]
    fn other_versions_and_misplaced_entries_are_refused() {
        let a = node(1);
        let s = seal(&Level::Fleet, "x", &BTreeMap::new(), b"v", &[a.public()]).unwrap();
        let mut j: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        j["v"] = 2.into();
        let err = SealedSecret::parse("secret/fleet/x", &j.to_string()).unwrap_err();
        assert_eq!(err, SecretError::UnknownVersion(2));
        assert!(
            err.to_string()
                .contains("version 2 is not read by this build")
        );
        assert!(matches!(
            SealedSecret::parse("secret/fleet/other", &s.to_json()),
            Err(SecretError::Malformed(_))
        ));
    }

    #[test]
    fn bounds_and_targets_are_checked() {
        let a = node(1);
        let big = vec![b'a'; SECRET_SIZE_MAX_BYTES + 1];
        assert!(matches!(
            seal(&Level::Fleet, "x", &BTreeMap::new(), &big, &[a.public()]),
            Err(SecretError::TooLarge(_))
        ));
        assert_eq!(
            seal(&Level::Fleet, "x", &BTreeMap::new(), &[0xff], &[a.public()]),
            Err(SecretError::NotText)
        );
        assert!(matches!(
            seal(&Level::Fleet, "x", &BTreeMap::new(), b"v", &[]),
            Err(SecretError::NoTargets(_))
        ));
    }

    #[test]
    fn sealed_entries_ride_in_the_policy_and_only_to_members() {
        use crate::policy::{Edit, Member, PolicyEditor};
        let (auth, a, b) = (node(20), node(21), node(22));
        let mut ed = PolicyEditor::new(&[]).unwrap();
        let member = |region: &str| Member {
            name: format!("s-{region}"),
            region: region.into(),
            labels: BTreeMap::new(),
        };
        ed.push(Edit::Enrol(a.public(), member("eu"))).unwrap();
        ed.push(Edit::Enrol(b.public(), member("us"))).unwrap();
        let c1 = ed.finish(&auth, 1).unwrap();
        let base = PolicyEditor::new(std::slice::from_ref(&c1))
            .unwrap()
            .base_policy();
        let level = Level::Region("eu".into());
        let to = targets(&base, &level, &BTreeMap::new());
        assert_eq!(to, vec![a.public()]);
        let sealed = seal(&level, "db.pw", &BTreeMap::new(), b"v1", &to).unwrap();
        let mut ed = PolicyEditor::new(std::slice::from_ref(&c1)).unwrap();
        ed.push(Edit::SealSecret(sealed.clone())).unwrap();
        let c2 = ed.finish(&auth, 1).unwrap();
        let p = PolicyEditor::new(&[c1.clone(), c2.clone()])
            .unwrap()
            .base_policy();
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.secrets.get("secret/region/eu/db.pw"), Some(&sealed));
        assert_eq!(secrets_for(&p, &a.public()).len(), 1);
        assert!(secrets_for(&p, &b.public()).is_empty());
        // The effective config never holds it.
        assert!(
            !p.effective_config(&a.public())
                .unwrap()
                .to_string()
                .contains("db")
        );
        // Sealing to a site that is not an active member is refused.
        let outsider = seal(&level, "x", &BTreeMap::new(), b"v", &[node(23).public()]).unwrap();
        let mut ed = PolicyEditor::new(&[c1, c2]).unwrap();
        assert!(matches!(
            ed.push(Edit::SealSecret(outsider)),
            Err(crate::policy::EditError::NotEnrolled(_))
        ));
    }

    #[test]
    fn derived_x25519_key_matches_the_node_key() {
        let a = node(9);
        let sk =
            <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(&a.x25519_secret()).unwrap();
        let pk = <X25519HkdfSha256 as hpke::Kem>::sk_to_pk(&sk);
        assert_eq!(
            pk.to_bytes().as_slice(),
            x25519_public(&a.public()).unwrap().as_slice()
        );
    }
}
