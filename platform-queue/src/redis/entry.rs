//! The entry codec: a message as one self-contained list entry.

use std::io::Write as _;

use bytes::Bytes;
use platform_core::{Error, Result};
use redis::Value;

use crate::Headers;
use crate::lease::StoredMessage;
use crate::message::{decode_headers, encode_headers};

pub(super) fn prefix(queue: &str) -> String {
    format!("platform:queue:{{{queue}}}")
}

/// A message as one list entry: `attempts:first failure:id length:headers length:`,
/// then the id, the headers (JSON, empty for none) and the body.
pub(super) fn entry(id: &str, headers: &Headers, body: &[u8]) -> Vec<u8> {
    let heads = if headers.is_empty() { String::new() } else { encode_headers(headers) };
    let mut e = Vec::with_capacity(16 + id.len() + heads.len() + body.len());
    let _ = write!(e, "0::{}:{}:", id.len(), heads.len());
    e.extend_from_slice(id.as_bytes());
    e.extend_from_slice(heads.as_bytes());
    e.extend_from_slice(body);
    e
}

/// The fields of an entry: attempts, first failure, id, headers and body (a slice of
/// the entry, not a copy); `None` for an entry in another shape.
pub(super) fn parse_entry(raw: &Bytes) -> Option<(u32, Option<i64>, String, Headers, Bytes)> {
    let mut at = 0;
    let mut fields = [&raw[..0]; 4];
    for (k, field) in fields.iter_mut().enumerate() {
        let len = raw.get(at..)?.iter().position(|&b| b == b':')?;
        *field = &raw[at..at + len];
        let digits = field.iter().all(u8::is_ascii_digit);
        if !digits || (field.is_empty() && k != 1) {
            return None;
        }
        at += len + 1;
    }
    let number = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<usize>().ok();
    let attempts = u32::try_from(number(fields[0])?).ok()?;
    let first_failure = if fields[1].is_empty() { None } else { Some(i64::try_from(number(fields[1])?).ok()?) };
    let (id_len, heads_len) = (number(fields[2])?, number(fields[3])?);
    let body_at = at.checked_add(id_len)?.checked_add(heads_len)?;
    if body_at > raw.len() {
        return None;
    }
    let id = std::str::from_utf8(&raw[at..at + id_len]).ok()?.to_owned();
    let heads = &raw[at + id_len..body_at];
    let headers = if heads.is_empty() { Headers::new() } else { decode_headers(&String::from_utf8_lossy(heads)) };
    Some((attempts, first_failure, id, headers, raw.slice(body_at..)))
}

/// An entry as a message: claimed (`delivered`: this delivery counted in its attempts)
/// or listed. An entry in another shape is a message whose body is all its bytes and
/// whose id is `~` and its position in its list, counted from 1.
pub(super) fn message_of(raw: Bytes, position: usize, delivered: bool) -> StoredMessage {
    let extra = u32::from(delivered);
    match parse_entry(&raw) {
        Some((attempts, first_failure, id, headers, body)) => {
            StoredMessage::new(id, body, headers, attempts.saturating_add(extra), first_failure)
        }
        None => StoredMessage::new(format!("~{position}"), raw, Headers::new(), extra, None),
    }
}

/// A claim's answer: the entries it moved, whether a delay or a lease is due, and how
/// many entries were left visible.
pub(super) fn decode_claim(replies: Vec<Value>, taken: usize, probes: usize) -> Result<(Vec<Bytes>, bool, i64)> {
    let bad = || Error::internal("unexpected reply to a redis claim").with_backend("redis");
    if replies.len() != taken + probes + 1 {
        return Err(bad());
    }
    let mut replies = replies.into_iter();
    let mut entries = Vec::with_capacity(taken);
    for reply in replies.by_ref().take(taken) {
        match reply {
            Value::BulkString(b) => entries.push(Bytes::from(b)),
            Value::Nil => {}
            _ => return Err(bad()),
        }
    }
    let mut due = false;
    for reply in replies.by_ref().take(probes) {
        match reply {
            Value::Array(a) => due |= !a.is_empty(),
            Value::Set(a) => due |= !a.is_empty(),
            _ => return Err(bad()),
        }
    }
    let left = match replies.next() {
        Some(Value::Int(n)) => n,
        _ => return Err(bad()),
    };
    Ok((entries, due, left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_other_shapes_are_told_apart() {
        let mut headers = Headers::new();
        headers.insert("k".into(), "v:1".into());
        let raw = Bytes::from(entry("id-1", &headers, b"\xff:body"));
        let (attempts, first_failure, id, got, body) = parse_entry(&raw).expect("ours");
        assert_eq!((attempts, first_failure, id.as_str(), body.as_ref()), (0, None, "id-1", &b"\xff:body"[..]));
        assert_eq!(got, headers);
        let redelivered = Bytes::from_static(b"3:1700000000000:2:0:idbody");
        let m = message_of(redelivered, 1, true);
        assert_eq!(
            (m.id.as_str(), m.attempts, m.first_failure_ms, m.body.as_ref()),
            ("id", 4, Some(1_700_000_000_000), &b"body"[..])
        );
        for other in [&b"plain"[..], b"1:2:3", b"7:8:9:10:short", b"a::1:0:x", b"1::x:0:y", b""] {
            let m = message_of(Bytes::copy_from_slice(other), 2, true);
            assert_eq!((m.id.as_str(), m.attempts, m.body.as_ref()), ("~2", 1, other), "{other:?}");
        }
    }
}
