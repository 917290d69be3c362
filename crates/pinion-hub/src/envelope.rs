//! Checking a publish request (sans-IO).

use bytes::Bytes;
use pinion_proto::{Code, Message as _, Publish, Reply, CLIENT_ID_LEN, MAX_TOPIC_LEN};

use crate::sessions::ClientId;

/// A request that passed every check and goes to the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The client.
    pub client_id: ClientId,
    /// Its seq (absent = 0).
    pub seq: u64,
    /// Topic bytes (UTF-8, no NUL, ≤ 255 bytes).
    pub topic: Vec<u8>,
    /// Payload (≤ the hub's max): a slice of the request's buffer, not a
    /// copy.
    pub payload: Bytes,
    /// The request's token, if it carries one (checked by the intake when
    /// authentication is on).
    pub token: Option<String>,
}

/// Decodes and checks one request body; `Err` is the NACK to send back.
/// The payload of the result shares `body`'s buffer.
pub fn check(body: &Bytes, max_payload: usize) -> Result<Checked, Reply> {
    let p = Publish::decode(body.clone()).map_err(|e| {
        Reply::nack(
            None,
            Code::Malformed,
            format!("undecodable Publish envelope: {e}"),
        )
    })?;
    let seq = p.seq.unwrap_or(0);
    let nack = |code, reason: String| Reply::nack(Some(seq), code, reason);
    let client_id: ClientId = match p.client_id.as_deref() {
        Some(id) if id.len() == CLIENT_ID_LEN => id.try_into().expect("length checked"),
        Some(id) => {
            return Err(nack(
                Code::Malformed,
                format!("client_id is {} bytes, expected {CLIENT_ID_LEN}", id.len()),
            ))
        }
        None => return Err(nack(Code::Malformed, "client_id missing".into())),
    };
    let topic = p.topic.unwrap_or_default().into_bytes();
    if topic.len() > MAX_TOPIC_LEN {
        return Err(nack(
            Code::Malformed,
            format!("topic is {} bytes, at most {MAX_TOPIC_LEN}", topic.len()),
        ));
    }
    if topic.contains(&0) {
        return Err(nack(Code::Malformed, "topic contains a NUL byte".into()));
    }
    let payload = p.payload.unwrap_or_default();
    if payload.len() > max_payload {
        return Err(nack(
            Code::TooLarge,
            format!(
                "payload is {} bytes, the limit is {max_payload}",
                payload.len()
            ),
        ));
    }
    Ok(Checked {
        client_id,
        seq,
        topic,
        payload,
        token: p.token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinion_proto::reply;

    fn code(r: Reply) -> Code {
        match r.result {
            Some(reply::Result::Nack(n)) => n.code(),
            other => panic!("expected a nack, got {other:?}"),
        }
    }

    fn publish(id: Option<Vec<u8>>, topic: Option<&str>, payload: usize) -> Bytes {
        Publish {
            client_id: id.map(Bytes::from),
            seq: Some(7),
            topic: topic.map(String::from),
            payload: Some(vec![b'x'; payload].into()),
            token: None,
        }
        .encode_to_vec()
        .into()
    }

    #[test]
    fn checks() {
        let ok = check(&publish(Some(vec![1; 16]), Some("t"), 256), 256).unwrap();
        assert_eq!(
            (ok.seq, &ok.topic[..], ok.payload.len()),
            (7, &b"t"[..], 256)
        );
        assert_eq!(
            code(check(&publish(Some(vec![1; 16]), None, 257), 256).unwrap_err()),
            Code::TooLarge
        );
        assert_eq!(
            code(check(&publish(None, None, 1), 256).unwrap_err()),
            Code::Malformed
        );
        assert_eq!(
            code(check(&publish(Some(vec![1; 15]), None, 1), 256).unwrap_err()),
            Code::Malformed
        );
        assert_eq!(
            code(check(&publish(Some(vec![1; 16]), Some("a\0b"), 1), 256).unwrap_err()),
            Code::Malformed
        );
        let long = "x".repeat(256);
        assert_eq!(
            code(check(&publish(Some(vec![1; 16]), Some(&long), 1), 256).unwrap_err()),
            Code::Malformed
        );
        assert_eq!(
            code(check(&Bytes::from_static(b"\xff\xff\xff"), 256).unwrap_err()),
            Code::Malformed
        );
        // An empty body is a valid (all-absent) envelope, missing its client id.
        assert_eq!(
            code(check(&Bytes::new(), 256).unwrap_err()),
            Code::Malformed
        );
    }
}
