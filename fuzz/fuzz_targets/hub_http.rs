//! Arbitrary bytes into the hub's HTTP front: the request-head parser and
//! the `/sub` query parser. Never panics; a parsed head never claims more
//! bytes than it was given; a parsed query has at most 64 topics of at most
//! 255 bytes each.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinion_hub::http::{parse_head, parse_sub_query, percent_decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(h)) = parse_head(data) {
        assert!(h.len <= data.len());
        if let Ok(q) = parse_sub_query(&h.query) {
            assert!(q.topics.len() <= 64);
            assert!(q.topics.iter().all(|t| t.len() <= 255));
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_sub_query(s);
        if let Some(d) = percent_decode(s) {
            assert!(d.len() <= s.len());
        }
    }
});
