//! XEP-0220 server dialback, and the XEP-0185 key scheme.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const NS_DIALBACK: &str = "jabber:server:dialback";
/// Stream feature advertising dialback (XEP-0220 §2.1).
pub const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";

/// XEP-0185 §3: key = HEX( HMAC-SHA256( HEX(SHA256(secret)), "receiving originating id" ) ).
/// Any server that knows `secret` can check a key without state, which is what lets the
/// authoritative server answer `db:verify` on another connection.
pub fn key(secret: &[u8], receiving: &str, originating: &str, stream_id: &str) -> String {
    let hashed = hex(&Sha256::digest(secret));
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(hashed.as_bytes()) else {
        return String::new(); // unreachable: HMAC accepts any key length
    };
    mac.update(receiving.as_bytes());
    mac.update(b" ");
    mac.update(originating.as_bytes());
    mac.update(b" ");
    mac.update(stream_id.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of XEP-0220 §2.1.1 (secret "s3cr3tf0rd14lb4ck", receiving
    /// montague.example, originating capulet.example, stream ID D60000229F).
    #[test]
    fn xep0220_example_key() {
        assert_eq!(
            key(
                b"s3cr3tf0rd14lb4ck",
                "montague.example",
                "capulet.example",
                "D60000229F"
            ),
            "b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3"
        );
    }
}
