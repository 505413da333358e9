//! Who is calling: signed tokens (JWT, HS256, with expiry) that name one room, one participant and
//! a role, and the admin key that creates rooms.
//!
//! Rooms and people live nowhere but in the tokens: any replica holding the signing key can check
//! any token, so no replica keeps state that another one needs. An invite token can do one thing
//! only: be exchanged for a guest token with a participant id of its own, so that every guest who
//! opens the same link records under a different key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

const ISSUER: &str = "mixdown";

/// What a token lets its holder do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Starts and stops recordings, invites people.
    Host,
    /// Records and uploads their own track, hears the room's events.
    Guest,
    /// An invite link: may only be exchanged for a guest token.
    Invite,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Guest => "guest",
            Role::Invite => "invite",
        }
    }
}

/// The verified contents of a token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The participant id (for an invite: the id of the host who made it).
    pub sub: String,
    pub room: String,
    pub role: Role,
    /// Display name, shown to the room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
}

impl Claims {
    pub fn participant(&self) -> &str {
        &self.sub
    }

    /// Refuses anyone but a host (or an invite, or a guest: a role the operation does not allow).
    pub fn require(&self, role: Role, action: &str) -> Result<(), ApiError> {
        if self.role == role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "only a {} may {action}; this token is a {}'s",
                role.as_str(),
                self.role.as_str()
            )))
        }
    }

    /// Refuses an invite token for anything but joining.
    pub fn require_member(&self) -> Result<(), ApiError> {
        if self.role == Role::Invite {
            return Err(ApiError::Forbidden(
                "an invite token can only be exchanged for a participant token (POST /api/join)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Signs and checks tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn new(key: &[u8], ttl: Duration) -> Tokens {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        // Replicas on different nodes may disagree on the time by a little.
        validation.leeway = 5;
        Tokens {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            ttl,
        }
    }

    /// A token for `participant` in `room`, valid for the configured lifetime.
    pub fn issue(&self, room: &str, participant: &str, role: Role, name: Option<&str>) -> String {
        self.issue_for(room, participant, role, name, self.ttl)
    }

    /// A token valid for `ttl` (tests make expired ones with a lifetime of zero).
    pub fn issue_for(
        &self,
        room: &str,
        participant: &str,
        role: Role,
        name: Option<&str>,
        ttl: Duration,
    ) -> String {
        let now = now_secs();
        let claims = Claims {
            sub: participant.to_string(),
            room: room.to_string(),
            role,
            name: name.map(str::to_string),
            iss: ISSUER.to_string(),
            iat: now,
            exp: now + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// The claims of a valid token, or why it is not one.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                ApiError::Unauthenticated(match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                    ErrorKind::InvalidSignature => {
                        "the token's signature is not valid (forged, or signed with another key)"
                            .to_string()
                    }
                    _ => format!("the token is not valid: {e}"),
                })
            })?;
        let claims = data.claims;
        if !mixdown_crds::is_valid_id(&claims.room) || !mixdown_crds::is_valid_id(&claims.sub) {
            return Err(ApiError::Unauthenticated(
                "the token names an invalid room or participant".into(),
            ));
        }
        Ok(claims)
    }

    /// The claims of an `Authorization: Bearer` header value.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Claims, ApiError> {
        let header = header.ok_or_else(|| {
            ApiError::Unauthenticated("no token: send `Authorization: Bearer <token>`".into())
        })?;
        let token = bearer(header).ok_or_else(|| {
            ApiError::Unauthenticated("the Authorization header must be `Bearer <token>`".into())
        })?;
        self.verify(token)
    }
}

/// The token of a `Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares the admin key in constant time.
pub fn check_admin(expected: &str, header: Option<&str>) -> Result<(), ApiError> {
    let given = header.and_then(bearer).ok_or_else(|| {
        ApiError::Unauthenticated(
            "creating a room needs `Authorization: Bearer <admin key>`".into(),
        )
    })?;
    // Comparing MACs of both keys takes the same time wherever they differ.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"mixdown-admin-key-check");
    let expected = ring::hmac::sign(&key, expected.as_bytes());
    ring::hmac::verify(&key, given.as_bytes(), expected.as_ref())
        .map_err(|_| ApiError::Unauthenticated("the admin key is wrong".into()))
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(&[7u8; 32], Duration::from_secs(3600))
    }

    #[test]
    fn a_token_round_trips_and_names_room_participant_and_role() {
        let t = tokens();
        let claims = t
            .verify(&t.issue("room-1", "alice", Role::Host, Some("Alice")))
            .expect("valid");
        assert_eq!(
            (claims.room.as_str(), claims.participant(), claims.role),
            ("room-1", "alice", Role::Host)
        );
        assert!(claims.require(Role::Host, "stop").is_ok());
        let guest = t
            .verify(&t.issue("room-1", "bob", Role::Guest, None))
            .expect("valid");
        let err = guest.require(Role::Host, "stop a recording").unwrap_err();
        assert!(err.to_string().contains("only a host"), "{err}");
    }

    #[test]
    fn expired_forged_and_garbage_tokens_are_refused_with_the_reason() {
        let t = tokens();
        let expired = t.issue_for("r", "p", Role::Guest, None, Duration::ZERO);
        // Past the leeway.
        let mut claims: Claims = serde_json::from_value(serde_json::json!({
            "sub": "p", "room": "r", "role": "guest", "iss": "mixdown", "iat": 0, "exp": 10
        }))
        .expect("claims");
        claims.exp = now_secs() - 60;
        let long_expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&[7u8; 32]),
        )
        .expect("encode");
        assert!(t.verify(&expired).is_ok(), "within the leeway");
        assert!(
            t.verify(&long_expired)
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
        let forged =
            Tokens::new(&[8u8; 32], Duration::from_secs(60)).issue("r", "p", Role::Host, None);
        assert!(
            t.verify(&forged)
                .unwrap_err()
                .to_string()
                .contains("signature")
        );
        assert!(t.verify("not.a.token").is_err());
        assert!(
            t.verify_header(None)
                .unwrap_err()
                .to_string()
                .contains("Bearer")
        );
        assert!(t.verify_header(Some("Basic abc")).is_err());
    }

    #[test]
    fn the_admin_key_is_checked() {
        assert!(
            check_admin(
                "k".repeat(16).as_str(),
                Some(&format!("Bearer {}", "k".repeat(16)))
            )
            .is_ok()
        );
        assert!(check_admin("right-key-right-key", Some("Bearer wrong")).is_err());
        assert!(check_admin("right-key-right-key", None).is_err());
    }
}
