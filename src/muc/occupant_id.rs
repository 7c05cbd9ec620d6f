//! XEP-0421 anonymous unique occupant identifiers: `HMAC-SHA256(room secret, real bare JID)`,
//! base64. Stable for one user in one room (across nick changes, devices and, for
//! persistent rooms whose secret is stored, restarts), unlinkable across rooms, and revealing
//! nothing about the real JID.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub fn occupant_id(secret: &[u8; 32], real_bare: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new(); // unreachable: HMAC accepts any key length
    };
    mac.update(real_bare.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The `<occupant-id/>` element as spliced into stanzas.
pub fn element(id: &str) -> String {
    format!(
        "<occupant-id xmlns='{}' id='{}'/>",
        super::NS_OCCUPANT_ID,
        crate::xml::escape(id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_per_room_and_user_distinct_otherwise() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(occupant_id(&a, "u@x"), occupant_id(&a, "u@x"));
        assert_ne!(occupant_id(&a, "u@x"), occupant_id(&a, "v@x"));
        assert_ne!(occupant_id(&a, "u@x"), occupant_id(&b, "u@x"));
        assert!(!occupant_id(&a, "u@x").contains("u@x"));
    }
}
