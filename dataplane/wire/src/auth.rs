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
