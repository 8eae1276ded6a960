//! The cluster secret's challenge-response. Control sends a fresh random nonce on each link;
//! the node answers HMAC-SHA256(secret, domain ‖ nonce ‖ node id). The link is already
//! encrypted and control's certificate pinned, so the proof shows the node knows the secret
//! without the secret ever being sent, and a recorded proof is worthless on another link.

use hmac::{Hmac, KeyInit, Mac};
use sfu_proto::NodeId;
use sfu_proto::cluster::NONCE_LEN;
use sha2::Sha256;

/// Shortest cluster secret accepted (bytes). Shorter ones could be guessed offline from one
/// recorded proof, were TLS ever broken.
pub const MIN_SECRET_LEN: usize = 16;

const DOMAIN: &[u8] = b"sfu cluster registration v1\0";

/// A fresh challenge nonce.
pub fn challenge() -> [u8; NONCE_LEN] {
    rand::random()
}

/// The node's answer to `nonce`.
pub fn prove(secret: &[u8], nonce: &[u8; NONCE_LEN], node: &NodeId) -> [u8; NONCE_LEN] {
    mac(secret, nonce, node).finalize().into_bytes().into()
}

/// Whether `proof` answers `nonce` for `node` under `secret` (constant-time comparison).
pub fn verify(
    secret: &[u8],
    nonce: &[u8; NONCE_LEN],
    node: &NodeId,
    proof: &[u8; NONCE_LEN],
) -> bool {
    mac(secret, nonce, node).verify_slice(proof).is_ok()
}

const RELAY_DOMAIN: &[u8] = b"sfu relay link token v1\0";

/// The token that introduces node `relay` to node `origin` for a relay link
/// (docs/cascade.md): HMAC-SHA256(secret, domain ‖ relay ‖ 0 ‖ origin). Every control
/// instance sharing the cluster secret, and a restarted one, derives the same token for a
/// pair, so a link opened on one instance's word is accepted on another's.
pub fn relay_link_token(secret: &[u8], relay: &NodeId, origin: &NodeId) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(RELAY_DOMAIN);
    // Node ids never contain a zero byte, so the pair is unambiguous.
    mac.update(relay.as_str().as_bytes());
    mac.update(&[0]);
    mac.update(origin.as_str().as_bytes());
    mac.finalize().into_bytes().into()
}

fn mac(secret: &[u8], nonce: &[u8; NONCE_LEN], node: &NodeId) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(DOMAIN);
    mac.update(nonce);
    mac.update(node.as_str().as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        name.parse().expect("valid node id")
    }

    #[test]
    fn a_relay_token_depends_on_the_secret_and_the_ordered_pair() {
        let secret = b"0123456789abcdef-cluster";
        let t = relay_link_token(secret, &node("a"), &node("b"));
        assert_eq!(t, relay_link_token(secret, &node("a"), &node("b")));
        assert_ne!(t, relay_link_token(secret, &node("b"), &node("a")));
        assert_ne!(
            relay_link_token(secret, &node("a"), &node("bc")),
            relay_link_token(secret, &node("ab"), &node("c"))
        );
        assert_ne!(
            t,
            relay_link_token(b"another secret, 16+", &node("a"), &node("b"))
        );
    }

    #[test]
    fn a_proof_checks_only_with_the_same_secret_nonce_and_node() {
        let secret = b"0123456789abcdef-cluster";
        let nonce = [7u8; NONCE_LEN];
        let proof = prove(secret, &nonce, &node("a"));
        assert!(verify(secret, &nonce, &node("a"), &proof));
        assert!(!verify(b"another secret..", &nonce, &node("a"), &proof));
        assert!(!verify(secret, &[8u8; NONCE_LEN], &node("a"), &proof));
        assert!(!verify(secret, &nonce, &node("b"), &proof));
        let mut flipped = proof;
        flipped[0] ^= 1;
        assert!(!verify(secret, &nonce, &node("a"), &flipped));
    }

    #[test]
    fn challenges_differ() {
        assert_ne!(challenge(), challenge());
    }
}
