//! Credentials as the hub reads them: arbitrary text as a token to the
//! verifier (an Ed25519 and an HS256 key configured), as a `/sub` query
//! (`token=` among the parameters), and the permission checks on what
//! verifies. Nothing may panic; a token over the limit is refused before
//! it is decoded; a verified token's claims must survive a round trip.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pinion_auth::{Action, AuthError, Keys, Verifier, MAX_TOKEN_LEN};

fn verifier() -> &'static (Verifier, Keys) {
    static V: OnceLock<(Verifier, Keys)> = OnceLock::new();
    V.get_or_init(|| {
        let ed = Keys::generate_ed25519().unwrap();
        let hs = Keys::hs256(&[7u8; 32]).unwrap();
        (Verifier::new(vec![ed.verifying(), hs.verifying()]), hs)
    })
}

fuzz_target!(|data: &[u8]| {
    let (v, hs) = verifier();
    let text = String::from_utf8_lossy(data);
    match v.verify(&text, 1_765_152_000) {
        Ok(c) => {
            // Only a token signed with one of the keys gets here (the
            // fuzzer cannot forge one; a signed one is in the seed corpus).
            let again = hs.sign(&c).unwrap();
            assert_eq!(v.verify(&again, 1_765_152_000).unwrap(), c);
            let _ = c.permits(Action::Publish, data);
            let _ = c.permits_prefix(Action::Subscribe, data);
        }
        Err(AuthError::TooLarge(n)) => assert!(n > MAX_TOKEN_LEN),
        Err(_) => {}
    }
    if let Ok(q) = pinion_hub::http::parse_sub_query(&text) {
        if let Some(t) = q.token {
            assert!(t.len() <= 3 * MAX_TOKEN_LEN);
            let _ = v.verify(&t, 1_765_152_000);
        }
    }
});
