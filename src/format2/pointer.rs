//! `PREFIX/latest.json`: spotkeeper's pointer to the newest snapshot of format 2. It names the
//! restic snapshot and carries the lineage (parent, writer) that the guard judges; it is only
//! ever replaced with `If-Match` on the ETag the writer read (or created with `If-None-Match`),
//! so two writers cannot both move it. restic never reads it: the repository under `repo/` is
//! complete without it.
//!
//! It is plaintext, so anyone who can write the bucket could edit it: it carries a MAC
//! (`"mac": "hmac-sha256:<hex>"`), HMAC-SHA256 over its canonical content (the compact JSON of
//! every other field, in the order written) under a key derived from the repository's master
//! key (`PointerKey`). Every reader that has the password checks it (`read`).

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::format2::Format2Error;
use crate::format2::head::HeadError;
use crate::manifest::{MAX_METADATA_BYTES, ManifestError};
use crate::snapshot_id::SnapshotId;
use crate::store::{Problem, PutCondition, Store, StoreError};

/// The pointer's key under the prefix.
pub const POINTER_KEY: &str = "latest.json";
/// The pointer's `format`.
pub const POINTER_FORMAT: u32 = 2;
/// What the pointer's key is derived for: HMAC-SHA256(master key material, this).
pub const KEY_LABEL: &[u8] = b"spotkeeper latest.json v1";
/// How the `mac` field starts.
const MAC_SCHEME: &str = "hmac-sha256:";

/// The key that authenticates `latest.json`: HMAC-SHA256 keyed with the repository's master key
/// material (restic's `encrypt`, `mac.k`, `mac.r`, 64 bytes in that order, as `restic cat
/// masterkey` shows them) over `KEY_LABEL`. Never the master key itself: a MAC key that leaks
/// from here opens nothing.
#[derive(Clone)]
pub struct PointerKey([u8; 32]);

impl std::fmt::Debug for PointerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PointerKey(..)")
    }
}

impl PointerKey {
    /// Derives the key from the master key material.
    pub fn derive(master: &[u8]) -> PointerKey {
        let mut mac = Hmac::<Sha256>::new_from_slice(master).expect("HMAC-SHA256 takes a key of any length");
        mac.update(KEY_LABEL);
        PointerKey(mac.finalize().into_bytes().into())
    }

    /// The key of the repository whose master key is `key`.
    pub fn of(key: &rustic_core::repofile::MasterKey) -> PointerKey {
        let mut material = Vec::with_capacity(64);
        material.extend_from_slice(&key.encrypt);
        material.extend_from_slice(&key.mac.k);
        material.extend_from_slice(&key.mac.r);
        PointerKey::derive(&material)
    }

    fn hasher(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC-SHA256 takes a key of any length")
    }

    /// The `mac` field for `pointer`.
    fn seal(&self, pointer: &Pointer) -> String {
        let mut mac = self.hasher();
        mac.update(&pointer.canonical());
        format!("{MAC_SCHEME}{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Whether `mac` (the field as read) authenticates `pointer`, in constant time.
    fn opens(&self, pointer: &Pointer, mac: &str) -> bool {
        let Some(tag) = mac.strip_prefix(MAC_SCHEME).and_then(|h| hex::decode(h).ok()) else {
            return false;
        };
        let mut check = self.hasher();
        check.update(&pointer.canonical());
        check.verify_slice(&tag).is_ok()
    }
}

/// What `latest.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// Always 2.
    pub format: u32,
    /// spotkeeper's id of the snapshot, also a tag on the restic snapshot.
    pub id: SnapshotId,
    /// restic's snapshot id (64 hex digits): `restic restore <restic_id>`.
    pub restic_id: String,
    /// What `latest.json` (or format 1's `latest/`) was when this snapshot was taken.
    pub parent: Option<SnapshotId>,
    /// The writer (a machine's local id) that took it: the lineage guard's second half.
    pub writer: Option<String>,
    pub hostname: String,
    pub created_at: DateTime<Utc>,
    pub files: u64,
    pub bytes: u64,
    /// Entries of the state that could not be copied. Their paths are in the restic snapshot's
    /// description (encrypted), never here: this object is plaintext.
    #[serde(default)]
    pub skipped: u64,
}

/// `latest.json` as stored: the pointer's fields, then its MAC.
#[derive(Serialize, Deserialize)]
struct Sealed {
    #[serde(flatten)]
    pointer: Pointer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

/// What a reader with the password found of the pointer's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticity {
    /// The MAC matches the content under this repository's key.
    Valid,
    /// There is no MAC: an older spotkeeper wrote it, or someone stripped it.
    Missing,
    /// The MAC does not match: the content was edited, or the pointer is another repository's.
    Wrong,
}

impl Pointer {
    /// What the MAC covers: the compact JSON of the fields, in declaration order.
    fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `latest.json`'s bytes, sealed with `key`.
    pub fn encode(&self, key: &PointerKey) -> Vec<u8> {
        let sealed = Sealed {
            pointer: self.clone(),
            mac: Some(key.seal(self)),
        };
        let mut bytes = serde_json::to_vec_pretty(&sealed).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Parses `latest.json` read from `key`, refusing anything this version cannot trust; also
    /// returns its `mac` field, for `authenticity`.
    pub fn decode(bytes: &[u8], key: &str) -> Result<(Pointer, Option<String>), ManifestError> {
        let invalid = |reason: String| ManifestError::Pointer {
            key: key.to_string(),
            reason,
        };
        #[derive(Deserialize)]
        struct VersionOnly {
            format: u32,
        }
        let version: VersionOnly = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if version.format != POINTER_FORMAT {
            return Err(ManifestError::PointerFormat {
                key: key.to_string(),
                found: version.format,
            });
        }
        let Sealed { pointer, mac } = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if pointer.restic_id.len() != 64 || !pointer.restic_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "restic_id {:?} is not 64 hex digits",
                pointer.restic_id
            )));
        }
        Ok((pointer, mac))
    }

    /// Whether `mac` (as `decode` returned it) authenticates this pointer under `key`.
    pub fn authenticity(&self, mac: Option<&str>, key: &PointerKey) -> Authenticity {
        match mac {
            None => Authenticity::Missing,
            Some(mac) if key.opens(self, mac) => Authenticity::Valid,
            Some(_) => Authenticity::Wrong,
        }
    }
}

/// Why `latest.json` could not be read or trusted. `repository::RepositoryError` takes each
/// variant as its own (the pointer knows nothing of the layer that reads the head).
#[derive(Debug, thiserror::Error)]
pub enum PointerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Too large, not valid JSON or of another format.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The repository's key or listing, needed to check the MAC.
    #[error(transparent)]
    Format2(#[from] Format2Error),
    /// No MAC, or a wrong one.
    #[error(transparent)]
    Head(#[from] HeadError),
}

/// `latest.json` and its ETag; `None` when there is none (no format-2 snapshot yet). With
/// `engine` (the password), its MAC is checked: a pointer without one, or whose MAC does not
/// match, is an error (`HeadError`) naming it. Without, nothing can be checked: callers without
/// the password only use it to say that format 2 is there.
pub async fn read(
    store: &Store,
    engine: Option<&crate::format2::Engine>,
) -> Result<Option<(Pointer, Option<String>)>, PointerError> {
    let Some((bytes, etag)) = get(store).await? else {
        return Ok(None);
    };
    let full_key = store.full_key(POINTER_KEY);
    let (pointer, mac) = Pointer::decode(&bytes, &full_key)?;
    let Some(engine) = engine else {
        return Ok(Some((pointer, etag)));
    };
    let authenticity = pointer.authenticity(mac.as_deref(), &engine.pointer_key().await?);
    // Only a pointer without a MAC needs the listing.
    let sealed_seen = authenticity == Authenticity::Missing && engine.list().await?.iter().any(|s| s.sealed_head);
    Ok(Some((trust(pointer, authenticity, sealed_seen, &full_key)?, etag)))
}

/// `latest.json`'s bytes and ETag, `None` when there is none; one larger than a pointer can be is
/// refused naming it (`ManifestError::TooLarge`).
pub async fn get(store: &Store) -> Result<Option<(bytes::Bytes, Option<String>)>, PointerError> {
    match store.get_bytes_capped(POINTER_KEY, MAX_METADATA_BYTES).await {
        Err(StoreError::TooLarge { key, cap, .. }) => Err(ManifestError::TooLarge { key, cap }.into()),
        other => Ok(other?),
    }
}

/// What a reader with the password makes of `pointer` (read from `full_key`), given its MAC's
/// `authenticity` and whether any snapshot of the repository was taken by a spotkeeper that
/// writes the MAC (`sealed_seen`, the `sealed-head` tag).
pub fn trust(
    pointer: Pointer,
    authenticity: Authenticity,
    sealed_seen: bool,
    full_key: &str,
) -> Result<Pointer, HeadError> {
    match authenticity {
        Authenticity::Valid => Ok(pointer),
        // Written by a spotkeeper from before the MAC, as long as no snapshot in the repository
        // was taken by one that writes it: then a pointer without a MAC can only be a stripped
        // one. (An upgrade's first new machine must boot on its old pointer.)
        Authenticity::Missing if !sealed_seen => {
            tracing::warn!(key = %full_key, "latest.json carries no MAC: written by an older spotkeeper (no snapshot \
                of this repository was taken by one that authenticates it); trusted this once, the next snapshot \
                writes an authenticated one");
            Ok(pointer)
        }
        Authenticity::Missing => Err(HeadError::Unauthenticated {
            key: full_key.to_string(),
            pointer: Box::new(pointer),
        }),
        Authenticity::Wrong => Err(HeadError::Forged {
            key: full_key.to_string(),
        }),
    }
}

/// Why the pointer was not written.
#[derive(Debug)]
pub enum WriteError {
    /// Another writer replaced (or created) it since `etag` was read.
    Moved,
    Store(StoreError),
}

/// Replaces `latest.json` if it is still the object whose ETag is `etag` (`None`: only if
/// there is none).
/// Returns the new object's ETag (what the next write must match).
pub async fn write(
    store: &Store,
    pointer: &Pointer,
    key: &PointerKey,
    etag: Option<String>,
) -> Result<Option<String>, WriteError> {
    let condition = match etag {
        Some(etag) => PutCondition::Matches(etag),
        None => PutCondition::Absent,
    };
    match store
        .put_bytes(
            POINTER_KEY,
            bytes::Bytes::from(pointer.encode(key)),
            "application/json",
            &[],
            condition,
        )
        .await
    {
        Ok(etag) => Ok(etag),
        Err(e) if e.problem() == Some(&Problem::PreconditionFailed) => Err(WriteError::Moved),
        Err(e) => Err(WriteError::Store(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer() -> Pointer {
        Pointer {
            format: POINTER_FORMAT,
            id: "2026-12-01-02-20".parse().expect("id"),
            restic_id: "ab".repeat(32),
            parent: Some("2026-12-01-02-00".parse().expect("id")),
            writer: Some("w-1".into()),
            hostname: "ip-10-0-0-1".into(),
            created_at: "2026-12-01T02:20:00Z".parse().expect("time"),
            files: 3,
            bytes: 42,
            skipped: 0,
        }
    }

    fn key(byte: u8) -> PointerKey {
        PointerKey::derive(&[byte; 64])
    }

    #[test]
    fn round_trips_and_refuses_what_it_cannot_trust() {
        let p = pointer();
        let (decoded, mac) = Pointer::decode(&p.encode(&key(1)), "k").expect("decode");
        assert_eq!(decoded, p);
        assert!(mac.is_some_and(|m| m.starts_with("hmac-sha256:")));
        let mut newer = p.clone();
        newer.format = 3;
        let err = Pointer::decode(&newer.encode(&key(1)), "b/latest.json").expect_err("format 3");
        assert!(err.to_string().contains("b/latest.json"), "{err}");
        let mut odd = p.clone();
        odd.restic_id = "../../etc".into();
        assert!(Pointer::decode(&odd.encode(&key(1)), "k").is_err());
        assert!(Pointer::decode(b"{\"format\":2", "k").is_err());
    }

    /// Reads `bytes` and checks it under `key`.
    fn check(bytes: &[u8], key: &PointerKey) -> Authenticity {
        let (pointer, mac) = Pointer::decode(bytes, "k").expect("decode");
        pointer.authenticity(mac.as_deref(), key)
    }

    #[test]
    fn the_mac_opens_only_under_its_own_key_and_over_its_own_content() {
        let p = pointer();
        let sealed = p.encode(&key(1));
        assert_eq!(check(&sealed, &key(1)), Authenticity::Valid);
        // Another repository's key (another master key).
        assert_eq!(check(&sealed, &key(2)), Authenticity::Wrong);
        // Every field is covered: edit each one in the text.
        let text = String::from_utf8(sealed.clone()).expect("utf-8");
        for (from, to) in [
            ("2026-12-01-02-20", "2026-12-01-01-20"),
            (&"ab".repeat(32)[..], &"cd".repeat(32)[..]),
            ("\"w-1\"", "\"w-2\""),
            ("ip-10-0-0-1", "ip-10-0-0-2"),
            ("\"files\": 3", "\"files\": 4"),
            ("\"bytes\": 42", "\"bytes\": 43"),
            ("\"skipped\": 0", "\"skipped\": 1"),
            ("2026-12-01T02:20:00Z", "2026-12-01T02:21:00Z"),
        ] {
            assert!(text.contains(from), "{from} in {text}");
            let edited = text.replacen(from, to, 1);
            assert_eq!(check(edited.as_bytes(), &key(1)), Authenticity::Wrong, "{from} -> {to}");
        }
        // A flipped digit of the MAC itself.
        let mac_at = text.find("hmac-sha256:").expect("mac") + "hmac-sha256:".len();
        let mut flipped = sealed.clone();
        flipped[mac_at] = if flipped[mac_at] == b'0' { b'1' } else { b'0' };
        assert_eq!(check(&flipped, &key(1)), Authenticity::Wrong);
        // The MAC stripped, or replaced by garbage.
        let stripped = serde_json::to_vec_pretty(&p).expect("json");
        assert_eq!(check(&stripped, &key(1)), Authenticity::Missing);
        let garbage = text.replace("hmac-sha256:", "hmac-sha256:zz");
        assert_eq!(check(garbage.as_bytes(), &key(1)), Authenticity::Wrong);
        // Field order and whitespace are not content: a reformatted pointer still opens.
        let compact: serde_json::Value = serde_json::from_slice(&sealed).expect("json");
        assert_eq!(
            check(&serde_json::to_vec(&compact).expect("json"), &key(1)),
            Authenticity::Valid
        );
    }

    #[test]
    fn the_key_is_derived_as_documented() {
        // HMAC-SHA256(key = 64 bytes of 0x01, message = "spotkeeper latest.json v1"), computed
        // with Python's hmac module: docs/format.md tells a person to do the same by hand.
        assert_eq!(
            hex::encode(key(1).0),
            "5eb6da298152f133f5866e56a96c74422babc909a0590d794595919280894072"
        );
    }
}
