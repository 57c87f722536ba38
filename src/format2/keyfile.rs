//! The key file spotkeeper writes for its password: restic's own scrypt parameters (N = 2^15,
//! r = 8, p = 3: 32 MiB of memory), not rustic_core's (N = 2^17, r = 8, p = 1: 128 MiB).
//!
//! Every command that opens the repository derives the key once, and that derivation was the
//! largest allocation of a restore or a snapshot: 128 MiB for a third of a second, on an instance
//! of 2 GiB that OpenClaw also needs. restic 0.14 writes these parameters for a new repository
//! (it calibrates to at most 60 MiB), so stock restic opens the key as it opens its own; the
//! work is about the same (3 x 2^15 against 2^17 block mixes). The file is restic's format:
//! `{"kdf": "scrypt", "N", "r", "p", "salt", "data"}`, `data` being the master key's JSON
//! encrypted with the derived key (nonce, ciphertext, MAC).

use std::io::Read;

use aes256ctr_poly1305aes::Aes256CtrPoly1305Aes;
use aes256ctr_poly1305aes::aead::{AeadInPlace, generic_array::GenericArray};
use rustic_core::repofile::{KeyFile, MasterKey};
use rustic_core::{FileType, Id, WriteBackend};
use sha2::{Digest, Sha256};

use super::S3Backend;

/// log2 of scrypt's N, and its r and p, as restic 0.14 writes them.
pub const LOG_N: u8 = 15;
pub const R: u32 = 8;
pub const P: u32 = 3;

/// Why the key file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("reading /dev/urandom: {0}")]
    Random(std::io::Error),
    #[error("{0}")]
    Crypto(String),
    #[error("{0}")]
    Write(Box<rustic_core::RusticError>),
}

/// The key file for `master` under `password`, and its id (the hash of its bytes).
pub fn build(master: &MasterKey, password: &[u8]) -> Result<(Id, Vec<u8>), KeyFileError> {
    let mut salt = vec![0u8; 64];
    let mut nonce = [0u8; 16];
    let mut urandom = std::fs::File::open("/dev/urandom").map_err(KeyFileError::Random)?;
    urandom.read_exact(&mut salt).map_err(KeyFileError::Random)?;
    urandom.read_exact(&mut nonce).map_err(KeyFileError::Random)?;
    let params = scrypt::Params::new(LOG_N, R, P).map_err(|e| KeyFileError::Crypto(e.to_string()))?;
    let mut derived = zeroize::Zeroizing::new([0u8; 64]);
    scrypt::scrypt(password, &salt, &params, derived.as_mut_slice())
        .map_err(|e| KeyFileError::Crypto(e.to_string()))?;
    // The derived key's 64 bytes are restic's: AES-256 key, then Poly1305-AES's k and r.
    let cipher = Aes256CtrPoly1305Aes::new(GenericArray::from_slice(derived.as_slice()));
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(master).map_err(|e| KeyFileError::Crypto(e.to_string()))?);
    let mut data = Vec::with_capacity(plain.len() + 32);
    data.extend_from_slice(&nonce);
    data.extend_from_slice(&plain);
    let tag = cipher
        .encrypt_in_place_detached(GenericArray::from_slice(&nonce), b"", &mut data[16..])
        .map_err(|_| KeyFileError::Crypto("encrypting the master key failed".into()))?;
    data.extend_from_slice(&tag);
    let file = KeyFile {
        hostname: Some("spotkeeper".into()),
        username: Some("spotkeeper".into()),
        created: Some(rustic_core::jiff::Zoned::now()),
        kdf: "scrypt".into(),
        n: 1 << LOG_N,
        r: R,
        p: P,
        data,
        salt,
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| KeyFileError::Crypto(e.to_string()))?;
    let id = Id::new(Sha256::digest(&bytes).into());
    Ok((id, bytes))
}

/// Writes the key file for `master` under `password` into the repository; returns its id.
pub fn write(backend: &S3Backend, master: &MasterKey, password: &[u8]) -> Result<Id, KeyFileError> {
    let (id, bytes) = build(master, password)?;
    backend
        .write_bytes(FileType::Key, &id, false, bytes.into())
        .map_err(KeyFileError::Write)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file opens with rustic_core's own reader (the same code that opens restic's keys) and
    /// gives back the master key; another password does not open it.
    #[test]
    fn the_key_file_opens_with_its_password_and_only_with_it() {
        let master = MasterKey::new();
        let (id, bytes) = build(&master, b"correct horse").expect("build");
        assert_eq!(id, Id::new(Sha256::digest(&bytes).into()), "named by its hash");
        let file: KeyFile = serde_json::from_slice(&bytes).expect("a key file");
        assert_eq!((file.kdf.as_str(), file.n, file.r, file.p), ("scrypt", 32768, 8, 3));
        let key = file.key_from_password(b"correct horse").expect("opens");
        let (encrypt, k, r) = key.to_keys();
        assert_eq!(encrypt, master.encrypt);
        assert_eq!((k, r), (master.mac.k.clone(), master.mac.r.clone()));
        assert!(file.key_from_password(b"wrong").is_err(), "another password opens it");
    }
}
