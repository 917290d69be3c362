//! Authentication and authorization on the hub (off unless keys are
//! configured): tokens checked with [`pinion_auth`], cached per core, and
//! the reasons a request or connection is refused, counted by reason.
//!
//! * Publishing: the `Publish.token` field (or the token its WebSocket
//!   `/pub` was opened with) must verify and allow the topic; else NACK
//!   `UNAUTHENTICATED` or `FORBIDDEN`, the connection stays up.
//! * Subscribing over WebSocket (`/sub`): `Authorization: Bearer` or
//!   `?token=`; every topic prefix asked for must be allowed (no topic =
//!   every topic). Refused with close code [`CLOSE_UNAUTHENTICATED`] or
//!   [`CLOSE_FORBIDDEN`]; closed with [`CLOSE_EXPIRED`] when the token
//!   expires.
//! * Subscribing over plain SP: no place for a credential; refused.
//! * The dashboard, `/metrics` and `/stats`: a token with `admin`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pinion_auth::{Action, AuthError, Claims, Verifier, VerifyingKey};

/// WebSocket close code: no valid credential (missing, malformed, bad
/// signature, expired at connect time).
pub const CLOSE_UNAUTHENTICATED: u16 = 4401;
/// WebSocket close code: the credential does not allow these topics.
pub const CLOSE_FORBIDDEN: u16 = 4403;
/// WebSocket close code: the token expired while the subscriber was
/// connected; reconnect with a fresh one (from the offset after the last
/// delivery).
pub const CLOSE_EXPIRED: u16 = 4419;

/// `[auth]` in the config.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Key files tokens are checked with (Ed25519 public keys, or HS256
    /// secret files); at least one.
    pub keys: Vec<PathBuf>,
    /// Seconds of clock difference forgiven on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Client certificates (on `tls+tcp://`) mapped to permissions: a
    /// publisher whose verified certificate names one of these needs no
    /// token.
    pub certs: Vec<CertRule>,
}

/// A client certificate's permissions (`[[auth.cert]]`).
#[derive(Debug, Clone)]
pub struct CertRule {
    /// Matched against the certificate's common name and each subject
    /// alternative name.
    pub name: String,
    /// What it may do.
    pub permissions: pinion_auth::Permissions,
}

/// Why a request or connection was refused (the `reason` label of
/// `pinion_auth_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No token.
    Missing = 0,
    /// Over 8 KiB.
    TooLarge = 1,
    /// Not a JWT, or unreadable claims.
    Malformed = 2,
    /// alg none.
    Unsigned = 3,
    /// An algorithm the hub has no key for.
    WrongAlgorithm = 4,
    /// A signature no key verifies.
    BadSignature = 5,
    /// No `exp`.
    NoExpiry = 6,
    /// `exp` passed (at connect, at a publish, or mid-subscription).
    Expired = 7,
    /// `nbf` ahead.
    NotYetValid = 8,
    /// Valid, but the topics (or the admin pages) are not allowed.
    Forbidden = 9,
    /// A plain SP subscriber while authentication is on.
    NoCredentialSlot = 10,
}

impl Reason {
    /// Number of reasons.
    pub const COUNT: usize = 11;
    /// Every reason, in index order.
    pub const ALL: [Reason; Reason::COUNT] = [
        Reason::Missing,
        Reason::TooLarge,
        Reason::Malformed,
        Reason::Unsigned,
        Reason::WrongAlgorithm,
        Reason::BadSignature,
        Reason::NoExpiry,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::Forbidden,
        Reason::NoCredentialSlot,
    ];

    /// The label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::Unsigned => "alg_none",
            Reason::WrongAlgorithm => "wrong_algorithm",
            Reason::BadSignature => "bad_signature",
            Reason::NoExpiry => "no_expiry",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Forbidden => "forbidden",
            Reason::NoCredentialSlot => "plain_sp_subscriber",
        }
    }

    /// The reason for a token refused by the verifier.
    pub fn of(e: &AuthError) -> Reason {
        match e {
            AuthError::Missing => Reason::Missing,
            AuthError::TooLarge(_) => Reason::TooLarge,
            AuthError::Unsigned => Reason::Unsigned,
            AuthError::WrongAlgorithm(_) => Reason::WrongAlgorithm,
            AuthError::BadSignature => Reason::BadSignature,
            AuthError::NoExpiry => Reason::NoExpiry,
            AuthError::Expired => Reason::Expired,
            AuthError::NotYetValid => Reason::NotYetValid,
            _ => Reason::Malformed,
        }
    }

    /// Forbidden (a valid credential, not enough), rather than
    /// unauthenticated.
    pub fn is_forbidden(self) -> bool {
        self == Reason::Forbidden
    }
}

/// A refusal: its reason and the words for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub reason: Reason,
    /// For humans (NACK reason, close reason).
    pub message: String,
}

impl Refused {
    fn token(e: &AuthError) -> Refused {
        Refused {
            reason: Reason::of(e),
            message: format!("unauthenticated: {e}"),
        }
    }

    fn forbidden(message: String) -> Refused {
        Refused {
            reason: Reason::Forbidden,
            message,
        }
    }

    /// The WebSocket close code for it.
    pub fn close_code(&self) -> u16 {
        match self.reason {
            Reason::Forbidden => CLOSE_FORBIDDEN,
            _ => CLOSE_UNAUTHENTICATED,
        }
    }
}

/// The hub's authentication: its keys, and the refusal counters.
#[derive(Debug)]
pub struct HubAuth {
    verifier: Verifier,
    refused: [AtomicU64; Reason::COUNT],
    certs: Vec<(String, Arc<Claims>)>,
}

impl HubAuth {
    /// Loads the keys.
    ///
    /// # Errors
    ///
    /// A key file that cannot be read or used, or no key at all.
    pub fn new(cfg: &AuthConfig) -> Result<HubAuth, AuthError> {
        if cfg.keys.is_empty() {
            return Err(AuthError::Key(
                "authentication needs at least one key".into(),
            ));
        }
        let keys = cfg
            .keys
            .iter()
            .map(|p| VerifyingKey::from_file(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HubAuth {
            verifier: Verifier::new(keys).with_leeway(cfg.leeway_secs),
            refused: Default::default(),
            certs: cfg
                .certs
                .iter()
                .map(|r| {
                    let claims = Claims {
                        sub: Some(r.name.clone()),
                        exp: u64::MAX,
                        iat: None,
                        nbf: None,
                        pinion: r.permissions.clone(),
                    };
                    (r.name.clone(), Arc::new(claims))
                })
                .collect(),
        })
    }

    /// The permissions configured for a verified client certificate (its
    /// common name or one of its alternative names), if any.
    pub fn cert_claims(&self, id: &pinion::PeerIdentity) -> Option<Arc<Claims>> {
        if !id.verified {
            return None;
        }
        self.certs
            .iter()
            .find(|(name, _)| {
                id.common_name.as_deref() == Some(name.as_str())
                    || id.alt_names.iter().any(|a| a == name)
            })
            .map(|(_, c)| c.clone())
    }

    /// `pinion_auth_refused_total{reason}` in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let mut m = String::from(
            "# HELP pinion_auth_refused_total Requests and connections refused by authentication, by reason.\n\
             # TYPE pinion_auth_refused_total counter\n",
        );
        for (r, n) in Reason::ALL.iter().zip(self.refused()) {
            let _ = writeln!(
                m,
                "pinion_auth_refused_total{{reason=\"{}\"}} {n}",
                r.label()
            );
        }
        m
    }

    /// Counts a refusal.
    pub fn count(&self, r: &Refused) {
        self.refused[r.reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far, by reason.
    pub fn refused(&self) -> [u64; Reason::COUNT] {
        std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed))
    }

    /// Verifies a token now (no cache: connection-time checks).
    ///
    /// # Errors
    ///
    /// The refusal, not yet counted.
    pub fn verify(&self, token: Option<&str>) -> Result<Arc<Claims>, Refused> {
        let token = token.ok_or_else(|| Refused::token(&AuthError::Missing))?;
        self.verifier
            .verify(token, Verifier::now())
            .map(Arc::new)
            .map_err(|e| Refused::token(&e))
    }

    /// A subscription to every prefix in `topics` (none: every topic) is
    /// allowed by `claims`.
    ///
    /// # Errors
    ///
    /// The refusal, not yet counted.
    pub fn may_subscribe(claims: &Claims, topics: &[Vec<u8>]) -> Result<(), Refused> {
        let all: [Vec<u8>; 1] = [Vec::new()];
        let asked: &[Vec<u8>] = if topics.is_empty() { &all } else { topics };
        for t in asked {
            if !claims.permits_prefix(Action::Subscribe, t) {
                return Err(Refused::forbidden(format!(
                    "forbidden: the token does not allow subscribing to {:?}",
                    String::from_utf8_lossy(t)
                )));
            }
        }
        Ok(())
    }

    /// `claims` opens the admin pages.
    ///
    /// # Errors
    ///
    /// The refusal, not yet counted.
    pub fn may_administer(claims: &Claims) -> Result<(), Refused> {
        if claims.pinion.admin {
            Ok(())
        } else {
            Err(Refused::forbidden(
                "forbidden: the token is not an admin token".into(),
            ))
        }
    }
}

/// Most tokens a core remembers (verified or refused); past it the cache
/// starts over. Tokens are checked once per core while they stay in it,
/// not once per publish (an Ed25519 verification costs tens of µs).
pub const CACHE_ENTRIES: usize = 4096;

/// A core's cache of checked tokens.
#[derive(Debug, Default)]
pub struct TokenCache {
    map: HashMap<Box<str>, Result<Arc<Claims>, Refused>>,
}

impl TokenCache {
    /// The claims of `token` (checked once while cached), or why not.
    fn claims(&mut self, auth: &HubAuth, token: &str, now: u64) -> Result<Arc<Claims>, Refused> {
        if let Some(r) = self.map.get(token) {
            return r.clone();
        }
        // An oversize token is refused without being kept.
        if token.len() > pinion_auth::MAX_TOKEN_LEN {
            return Err(Refused::token(&AuthError::TooLarge(token.len())));
        }
        let r = auth
            .verifier
            .verify(token, now)
            .map(Arc::new)
            .map_err(|e| Refused::token(&e));
        // Expiry is checked on every use, so a verified token can be kept
        // until the cache starts over; a refused one too (its signature
        // will not start verifying).
        if self.map.len() >= CACHE_ENTRIES {
            self.map.clear();
        }
        self.map.insert(token.into(), r.clone());
        r
    }

    /// Authorizes one publish to `topic`, with the request's own token,
    /// else the connection's claims (`conn`). Counts a refusal.
    ///
    /// # Errors
    ///
    /// The refusal: NACK `UNAUTHENTICATED` or `FORBIDDEN` with its message.
    pub fn publish(
        &mut self,
        auth: &HubAuth,
        token: Option<&str>,
        conn: Option<&Claims>,
        topic: &[u8],
        now: u64,
    ) -> Result<(), Refused> {
        let r = self.check_publish(auth, token, conn, topic, now);
        if let Err(e) = &r {
            auth.count(e);
        }
        r
    }

    fn check_publish(
        &mut self,
        auth: &HubAuth,
        token: Option<&str>,
        conn: Option<&Claims>,
        topic: &[u8],
        now: u64,
    ) -> Result<(), Refused> {
        let cached;
        let claims: &Claims = match (token, conn) {
            (Some(t), _) => {
                cached = self.claims(auth, t, now)?;
                &cached
            }
            (None, Some(c)) => c,
            (None, None) => return Err(Refused::token(&AuthError::Missing)),
        };
        if claims.exp <= now {
            return Err(Refused::token(&AuthError::Expired));
        }
        if !claims.permits(Action::Publish, topic) {
            return Err(Refused::forbidden(format!(
                "forbidden: the token does not allow publishing to {:?}",
                String::from_utf8_lossy(topic)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinion_auth::{Keys, Permissions, Rules};

    fn setup() -> (Keys, HubAuth) {
        let keys = Keys::generate_ed25519().unwrap();
        let auth = HubAuth {
            verifier: Verifier::new(vec![keys.verifying()]),
            refused: Default::default(),
            certs: Vec::new(),
        };
        (keys, auth)
    }

    #[test]
    fn publishes_are_checked_once_per_token_and_counted_by_reason() {
        let (keys, auth) = setup();
        let now = Verifier::now();
        let perms = Permissions {
            publish: Rules::allow(["orders."]),
            ..Default::default()
        };
        let t = keys.issue("a", &perms, now, 60).unwrap();
        let mut cache = TokenCache::default();
        assert!(cache
            .publish(&auth, Some(&t), None, b"orders.1", now)
            .is_ok());
        assert_eq!(cache.map.len(), 1);
        assert!(cache
            .publish(&auth, Some(&t), None, b"orders.2", now)
            .is_ok());
        assert_eq!(cache.map.len(), 1);
        let e = cache
            .publish(&auth, Some(&t), None, b"prices", now)
            .unwrap_err();
        assert_eq!(e.reason, Reason::Forbidden);
        // The cached token expires like any other.
        let e = cache
            .publish(&auth, Some(&t), None, b"orders.1", now + 60)
            .unwrap_err();
        assert_eq!(e.reason, Reason::Expired);
        let e = cache
            .publish(&auth, None, None, b"orders.1", now)
            .unwrap_err();
        assert_eq!(e.reason, Reason::Missing);
        let e = cache
            .publish(&auth, Some("junk"), None, b"orders.1", now)
            .unwrap_err();
        assert_eq!(e.reason, Reason::Malformed);
        let huge = "x".repeat(1 << 20);
        let e = cache
            .publish(&auth, Some(&huge), None, b"orders.1", now)
            .unwrap_err();
        assert_eq!(e.reason, Reason::TooLarge);
        assert_eq!(cache.map.len(), 2, "the huge token is not kept");
        // The connection's claims stand in for a missing token.
        let c = auth.verify(Some(&t)).unwrap();
        assert!(cache
            .publish(&auth, None, Some(&c), b"orders.3", now)
            .is_ok());
        let r = auth.refused();
        assert_eq!(r[Reason::Forbidden as usize], 1);
        assert_eq!(r[Reason::Expired as usize], 1);
        assert_eq!(r[Reason::Missing as usize], 1);
        assert_eq!(r[Reason::Malformed as usize], 1);
        assert_eq!(r[Reason::TooLarge as usize], 1);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let (keys, auth) = setup();
        let now = Verifier::now();
        let mut cache = TokenCache::default();
        for i in 0..CACHE_ENTRIES + 10 {
            let t = keys
                .issue(&i.to_string(), &Permissions::default(), now, 60)
                .unwrap();
            let _ = cache.publish(&auth, Some(&t), None, b"x", now);
            assert!(cache.map.len() <= CACHE_ENTRIES);
        }
    }

    #[test]
    fn subscriptions_need_every_prefix_allowed() {
        let c = Claims {
            sub: None,
            exp: u64::MAX,
            iat: None,
            nbf: None,
            pinion: Permissions {
                subscribe: Rules::allow(["orders."]),
                ..Default::default()
            },
        };
        assert!(HubAuth::may_subscribe(&c, &[b"orders.eu".to_vec()]).is_ok());
        let e =
            HubAuth::may_subscribe(&c, &[b"orders.eu".to_vec(), b"prices".to_vec()]).unwrap_err();
        assert_eq!(e.close_code(), CLOSE_FORBIDDEN);
        // No topic asked = every topic.
        assert!(HubAuth::may_subscribe(&c, &[]).is_err());
        assert!(HubAuth::may_administer(&c).is_err());
    }
}
