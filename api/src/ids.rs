//! One validator for every id that reaches a storage key or a resource name: the CRD's own
//! pattern (`[A-Za-z0-9_-]{1,64}`, from `crds`), checked before anything else happens.

use crate::error::ApiError;

/// `id` if it is a valid room, recording or participant id; otherwise an error naming `what`.
pub fn check<'a>(what: &str, id: &'a str) -> Result<&'a str, ApiError> {
    if mixdown_crds::is_valid_id(id) {
        Ok(id)
    } else {
        let shown: String = id.chars().take(80).collect();
        Err(ApiError::bad_request(format!(
            "{what} {shown:?} is not valid: use 1 to 64 letters, digits, `_` or `-` (pattern {})",
            mixdown_crds::ID_PATTERN
        )))
    }
}

/// A fresh recording id: 20 lowercase hex characters, time-ordered (milliseconds since the epoch,
/// then 32 random bits), so listings sort by age. Short, because ids go into every object key.
pub fn mint() -> String {
    let millis = jiff::Timestamp::now().as_millisecond().max(0);
    format!("{millis:012x}{}", &random_hex()[..8])
}

/// A fresh room id: 16 random lowercase hex characters.
pub fn mint_room() -> String {
    random_hex()[..16].to_string()
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A fresh participant id for a guest: `g-` and 16 random hex characters.
pub fn mint_participant() -> String {
    format!("g-{}", &random_hex()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_against_the_crd_pattern() {
        assert!(check("recording id", "rec_1-A").is_ok());
        for bad in ["", "a/b", "..", "../x", "a b", "é", &"x".repeat(65)] {
            let err = check("recording id", bad).unwrap_err();
            assert!(err.to_string().starts_with("recording id"), "{err}");
        }
        assert!(mixdown_crds::is_valid_id(&mint()) && mint().len() == 20);
        assert!(mixdown_crds::is_valid_id(&mint_room()));
        assert!(
            mint() < {
                std::thread::sleep(std::time::Duration::from_millis(2));
                mint()
            }
        );
        assert!(mixdown_crds::is_valid_id(&mint_participant()));
        assert_ne!(mint(), mint());
    }
}
