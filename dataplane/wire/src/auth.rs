//! Challenge-response authentication of the handshake. The password never crosses the wire:
//! the client proves knowledge of a key derived from it with an HMAC over both nonces.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The key both sides hold: derived from user and password, stored by the cluster (not the
/// password itself). Equivalent to a password for this protocol, so it is kept protected.
pub fn password_key(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"brickd-password-v1\0");
    h.update(user.as_bytes());
    h.update(b"\0");
    h.update(password.as_bytes());
    h.finalize().into()
}

fn mac(
    key: &[u8; 32],
    user: &str,
    client_nonce: &[u8; 16],
    server_nonce: &[u8; 16],
) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac accepts any key length");
    mac.update(b"brickd-auth-v1\0");
    mac.update(user.as_bytes());
    mac.update(b"\0");
    mac.update(client_nonce);
    mac.update(server_nonce);
    mac
}

pub fn proof(
    key: &[u8; 32],
    user: &str,
    client_nonce: &[u8; 16],
    server_nonce: &[u8; 16],
) -> [u8; 32] {
    mac(key, user, client_nonce, server_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time comparison of a received proof against the expected one.
pub fn verify(
    key: &[u8; 32],
    user: &str,
    client_nonce: &[u8; 16],
    server_nonce: &[u8; 16],
    received: &[u8; 32],
) -> bool {
    mac(key, user, client_nonce, server_nonce)
        .verify_slice(received)
        .is_ok()
}

/// Constant-time comparison of two password keys (in-process connections present the key
/// itself instead of a proof).
pub fn keys_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Bytes `seal` adds to a secret: the nonce in front, the GCM tag behind.
pub const SEAL_OVERHEAD_BYTES: usize = SEAL_NONCE_BYTES + 16;
pub const SEAL_NONCE_BYTES: usize = 12;

/// AES-256-GCM key for one use (`purpose`) of a 32-byte secret, so that one secret never
/// encrypts under two meanings.
fn seal_key(secret: &[u8; 32], purpose: &str) -> aes_gcm::Key<aes_gcm::Aes256Gcm> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("hmac accepts any key length");
    mac.update(b"brickd-seal-v1\0");
    mac.update(purpose.as_bytes());
    let bytes: [u8; 32] = mac.finalize().into_bytes().into();
    bytes.into()
}

/// Encrypts and authenticates `plaintext` under `secret` for `purpose`: nonce ‖ ciphertext ‖
/// tag. `nonce` must never repeat for the same secret and purpose (callers draw it at random).
/// Used for user passwords the SMB gateway needs: at rest under the cluster's seal key, and in
/// transit under the password key of the user the management request runs as.
pub fn seal(
    secret: &[u8; 32],
    purpose: &str,
    nonce: [u8; SEAL_NONCE_BYTES],
    plaintext: &[u8],
) -> Vec<u8> {
    use aes_gcm::aead::{Aead, KeyInit};
    let cipher = aes_gcm::Aes256Gcm::new(&seal_key(secret, purpose));
    let sealed = cipher
        .encrypt(&nonce.into(), plaintext)
        .expect("AES-GCM encrypts any input below 64 GiB");
    let mut out = Vec::with_capacity(SEAL_NONCE_BYTES + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// The plaintext `seal` sealed, or `None` if `sealed` is too short, was sealed under another
/// secret or purpose, or was altered.
pub fn open_sealed(secret: &[u8; 32], purpose: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    use aes_gcm::aead::{Aead, KeyInit};
    if sealed.len() < SEAL_OVERHEAD_BYTES {
        return None;
    }
    let (nonce, body) = sealed.split_at(SEAL_NONCE_BYTES);
    let nonce: [u8; SEAL_NONCE_BYTES] = nonce.try_into().ok()?;
    let cipher = aes_gcm::Aes256Gcm::new(&seal_key(secret, purpose));
    cipher.decrypt(&nonce.into(), body).ok()
}
