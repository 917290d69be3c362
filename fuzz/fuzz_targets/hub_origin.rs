//! Arbitrary `Host` and `Origin` values (and configuration entries) into
//! the hub's front-door rules (`pinion_hub::origin`). Never panics; a
//! parsed authority or origin names a lower-case host without a trailing
//! dot; `*` accepts everything; an origin the parser refuses is never
//! accepted by a policy without `*`; a Host is never one of the hub's
//! names on a port other than the bound one unless the operator listed it.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use pinion_hub::origin::{parse_authority, parse_origin, HostKey, HostPolicy, OriginPolicy};

fuzz_target!(|data: (&str, &str, &str, u16)| {
    let (host, origin, entry, port) = data;
    let port = port.max(1);
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let not_mine = |_: IpAddr| false;
    for s in [host, origin, entry] {
        if let Some(a) = parse_authority(s) {
            if let HostKey::Name(n) = &a.host {
                assert!(!n.is_empty() && !n.ends_with('.'));
                assert_eq!(n, &n.to_ascii_lowercase());
            }
        }
        if let Some(o) = parse_origin(s) {
            assert!(o.scheme == "http" || o.scheme == "https");
        }
    }
    let plain = HostPolicy::new(local, "127.0.0.1", &[]);
    let listed = HostPolicy::new(local, "127.0.0.1", &[entry.to_string()]);
    let any = HostPolicy::new(local, "127.0.0.1", &["*".to_string()]);
    if let Some(a) = parse_authority(host) {
        assert!(any.accepts(&a, local, &not_mine));
        if plain.accepts(&a, local, &not_mine) {
            assert_eq!(a.port.unwrap_or(80), port, "only the bound port");
        }
        let _ = listed.accepts(&a, local, &not_mine);
    }
    assert!(OriginPolicy::new(&["*".to_string()]).accepts(origin, &plain, local, &not_mine));
    let strict = OriginPolicy::new(&[entry.to_string()]);
    if parse_origin(origin).is_none() {
        assert!(!strict.accepts(origin, &plain, local, &not_mine) || entry == "*");
    }
});
