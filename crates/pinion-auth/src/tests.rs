use super::*;

const NOW: u64 = 1_765_152_000;

fn perms() -> Permissions {
    Permissions {
        publish: Rules::allow(["orders."]).deny(["orders.internal."]),
        subscribe: Rules::allow(["orders.", "prices"]),
        admin: false,
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn ed25519_and_hs256_tokens_verify_with_their_keys() {
    for keys in [
        Keys::generate_ed25519().unwrap(),
        Keys::generate_hs256().unwrap(),
    ] {
        let token = keys.issue("alice", &perms(), NOW, 60).unwrap();
        let v = Verifier::new(vec![keys.verifying()]);
        let c = v.verify(&token, NOW + 1).unwrap();
        assert_eq!(c.sub.as_deref(), Some("alice"));
        assert_eq!(c.exp, NOW + 60);
        assert_eq!(c.pinion, perms());
        assert_eq!(v.verify(&token, NOW + 60), Err(AuthError::Expired));
        assert!(v.clone().with_leeway(5).verify(&token, NOW + 62).is_ok());
    }
}

#[test]
fn hostile_tokens_are_refused_each_for_its_reason() {
    let keys = Keys::generate_ed25519().unwrap();
    let v = Verifier::new(vec![keys.verifying()]);
    let claims = format!(
        r#"{{"sub":"eve","exp":{},"pinion":{{"pub":{{"allow":[""]}}}}}}"#,
        NOW + 60
    );
    // alg none, in any case.
    for alg in ["none", "None", "NONE"] {
        let t = format!(
            "{}.{}.",
            b64(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)),
            b64(&claims)
        );
        assert_eq!(v.verify(&t, NOW), Err(AuthError::Unsigned), "{alg}");
    }
    // Another key.
    let other = Keys::generate_ed25519().unwrap();
    let t = other.issue("eve", &perms(), NOW, 60).unwrap();
    assert_eq!(v.verify(&t, NOW), Err(AuthError::BadSignature));
    // Another algorithm: HS256, even keyed with the hub's own public key
    // (the classic confusion attack).
    let public_pem = keys.files.1.clone().unwrap();
    let hs = Keys::hs256(public_pem.as_bytes()).unwrap();
    let t = hs.issue("eve", &perms(), NOW, 60).unwrap();
    assert!(matches!(
        v.verify(&t, NOW),
        Err(AuthError::WrongAlgorithm(_))
    ));
    // An algorithm jsonwebtoken does not know.
    let t = format!("{}.{}.c2ln", b64(r#"{"alg":"XS999"}"#), b64(&claims));
    assert!(matches!(
        v.verify(&t, NOW),
        Err(AuthError::WrongAlgorithm(_))
    ));
    // Garbage, empty, huge.
    for g in ["garbage", "a.b.c", "...", "eyJ.eyJ.x", "\u{0}\u{1}"] {
        assert_eq!(v.verify(g, NOW), Err(AuthError::Malformed), "{g:?}");
    }
    assert_eq!(v.verify("", NOW), Err(AuthError::Missing));
    let huge = "a".repeat(1 << 20);
    assert_eq!(v.verify(&huge, NOW), Err(AuthError::TooLarge(1 << 20)));
    // No expiry; not yet valid; expired.
    let mut c = Claims {
        sub: None,
        exp: NOW + 60,
        iat: None,
        nbf: Some(NOW + 30),
        pinion: perms(),
    };
    assert_eq!(
        v.verify(&keys.sign(&c).unwrap(), NOW),
        Err(AuthError::NotYetValid)
    );
    c.nbf = None;
    c.exp = NOW - 1;
    assert_eq!(
        v.verify(&keys.sign(&c).unwrap(), NOW),
        Err(AuthError::Expired)
    );
    let no_exp = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &serde_json::json!({"sub": "eve"}),
        &keys.encoding,
    )
    .unwrap();
    assert_eq!(v.verify(&no_exp, NOW), Err(AuthError::NoExpiry));
    // Too many prefixes.
    c.exp = NOW + 60;
    c.pinion.publish.allow = (0..=MAX_PREFIXES).map(|i| i.to_string()).collect();
    assert_eq!(
        v.verify(&keys.sign(&c).unwrap(), NOW),
        Err(AuthError::TooManyPrefixes)
    );
    // Claims of the wrong shape.
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &serde_json::json!({"exp": NOW + 60, "pinion": {"pub": "everything"}}),
        &keys.encoding,
    )
    .unwrap();
    assert_eq!(v.verify(&t, NOW), Err(AuthError::Malformed));
}

#[test]
fn permissions_are_prefixes_and_deny_wins() {
    let c = Claims {
        sub: None,
        exp: NOW,
        iat: None,
        nbf: None,
        pinion: perms(),
    };
    assert!(c.permits(Action::Publish, b"orders.eu"));
    assert!(c.permits(Action::Publish, b"orders."));
    assert!(!c.permits(Action::Publish, b"orders"));
    assert!(!c.permits(Action::Publish, b"orders.internal.audit"));
    assert!(!c.permits(Action::Publish, b"prices.eu"));
    assert!(c.permits(Action::Subscribe, b"prices.eu"));
    // Subscribing to a prefix: every topic under it must be allowed.
    assert!(c.permits_prefix(Action::Subscribe, b"orders.eu"));
    assert!(!c.permits_prefix(Action::Subscribe, b"order"));
    assert!(!c.permits_prefix(Action::Subscribe, b""));
    assert!(c.permits_prefix(Action::Publish, b"orders.eu."));
    // A deny inside the subscribed range makes the range not allowed.
    assert!(!c.permits_prefix(Action::Publish, b"orders."));
    assert!(!c.permits_prefix(Action::Publish, b"orders.internal.x"));
    // "" allows everything; nothing allows nothing.
    let all = Rules::allow([""]);
    assert!(all.permits(b"anything") && all.permits(b"") && all.permits_prefix(b""));
    assert!(!Rules::default().permits(b"x"));
    // Serialized as the docs say.
    let j = serde_json::to_value(&c.pinion).unwrap();
    assert_eq!(
        j,
        serde_json::json!({"pub": {"allow": ["orders."], "deny": ["orders.internal."]},
                           "sub": {"allow": ["orders.", "prices"]}})
    );
}

#[test]
fn key_files_round_trip() {
    let dir = std::env::temp_dir().join(format!("pinion-auth-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, keys) in [
        ("ed", Keys::generate_ed25519().unwrap()),
        ("hs", Keys::generate_hs256().unwrap()),
    ] {
        let path = dir.join(name);
        let files = keys.write(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
        // Never overwritten.
        assert!(keys.write(&path).is_err());
        let signer = Keys::from_file(&path).unwrap();
        let token = signer.issue("bob", &perms(), NOW, 60).unwrap();
        // The hub reads the public file (Ed25519) or the secret (HS256).
        let v = Verifier::new(vec![VerifyingKey::from_file(files.last().unwrap()).unwrap()]);
        assert!(v.verify(&token, NOW).is_ok(), "{name}");
        let v = Verifier::new(vec![keys.verifying()]);
        assert!(v.verify(&token, NOW).is_ok(), "{name}");
    }
    assert!(Keys::from_file(&dir.join("ed.pub")).is_err());
    assert!(Keys::from_file(&dir.join("missing")).is_err());
    std::fs::write(dir.join("junk"), "hello").unwrap();
    assert!(matches!(
        VerifyingKey::from_file(&dir.join("junk")),
        Err(AuthError::Key(_))
    ));
    assert!(Keys::hs256(b"short").is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
