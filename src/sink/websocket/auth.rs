//! Who may read what, and until when: a JWT (HS256 with a shared secret, or RS256/ES256 with a
//! public key) whose `channels` claim lists exact channel names or prefixes ending in a whole
//! `*` segment (`resources/*`), whose `exp` is required and `nbf`, `aud` and `iss` checked; or
//! anonymous access, an explicit opt-in. The key's kind is checked when the configuration is
//! loaded, so a key that could verify no token never gets as far as a client.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls::pki_types::pem::{PemObject, SectionKind};
use serde::Deserialize;
use x509_cert::der::asn1::{ObjectIdentifier, UintRef};
use x509_cert::der::{Decode, Reader, SliceReader};
use x509_cert::spki::SubjectPublicKeyInfoRef;

/// How long after `exp` (and before `nbf`) a token is still accepted: clock skew between the
/// application that signs tokens and pglive.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// RS256 verification accepts RSA moduli of this many bits (as the `ring` verifier does).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// How clients prove what they may read.
#[derive(Clone)]
pub enum Auth {
    /// No token needed; every channel readable.
    Anonymous,
    Jwt {
        key: DecodingKey,
        algorithm: Algorithm,
        /// Required `aud` (one of the token's audiences must be it); none: `aud` is ignored.
        audience: Option<String>,
        /// Required `iss`; none: `iss` is ignored.
        issuer: Option<String>,
        leeway: Duration,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::Jwt {
                algorithm,
                audience,
                issuer,
                leeway,
                ..
            } => f
                .debug_struct("Jwt")
                .field("algorithm", algorithm)
                .field("audience", audience)
                .field("issuer", issuer)
                .field("leeway", leeway)
                .finish_non_exhaustive(),
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

/// What an accepted token (or anonymous access) allows: the channels, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub grants: Grants,
    /// When the token stops being accepted (`exp` plus the leeway); none for anonymous access.
    pub expires: Option<SystemTime>,
}

/// Why a token allows nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No token, or one that is forged, expired, not yet valid, or meant for someone else:
    /// the client's problem.
    #[error("{0}")]
    Token(String),
    /// A validly signed token whose `channels` claim is malformed: the problem of whoever
    /// issues the tokens, which the log must show.
    #[error("{0}")]
    Grant(String),
}

impl Refused {
    pub fn log(&self) {
        match self {
            Refused::Token(why) => tracing::debug!(reason = %why, "token refused"),
            Refused::Grant(why) => tracing::error!(reason = %why,
                "a validly signed token was refused for its grants; fix the channels claim the application puts in tokens"),
        }
    }
}

impl Auth {
    fn jwt(key: DecodingKey, algorithm: Algorithm) -> Auth {
        Auth::Jwt {
            key,
            algorithm,
            audience: None,
            issuer: None,
            leeway: DEFAULT_LEEWAY,
        }
    }

    /// HS256 with a shared secret.
    pub fn secret(secret: &[u8]) -> Result<Auth, String> {
        if secret.len() < 32 {
            return Err("must be at least 32 bytes (HS256 is only as strong as its secret)".into());
        }
        Ok(Auth::jwt(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
        ))
    }

    /// RS256 (an RSA public key of 2048 to 8192 bits) or ES256 (a P-256 public key), in PEM.
    /// Anything else — a private key, a certificate, another curve, a short RSA key — is
    /// refused with the reason, since it could verify no token.
    pub fn public_key(pem: &[u8]) -> Result<Auth, String> {
        let algorithm = public_key_algorithm(pem)?;
        let key = match algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
            _ => DecodingKey::from_ec_pem(pem),
        }
        .map_err(|e| format!("cannot load the public key: {e}"))?;
        Ok(Auth::jwt(key, algorithm))
    }

    /// The same authentication, also requiring `aud` / `iss` when given, with `leeway`.
    pub fn with_claims(
        self,
        audience: Option<String>,
        issuer: Option<String>,
        leeway: Duration,
    ) -> Auth {
        match self {
            Auth::Anonymous => Auth::Anonymous,
            Auth::Jwt { key, algorithm, .. } => Auth::Jwt {
                key,
                algorithm,
                audience,
                issuer,
                leeway,
            },
        }
    }

    /// What `token` allows, or why it allows nothing.
    pub fn authorize(&self, token: Option<&str>) -> Result<Access, Refused> {
        let Auth::Jwt {
            key,
            algorithm,
            audience,
            issuer,
            leeway,
        } = self
        else {
            return Ok(Access {
                grants: Grants::All,
                expires: None,
            });
        };
        let token = token.ok_or_else(|| {
            Refused::Token("a token is required (?token=… or Authorization: Bearer …)".into())
        })?;
        let mut validation = Validation::new(*algorithm);
        let mut required = vec!["exp"];
        validation.validate_nbf = true;
        validation.leeway = leeway.as_secs();
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // Without a configured audience a token's `aud` says nothing to this relay.
            None => validation.validate_aud = false,
        }
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        #[derive(Deserialize)]
        struct Claims {
            channels: Vec<String>,
            exp: f64,
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| Refused::Token(format!("invalid token: {e}")))?;
        let grants = Grants::parse(data.claims.channels).map_err(Refused::Grant)?;
        // `exp` was validated: a finite number of seconds no earlier than now minus the leeway.
        let exp = Duration::try_from_secs_f64(data.claims.exp.max(0.0)).unwrap_or(Duration::MAX);
        let expires = UNIX_EPOCH
            .checked_add(exp.saturating_add(*leeway))
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(100 * 365 * 86_400));
        Ok(Access {
            grants,
            expires: Some(expires),
        })
    }
}

/// The JWT algorithm a PEM public key verifies, after checking that it is one pglive can use.
fn public_key_algorithm(pem: &[u8]) -> Result<Algorithm, String> {
    let text = String::from_utf8_lossy(pem);
    // PKCS#1 (`openssl rsa -RSAPublicKey_out`), which the PEM reader below does not list.
    if text.contains("-----BEGIN RSA PUBLIC KEY-----") {
        let der = pkcs1_der(&text)?;
        check_rsa_size(&der)?;
        return Ok(Algorithm::RS256);
    }
    let mut keys = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(|e| format!("not a PEM file: {e}"))?;
        match kind {
            SectionKind::PublicKey => keys.push(der),
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                return Err("holds a private key; give the public key only \
                     (openssl pkey -in PRIVATE.pem -pubout -out public.pem), and keep the \
                     private key with the application that signs tokens"
                    .into());
            }
            SectionKind::Certificate => {
                return Err("holds a certificate; give its public key \
                     (openssl x509 -in CERT.pem -pubkey -noout > public.pem)"
                    .into());
            }
            _ => {}
        }
    }
    let der = match keys.as_slice() {
        [one] => one,
        [] => return Err("no public key in PEM (-----BEGIN PUBLIC KEY-----) found".into()),
        _ => return Err("holds several public keys; give exactly one".into()),
    };
    let spki = SubjectPublicKeyInfoRef::from_der(der)
        .map_err(|e| format!("not a valid public key: {e}"))?;
    let oid = spki.algorithm.oid;
    if oid == RSA_ENCRYPTION {
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or("not a valid RSA public key")?;
        check_rsa_size(bits)?;
        Ok(Algorithm::RS256)
    } else if oid == EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or("an EC key without a named curve; ES256 needs a P-256 key")?;
        match curve {
            P256 => Ok(Algorithm::ES256),
            P384 => {
                Err("an EC key on curve P-384; ES256 tokens need a P-256 (prime256v1) key".into())
            }
            P521 => {
                Err("an EC key on curve P-521; ES256 tokens need a P-256 (prime256v1) key".into())
            }
            other => Err(format!(
                "an EC key on curve {other}; ES256 tokens need a P-256 (prime256v1) key"
            )),
        }
    } else if oid == ED25519 {
        Err("an Ed25519 key; use an RSA (RS256) or P-256 (ES256) key".into())
    } else {
        Err(format!(
            "a public key of algorithm {oid}; use an RSA (RS256) or P-256 (ES256) key"
        ))
    }
}

/// The DER inside a `-----BEGIN RSA PUBLIC KEY-----` block.
fn pkcs1_der(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let body: String = text
        .split("-----BEGIN RSA PUBLIC KEY-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END RSA PUBLIC KEY-----").next())
        .ok_or("an RSA PUBLIC KEY block without its END line")?
        .split_whitespace()
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "an RSA PUBLIC KEY block that is not valid base64".into())
}

/// Checks an RSAPublicKey (PKCS#1: a sequence of modulus and exponent) for RS256's key sizes.
fn check_rsa_size(der: &[u8]) -> Result<(), String> {
    let invalid = |_| "not a valid RSA public key".to_owned();
    let mut reader = SliceReader::new(der).map_err(invalid)?;
    let bits = reader
        .sequence(|r| {
            let modulus = UintRef::decode(r)?;
            UintRef::decode(r)?;
            let bytes = modulus.as_bytes();
            let top = bytes.first().map_or(0, |b| 8 - b.leading_zeros() as usize);
            Ok(bytes.len().saturating_sub(1) * 8 + top)
        })
        .map_err(invalid)?;
    if RSA_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(format!(
            "an RSA key of {bits} bits; RS256 needs {} to {} bits",
            RSA_BITS.start(),
            RSA_BITS.end()
        ))
    }
}

/// The channels a client may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grants {
    All,
    /// Exact names, and prefixes (`resources/`, from the grant `resources/*`) that cover every
    /// channel below them.
    Some {
        exact: Vec<String>,
        prefixes: Vec<String>,
    },
}

impl Grants {
    /// Reads a token's `channels` claim. `*` may only be a whole last segment (`resources/*`)
    /// or the whole grant (`*`, every channel): `resources/post*` would also grant
    /// `resources/posts_private`, so it is refused rather than guessed at.
    pub fn parse(list: Vec<String>) -> Result<Grants, String> {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for grant in list {
            if grant == "*" {
                return Ok(Grants::All);
            }
            match grant.strip_suffix("/*") {
                Some(prefix) if !prefix.is_empty() && !prefix.contains('*') => {
                    prefixes.push(format!("{prefix}/"))
                }
                _ if grant.contains('*') => {
                    return Err(format!(
                        "invalid token: the grant {grant:?} uses `*` other than as a whole last \
                         segment (`resources/*`) or alone (`*`)"
                    ));
                }
                _ if grant.is_empty() => {
                    return Err("invalid token: an empty grant in `channels`".into());
                }
                _ => exact.push(grant),
            }
        }
        Ok(Grants::Some { exact, prefixes })
    }

    pub fn allows(&self, channel: &str) -> bool {
        match self {
            Grants::All => true,
            Grants::Some { exact, prefixes } => {
                exact.iter().any(|g| g == channel)
                    || prefixes
                        .iter()
                        .any(|p| channel.len() > p.len() && channel.starts_with(p.as_str()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn sign(claims: Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn token(channels: &[&str], exp_from_now: i64, secret: &[u8]) -> String {
        sign(
            json!({ "channels": channels, "exp": now() + exp_from_now }),
            secret,
        )
    }

    fn grants(list: &[&str]) -> Result<Grants, String> {
        Grants::parse(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_valid_token_grants_its_channels_exactly_or_by_whole_segment() {
        let auth = Auth::secret(SECRET).unwrap();
        let access = auth
            .authorize(Some(&token(&["resources/*", "live/orders"], 60, SECRET)))
            .unwrap();
        let g = access.grants;
        assert!(g.allows("resources/posts"));
        assert!(g.allows("resources/posts/1"));
        assert!(
            !g.allows("resources"),
            "the prefix itself is no channel below it"
        );
        assert!(!g.allows("resources/"));
        assert!(g.allows("live/orders"));
        assert!(!g.allows("live/orders2"));
        assert!(!g.allows("other/posts"));
        let expires = access.expires.unwrap();
        let exp = expires.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert_eq!(exp, now() + 60 + 30, "exp plus the default leeway");
        assert_eq!(grants(&["x", "*"]), Ok(Grants::All));
    }

    #[test]
    fn a_star_inside_a_segment_is_refused_not_guessed() {
        for bad in [
            "resources/post*",
            "res*/posts",
            "*/posts",
            "resources/**",
            "/*",
        ] {
            let err = grants(&["resources/posts", bad]).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
        let auth = Auth::secret(SECRET).unwrap();
        let err = auth
            .authorize(Some(&token(&["resources/post*"], 60, SECRET)))
            .unwrap_err();
        assert!(
            matches!(&err, Refused::Grant(why) if why.contains("resources/post*")),
            "{err}"
        );
    }

    #[test]
    fn missing_forged_expired_and_premature_tokens_grant_nothing() {
        let auth = Auth::secret(SECRET).unwrap();
        let refusal = |t: Option<&str>| match auth.authorize(t) {
            Err(Refused::Token(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(refusal(None).contains("required"));
        let forged = token(&["*"], 60, b"another secret of 32 bytes at least!");
        assert!(refusal(Some(&forged)).contains("InvalidSignature"));
        let expired = token(&["*"], -3600, SECRET);
        assert!(refusal(Some(&expired)).contains("ExpiredSignature"));
        let premature = sign(
            json!({"channels": ["*"], "exp": now() + 3600, "nbf": now() + 600}),
            SECRET,
        );
        assert!(refusal(Some(&premature)).contains("ImmatureSignature"));
        let started = sign(
            json!({"channels": ["*"], "exp": now() + 3600, "nbf": now() - 5}),
            SECRET,
        );
        assert!(auth.authorize(Some(&started)).is_ok());
        let no_exp = sign(json!({"channels": ["*"]}), SECRET);
        assert!(refusal(Some(&no_exp)).contains("exp"));
        assert!(auth.authorize(Some("not.a.jwt")).is_err());
    }

    #[test]
    fn audience_and_issuer_are_checked_only_when_configured() {
        let claims = |extra: Value| {
            let mut c = json!({"channels": ["*"], "exp": now() + 60});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            sign(c, SECRET)
        };
        let open = Auth::secret(SECRET).unwrap();
        assert!(
            open.authorize(Some(&claims(json!({"aud": "someone", "iss": "x"}))))
                .is_ok(),
            "a token's aud is no reason to refuse it when none is configured"
        );
        let strict = Auth::secret(SECRET).unwrap().with_claims(
            Some("pglive".into()),
            Some("https://auth.example".into()),
            DEFAULT_LEEWAY,
        );
        let both = json!({"aud": "pglive", "iss": "https://auth.example"});
        assert!(strict.authorize(Some(&claims(both))).is_ok());
        let list = json!({"aud": ["other", "pglive"], "iss": "https://auth.example"});
        assert!(strict.authorize(Some(&claims(list))).is_ok());
        for (bad, why) in [
            (
                json!({"aud": "other", "iss": "https://auth.example"}),
                "InvalidAudience",
            ),
            (json!({"iss": "https://auth.example"}), "aud"),
            (
                json!({"aud": "pglive", "iss": "https://evil.example"}),
                "InvalidIssuer",
            ),
            (json!({"aud": "pglive"}), "iss"),
        ] {
            let err = strict
                .authorize(Some(&claims(bad.clone())))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn anonymous_grants_everything_forever_and_short_secrets_are_refused() {
        let access = Auth::Anonymous.authorize(None).unwrap();
        assert!(access.grants.allows("anything"));
        assert_eq!(access.expires, None);
        assert!(Auth::secret(b"short").is_err());
        assert!(Auth::public_key(b"-----BEGIN NONSENSE-----").is_err());
    }

    /// Runs openssl to make keys of each kind.
    fn openssl(dir: &std::path::Path, name: &str, script: &str) -> Vec<u8> {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl: {script}");
        std::fs::read(dir.join(name)).unwrap()
    }

    #[test]
    fn public_keys_of_the_wrong_kind_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let genkey = |name: &str, args: &str| {
            openssl(
                d,
                name,
                &format!("openssl genpkey {args} -out {name} 2>/dev/null"),
            )
        };
        let pubkey = |private: &str, name: &str| {
            openssl(
                d,
                name,
                &format!("openssl pkey -in {private} -pubout -out {name} 2>/dev/null"),
            )
        };
        genkey("rsa.key", "-algorithm RSA -pkeyopt rsa_keygen_bits:2048");
        genkey("p256.key", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256");
        genkey("p384.key", "-algorithm EC -pkeyopt ec_paramgen_curve:P-384");
        genkey("ed.key", "-algorithm ED25519");
        genkey(
            "rsa1024.key",
            "-algorithm RSA -pkeyopt rsa_keygen_bits:1024",
        );

        let ok = |pem: Vec<u8>, alg: Algorithm| match Auth::public_key(&pem) {
            Ok(Auth::Jwt { algorithm, .. }) => assert_eq!(algorithm, alg),
            other => panic!("{alg:?}: {other:?}"),
        };
        ok(pubkey("rsa.key", "rsa.pub"), Algorithm::RS256);
        ok(pubkey("p256.key", "p256.pub"), Algorithm::ES256);
        let pkcs1 = openssl(
            d,
            "rsa1.pub",
            "openssl rsa -in rsa.key -RSAPublicKey_out -out rsa1.pub 2>/dev/null",
        );
        ok(pkcs1, Algorithm::RS256);

        let refused = |pem: Vec<u8>, why: &str| {
            let err = Auth::public_key(&pem).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        };
        refused(pubkey("p384.key", "p384.pub"), "P-384");
        refused(pubkey("ed.key", "ed.pub"), "Ed25519");
        refused(pubkey("rsa1024.key", "rsa1024.pub"), "1024 bits");
        refused(std::fs::read(d.join("rsa.key")).unwrap(), "private key");
        refused(std::fs::read(d.join("p256.key")).unwrap(), "private key");
        let sec1 = openssl(
            d,
            "sec1.key",
            "openssl ec -in p256.key -out sec1.key 2>/dev/null",
        );
        refused(sec1, "private key");
        let traditional = openssl(
            d,
            "trad.key",
            "openssl rsa -in rsa.key -traditional -out trad.key 2>/dev/null",
        );
        refused(traditional, "private key");
    }
}
