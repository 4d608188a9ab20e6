//! Who may read what: a JWT (HS256 with a shared secret, or RS256/ES256 with a public key)
//! whose `channels` claim lists exact channel names or prefixes ending in `*`, and whose
//! `exp` is enforced; or anonymous access, an explicit opt-in for development.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// How clients prove what they may read.
#[derive(Clone)]
pub enum Auth {
    /// No token needed; every channel readable.
    Anonymous,
    Jwt {
        key: DecodingKey,
        algorithm: Algorithm,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::Jwt { algorithm, .. } => write!(f, "Jwt({algorithm:?})"),
        }
    }
}

impl PartialEq for Auth {
    fn eq(&self, other: &Auth) -> bool {
        // Keys are not comparable; configurations with keys are never equal to each other.
        matches!((self, other), (Auth::Anonymous, Auth::Anonymous))
    }
}

impl Eq for Auth {}

impl Auth {
    /// HS256 with a shared secret.
    pub fn secret(secret: &[u8]) -> Result<Auth, String> {
        if secret.len() < 32 {
            return Err("must be at least 32 bytes (HS256 is only as strong as its secret)".into());
        }
        Ok(Auth::Jwt {
            key: DecodingKey::from_secret(secret),
            algorithm: Algorithm::HS256,
        })
    }

    /// RS256 (an RSA public key) or ES256 (a P-256 public key), in PEM.
    pub fn public_key(pem: &[u8]) -> Result<Auth, String> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Auth::Jwt {
                key,
                algorithm: Algorithm::RS256,
            });
        }
        match DecodingKey::from_ec_pem(pem) {
            Ok(key) => Ok(Auth::Jwt {
                key,
                algorithm: Algorithm::ES256,
            }),
            Err(_) => Err("not an RSA or EC (P-256) public key in PEM".into()),
        }
    }

    /// The channels `token` grants, or why it grants nothing.
    pub fn grants(&self, token: Option<&str>) -> Result<Grants, String> {
        let (key, algorithm) = match self {
            Auth::Anonymous => return Ok(Grants::All),
            Auth::Jwt { key, algorithm } => (key, *algorithm),
        };
        let token = token.ok_or("a token is required (?token=… or Authorization: Bearer …)")?;
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 30;
        #[derive(Deserialize)]
        struct Claims {
            channels: Vec<String>,
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| format!("invalid token: {e}"))?;
        Ok(Grants::Some(data.claims.channels))
    }
}

/// The channels a client may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grants {
    All,
    /// Exact names, or prefixes ending in `*`.
    Some(Vec<String>),
}

impl Grants {
    pub fn allows(&self, channel: &str) -> bool {
        match self {
            Grants::All => true,
            Grants::Some(list) => list.iter().any(|g| match g.strip_suffix('*') {
                Some(prefix) => channel.starts_with(prefix),
                None => g == channel,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn token(channels: &[&str], exp_from_now: i64, secret: &[u8]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = serde_json::json!({ "channels": channels, "exp": now + exp_from_now });
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn a_valid_token_grants_its_channels_exactly_or_by_prefix() {
        let auth = Auth::secret(SECRET).unwrap();
        let grants = auth
            .grants(Some(&token(&["resources/*", "live/orders"], 60, SECRET)))
            .unwrap();
        assert!(grants.allows("resources/posts"));
        assert!(grants.allows("live/orders"));
        assert!(!grants.allows("live/orders2"));
        assert!(!grants.allows("other/posts"));
    }

    #[test]
    fn missing_forged_and_expired_tokens_grant_nothing() {
        let auth = Auth::secret(SECRET).unwrap();
        assert!(auth.grants(None).unwrap_err().contains("required"));
        let forged = token(&["*"], 60, b"another secret of 32 bytes at least!");
        assert!(
            auth.grants(Some(&forged))
                .unwrap_err()
                .contains("InvalidSignature")
        );
        let expired = token(&["*"], -3600, SECRET);
        assert!(
            auth.grants(Some(&expired))
                .unwrap_err()
                .contains("ExpiredSignature")
        );
        assert!(auth.grants(Some("not.a.jwt")).is_err());
    }

    #[test]
    fn anonymous_grants_everything_and_short_secrets_are_refused() {
        assert!(Auth::Anonymous.grants(None).unwrap().allows("anything"));
        assert!(Auth::secret(b"short").is_err());
        assert!(Auth::public_key(b"-----BEGIN NONSENSE-----").is_err());
    }
}
