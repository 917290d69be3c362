//! Tokens for pinion's hub: who may publish and subscribe to what.
//!
//! A token is a JWT (RFC 7519) signed with **EdDSA** (Ed25519; the hub
//! holds only the public key) or **HS256** (a shared secret, for a single
//! hub), carrying an expiry and NATS-style permissions by topic prefix:
//!
//! ```json
//! {"sub": "alice", "iat": 1765152000, "exp": 1765155600,
//!  "pinion": {"pub": {"allow": ["orders."], "deny": ["orders.internal."]},
//!             "sub": {"allow": ["orders.", "prices."]},
//!             "admin": false}}
//! ```
//!
//! * A topic is allowed for an action when some `allow` prefix starts it
//!   and no `deny` prefix does (deny wins). `""` as a prefix means every
//!   topic. A missing list allows nothing.
//! * A subscription to a prefix is allowed when every topic it can match
//!   is: the subscription prefix must start with an `allow` prefix, and no
//!   `deny` prefix may start with it or start it (a deny inside the
//!   subscribed range would otherwise leak).
//! * `admin` opens the hub's dashboard, `/metrics` and `/stats`.
//!
//! [`Verifier::verify`] refuses, each with its own [`AuthError`]: a token
//! over [`MAX_TOKEN_LEN`] bytes (before any decoding), one that is not a
//! JWT, alg `none`, an algorithm the hub has no key for (so an HS256 token
//! is never checked against an EdDSA key's bytes), a bad signature (another
//! key), a missing or past `exp`, a future `nbf`.
//!
//! # Example
//!
//! ```
//! use pinion_auth::{Action, Keys, Permissions, Rules, Verifier};
//!
//! let keys = Keys::generate_ed25519().unwrap();
//! let perms = Permissions {
//!     publish: Rules::allow(["orders."]),
//!     subscribe: Rules::allow(["orders."]),
//!     admin: false,
//! };
//! let now = 1_765_152_000;
//! let token = keys.issue("alice", &perms, now, 3600).unwrap();
//!
//! let verifier = Verifier::new(vec![keys.verifying()]);
//! let claims = verifier.verify(&token, now + 10).unwrap();
//! assert_eq!(claims.sub.as_deref(), Some("alice"));
//! assert!(claims.permits(Action::Publish, b"orders.eu"));
//! assert!(!claims.permits(Action::Publish, b"prices.eu"));
//! assert!(verifier.verify(&token, now + 3601).is_err()); // expired
//! ```

use std::path::{Path, PathBuf};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The longest token accepted, in bytes; a longer one is refused before it
/// is decoded.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Most prefixes in one allow or deny list.
pub const MAX_PREFIXES: usize = 256;

/// Why a token was refused. Every case is the presenter's fault (a
/// credential that does not hold), except [`AuthError::Key`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token was presented where one is required.
    #[error("no token")]
    Missing,
    /// Over [`MAX_TOKEN_LEN`] bytes.
    #[error("token of {0} bytes is over the limit of {MAX_TOKEN_LEN}")]
    TooLarge(usize),
    /// Not a JWT (three base64url parts with a JSON header and claims), or
    /// claims pinion cannot read.
    #[error("malformed token")]
    Malformed,
    /// alg `none`: an unsigned token.
    #[error("unsigned token (alg none)")]
    Unsigned,
    /// Signed with an algorithm the hub has no key for.
    #[error("token algorithm {0} is not accepted here")]
    WrongAlgorithm(String),
    /// The signature does not verify with any of the hub's keys.
    #[error("bad token signature")]
    BadSignature,
    /// No `exp` claim: every token must expire.
    #[error("token has no expiry (exp)")]
    NoExpiry,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is still ahead.
    #[error("token not valid yet")]
    NotYetValid,
    /// Too many prefixes in a permission list.
    #[error("token has over {MAX_PREFIXES} prefixes in one list")]
    TooManyPrefixes,
    /// A key file or key that cannot be used (the operator's fault).
    #[error("key: {0}")]
    Key(String),
}

/// Allow and deny prefixes for one action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// Topic prefixes allowed (`""`: every topic).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Topic prefixes denied; deny wins over allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl Rules {
    /// Allows these prefixes.
    pub fn allow<I: IntoIterator<Item = S>, S: Into<String>>(prefixes: I) -> Rules {
        Rules {
            allow: prefixes.into_iter().map(Into::into).collect(),
            deny: Vec::new(),
        }
    }

    /// Also denies these prefixes.
    pub fn deny<I: IntoIterator<Item = S>, S: Into<String>>(mut self, prefixes: I) -> Rules {
        self.deny.extend(prefixes.into_iter().map(Into::into));
        self
    }

    /// `topic` is allowed: some allow prefix starts it, no deny prefix does.
    pub fn permits(&self, topic: &[u8]) -> bool {
        let starts = |p: &String| topic.starts_with(p.as_bytes());
        self.allow.iter().any(starts) && !self.deny.iter().any(starts)
    }

    /// Every topic starting with `prefix` is allowed: an allow prefix
    /// starts `prefix`, and no deny prefix overlaps it (starts it, or
    /// starts with it).
    pub fn permits_prefix(&self, prefix: &[u8]) -> bool {
        self.allow.iter().any(|p| prefix.starts_with(p.as_bytes()))
            && !self
                .deny
                .iter()
                .any(|d| prefix.starts_with(d.as_bytes()) || d.as_bytes().starts_with(prefix))
    }

    fn check(&self) -> Result<(), AuthError> {
        if self.allow.len() > MAX_PREFIXES || self.deny.len() > MAX_PREFIXES {
            return Err(AuthError::TooManyPrefixes);
        }
        Ok(())
    }
}

/// What a token lets its holder do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// Publishing.
    #[serde(default, rename = "pub")]
    pub publish: Rules,
    /// Subscribing.
    #[serde(default, rename = "sub")]
    pub subscribe: Rules,
    /// The hub's dashboard, `/metrics` and `/stats`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// An action a permission covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to a topic.
    Publish,
    /// Subscribe to a topic (or, with [`Claims::permits_prefix`], to every
    /// topic with a prefix).
    Subscribe,
}

/// A verified token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token names (free-form; shown in logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// pinion's permissions.
    #[serde(default)]
    pub pinion: Permissions,
}

impl Claims {
    /// `topic` is allowed for `action`.
    pub fn permits(&self, action: Action, topic: &[u8]) -> bool {
        match action {
            Action::Publish => self.pinion.publish.permits(topic),
            Action::Subscribe => self.pinion.subscribe.permits(topic),
        }
    }

    /// Every topic starting with `prefix` is allowed for `action`.
    pub fn permits_prefix(&self, action: Action, prefix: &[u8]) -> bool {
        match action {
            Action::Publish => self.pinion.publish.permits_prefix(prefix),
            Action::Subscribe => self.pinion.subscribe.permits_prefix(prefix),
        }
    }
}

/// A key that checks tokens.
#[derive(Clone)]
pub struct VerifyingKey {
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("alg", &self.alg)
            .finish()
    }
}

impl VerifyingKey {
    /// An Ed25519 public key (PEM, `BEGIN PUBLIC KEY`).
    ///
    /// # Errors
    ///
    /// [`AuthError::Key`] if it is not one.
    pub fn ed25519_pem(pem: &[u8]) -> Result<VerifyingKey, AuthError> {
        Ok(VerifyingKey {
            alg: Algorithm::EdDSA,
            key: DecodingKey::from_ed_pem(pem).map_err(|e| AuthError::Key(e.to_string()))?,
        })
    }

    /// An HS256 secret (at least 32 bytes).
    ///
    /// # Errors
    ///
    /// [`AuthError::Key`] for a shorter secret.
    pub fn hs256(secret: &[u8]) -> Result<VerifyingKey, AuthError> {
        if secret.len() < 32 {
            return Err(AuthError::Key(format!(
                "an HS256 secret needs at least 32 bytes, this one has {}",
                secret.len()
            )));
        }
        Ok(VerifyingKey {
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(secret).map_err(|e| AuthError::Key(e.to_string()))?,
        })
    }

    /// Reads a key file written by [`Keys::write`]: an Ed25519 public key
    /// (or private key: its public half is used) in PEM, or an HS256
    /// secret file.
    ///
    /// # Errors
    ///
    /// [`AuthError::Key`] for a file that cannot be read or used.
    pub fn from_file(path: &Path) -> Result<VerifyingKey, AuthError> {
        let text = read(path)?;
        if text.contains("BEGIN PRIVATE KEY") {
            return Ok(Keys::from_file(path)?.verifying());
        }
        if text.contains("BEGIN PUBLIC KEY") {
            return VerifyingKey::ed25519_pem(text.as_bytes());
        }
        VerifyingKey::hs256(&hs_secret(&text)?)
    }

    /// The algorithm it checks.
    pub fn algorithm(&self) -> &'static str {
        alg_name(self.alg)
    }
}

fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        _ => "other",
    }
}

fn read(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path)
        .map_err(|e| AuthError::Key(format!("cannot read {}: {e}", path.display())))
}

const HS_PREFIX: &str = "pinion-hs256:";

fn hs_secret(text: &str) -> Result<Vec<u8>, AuthError> {
    let b64 = text.trim().strip_prefix(HS_PREFIX).ok_or_else(|| {
        AuthError::Key(format!(
            "not a key file: expected a PEM Ed25519 key or a line `{HS_PREFIX}<base64>`"
        ))
    })?;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| AuthError::Key(format!("HS256 secret: {e}")))
}

/// A key that signs tokens: an Ed25519 key pair or an HS256 secret.
#[derive(Clone)]
pub struct Keys {
    alg: Algorithm,
    encoding: EncodingKey,
    verifying: VerifyingKey,
    /// What [`Keys::write`] puts in files: (private, public).
    files: (String, Option<String>),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("alg", &self.alg).finish()
    }
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4): the
/// 32 key bytes follow it.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_der(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text.split_once(&begin)?.1.split_once(&end)?.0;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

impl Keys {
    /// A new Ed25519 key pair.
    ///
    /// # Errors
    ///
    /// [`AuthError::Key`] if the system's random source fails.
    pub fn generate_ed25519() -> Result<Keys, AuthError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| AuthError::Key("cannot generate an Ed25519 key".into()))?;
        Keys::ed25519_pkcs8(pkcs8.as_ref())
    }

    fn ed25519_pkcs8(der: &[u8]) -> Result<Keys, AuthError> {
        use ring::signature::KeyPair as _;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| AuthError::Key(format!("not an Ed25519 private key: {e}")))?;
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        let private = pem("PRIVATE KEY", der);
        let public = pem("PUBLIC KEY", &spki);
        Ok(Keys {
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(der),
            verifying: VerifyingKey::ed25519_pem(public.as_bytes())?,
            files: (private, Some(public)),
        })
    }

    /// A new random 32-byte HS256 secret.
    ///
    /// # Errors
    ///
    /// [`AuthError::Key`] if the system's random source fails.
    pub fn generate_hs256() -> Result<Keys, AuthError> {
        use ring::rand::SecureRandom as _;
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| AuthError::Key("cannot read random bytes".into()))?;
        Keys::hs256(&secret)
    }

    /// Signs with an HS256 secret (at least 32 bytes).
    ///
    /// # Errors
    ///
    /// [`AuthError::Key`] for a shorter secret.
    pub fn hs256(secret: &[u8]) -> Result<Keys, AuthError> {
        let verifying = VerifyingKey::hs256(secret)?;
        let line = format!(
            "{HS_PREFIX}{}\n",
            base64::engine::general_purpose::STANDARD.encode(secret)
        );
        Ok(Keys {
            alg: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret)
                .map_err(|e| AuthError::Key(e.to_string()))?,
            verifying,
            files: (line, None),
        })
    }

    /// Reads a signing key file written by [`Keys::write`] (an Ed25519
    /// private key in PKCS#8 PEM, or an HS256 secret file).
    ///
    /// # Errors
    ///
    /// [`AuthError::Key`] for a file that cannot be read or used.
    pub fn from_file(path: &Path) -> Result<Keys, AuthError> {
        let text = read(path)?;
        if text.contains("BEGIN PRIVATE KEY") {
            let der = pem_der(&text, "PRIVATE KEY")
                .ok_or_else(|| AuthError::Key(format!("{}: bad PEM", path.display())))?;
            return Keys::ed25519_pkcs8(&der);
        }
        if text.contains("BEGIN PUBLIC KEY") {
            return Err(AuthError::Key(format!(
                "{} is a public key: signing needs the private key",
                path.display()
            )));
        }
        Keys::hs256(&hs_secret(&text)?)
    }

    /// Writes the key: `path` gets the private key (or the secret), mode
    /// 0600; for Ed25519, `path` with `.pub` appended gets the public key,
    /// the one hubs verify with. Returns the files written.
    ///
    /// # Errors
    ///
    /// [`AuthError::Key`] if a file cannot be written.
    pub fn write(&self, path: &Path) -> Result<Vec<PathBuf>, AuthError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let err = |p: &Path, e: std::io::Error| {
            AuthError::Key(format!("cannot write {}: {e}", p.display()))
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| err(path, e))?;
        f.write_all(self.files.0.as_bytes())
            .map_err(|e| err(path, e))?;
        let mut out = vec![path.to_path_buf()];
        if let Some(public) = &self.files.1 {
            let mut p = path.as_os_str().to_owned();
            p.push(".pub");
            let p = PathBuf::from(p);
            std::fs::write(&p, public).map_err(|e| err(&p, e))?;
            out.push(p);
        }
        Ok(out)
    }

    /// The key that checks what this one signs.
    pub fn verifying(&self) -> VerifyingKey {
        self.verifying.clone()
    }

    /// The algorithm it signs with.
    pub fn algorithm(&self) -> &'static str {
        alg_name(self.alg)
    }

    /// Signs a token for `sub` with `perms`, issued at `now` (seconds
    /// since the Unix epoch), valid for `ttl_secs`.
    ///
    /// # Errors
    ///
    /// [`AuthError::Key`] if signing fails.
    pub fn issue(
        &self,
        sub: &str,
        perms: &Permissions,
        now: u64,
        ttl_secs: u64,
    ) -> Result<String, AuthError> {
        let claims = Claims {
            sub: (!sub.is_empty()).then(|| sub.to_string()),
            exp: now.saturating_add(ttl_secs),
            iat: Some(now),
            nbf: None,
            pinion: perms.clone(),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims.
    ///
    /// # Errors
    ///
    /// [`AuthError::Key`] if signing fails.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.encoding)
            .map_err(|e| AuthError::Key(e.to_string()))
    }
}

/// Checks tokens against the hub's keys.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    leeway: u64,
}

impl Verifier {
    /// A verifier with these keys and no clock leeway.
    pub fn new(keys: Vec<VerifyingKey>) -> Verifier {
        Verifier { keys, leeway: 0 }
    }

    /// Seconds of clock difference forgiven on `exp` and `nbf`.
    pub fn with_leeway(mut self, secs: u64) -> Verifier {
        self.leeway = secs;
        self
    }

    /// The seconds since the Unix epoch now.
    pub fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Checks `token` at time `now` (seconds since the Unix epoch).
    ///
    /// # Errors
    ///
    /// See [`AuthError`].
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLarge(token.len()));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let alg = match jsonwebtoken::decode_header(token) {
            Ok(h) => h.alg,
            Err(_) => return Err(header_fault(token)),
        };
        let mut tried = false;
        let mut last = AuthError::BadSignature;
        for k in self.keys.iter().filter(|k| k.alg == alg) {
            tried = true;
            let mut v = Validation::new(alg);
            // Time is checked below against `now`, not the system clock.
            v.validate_exp = false;
            v.validate_nbf = false;
            v.validate_aud = false;
            v.required_spec_claims.clear();
            match jsonwebtoken::decode::<serde_json::Value>(token, &k.key, &v) {
                Ok(data) => return self.claims(data.claims, now),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature => AuthError::BadSignature,
                        _ => AuthError::Malformed,
                    };
                    if last == AuthError::Malformed {
                        break;
                    }
                }
            }
        }
        if !tried {
            return Err(AuthError::WrongAlgorithm(format!("{alg:?}")));
        }
        Err(last)
    }

    fn claims(&self, v: serde_json::Value, now: u64) -> Result<Claims, AuthError> {
        if v.get("exp").is_none() {
            return Err(AuthError::NoExpiry);
        }
        let c: Claims = serde_json::from_value(v).map_err(|_| AuthError::Malformed)?;
        if c.exp.saturating_add(self.leeway) <= now {
            return Err(AuthError::Expired);
        }
        if c.nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
        {
            return Err(AuthError::NotYetValid);
        }
        c.pinion.publish.check()?;
        c.pinion.subscribe.check()?;
        Ok(c)
    }
}

/// Why a token's header did not parse: alg `none` is named.
fn header_fault(token: &str) -> AuthError {
    let Some(head) = token.split('.').next() else {
        return AuthError::Malformed;
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head) else {
        return AuthError::Malformed;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&json) else {
        return AuthError::Malformed;
    };
    match v.get("alg").and_then(|a| a.as_str()) {
        Some(a) if a.eq_ignore_ascii_case("none") => AuthError::Unsigned,
        Some(a) => AuthError::WrongAlgorithm(a.chars().take(16).collect()),
        None => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests;
