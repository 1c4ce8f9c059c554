//! Who may use which store: JWTs signed with a shared secret (HS256)
//! whose `stores` claim names the stores they cover (`*`: all).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::LogError;

/// The claims of a log token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// The stores it covers; `*` covers all.
    pub stores: Vec<String>,
}

/// What a connection may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every store.
    All,
    /// These stores only.
    Stores(Vec<String>),
}

impl Scope {
    /// Whether store `store` is covered.
    pub fn allows(&self, store: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Stores(names) => names.iter().any(|n| n == store),
        }
    }
}

/// A token for `subject` covering `stores` (`*`: all), valid for `ttl`.
///
/// # Errors
/// When signing fails.
pub fn issue(
    secret: &[u8],
    subject: &str,
    stores: &[String],
    ttl: Duration,
) -> Result<String, LogError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        sub: subject.to_string(),
        exp: now.saturating_add(ttl.as_secs()),
        stores: stores.to_vec(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| LogError::Unauthorized(format!("signing a token: {e}")))
}

/// The scope of `token`, checked against `secret`.
///
/// # Errors
/// [`LogError::Unauthorized`]: a bad signature, expired, malformed.
pub fn verify(secret: &[u8], token: &str) -> Result<Scope, LogError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp"]);
    let data =
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
            .map_err(|e| LogError::Unauthorized(format!("invalid token: {e}")))?;
    let stores = data.claims.stores;
    Ok(if stores.iter().any(|s| s == "*") {
        Scope::All
    } else {
        Scope::Stores(stores)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_their_scope_and_need_the_secret() {
        let token = issue(
            b"s3cret",
            "alice",
            &["orders".into()],
            Duration::from_secs(60),
        )
        .expect("issue");
        let scope = verify(b"s3cret", &token).expect("verify");
        assert!(scope.allows("orders"));
        assert!(!scope.allows("payments"));
        assert!(matches!(
            verify(b"other", &token),
            Err(LogError::Unauthorized(_))
        ));
        let all = issue(b"s3cret", "ops", &["*".into()], Duration::from_secs(60)).expect("issue");
        assert_eq!(verify(b"s3cret", &all).expect("verify"), Scope::All);
    }
}
