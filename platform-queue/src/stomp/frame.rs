//! STOMP 1.2 frames: encoding, and incremental decoding with limits.
//!
//! A frame is a command line, header lines (`name:value`, escaped with `\\`, `\n`,
//! `\r` and `\c` except in `CONNECT` and `CONNECTED`), a blank line, a body and a NUL.
//! Bodies are sent with `content-length`, so they may hold any bytes; received bodies
//! without one end at the first NUL. Bare line ends between frames are heart-beats.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest header section accepted from a server.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The largest body accepted from a server.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// One STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// `SEND`, `MESSAGE`, `RECEIPT`, …
    pub command: String,
    /// Headers in order; on repeats the first one counts.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: &str) -> Self {
        Self { command: command.to_owned(), ..Self::default() }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }

    /// The first value of header `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn escapes(&self) -> bool {
        self.command != "CONNECT" && self.command != "CONNECTED" && self.command != "STOMP"
    }

    /// Appends the wire form to `out`, with `content-length` for any body.
    pub fn encode(&self, out: &mut BytesMut) {
        let escape = self.escapes();
        out.reserve(self.command.len() + self.body.len() + 64 * (self.headers.len() + 1));
        out.put_slice(self.command.as_bytes());
        out.put_u8(b'\n');
        for (k, v) in &self.headers {
            put_escaped(out, k, escape);
            out.put_u8(b':');
            put_escaped(out, v, escape);
            out.put_u8(b'\n');
        }
        if !self.body.is_empty() && self.get("content-length").is_none() {
            out.put_slice(format!("content-length:{}\n", self.body.len()).as_bytes());
        }
        out.put_u8(b'\n');
        out.put_slice(&self.body);
        out.put_u8(0);
    }
}

fn put_escaped(out: &mut BytesMut, s: &str, escape: bool) {
    if !escape {
        out.put_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b':' => out.put_slice(b"\\c"),
            _ => out.put_u8(b),
        }
    }
}

/// Why bytes from the server are not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed STOMP frame: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

fn bad(why: impl Into<String>) -> FrameError {
    FrameError(why.into())
}

fn unescape(raw: &[u8], escape: bool) -> Result<String, FrameError> {
    let text = std::str::from_utf8(raw).map_err(|_| bad("header is not UTF-8"))?;
    if !escape || !text.contains('\\') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            other => return Err(bad(format!("undefined escape \\{}", other.map(String::from).unwrap_or_default()))),
        }
    }
    Ok(out)
}

/// What [`decode`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame, removed from the buffer.
    Frame(Frame),
    /// One heart-beat line end, removed from the buffer.
    HeartBeat,
}

/// Takes one frame or heart-beat off the front of `buf`; `Ok(None)` when more bytes are
/// needed. Never reads past the limits, whatever the input.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
    match buf.first() {
        None => return Ok(None),
        Some(b'\n') => {
            buf.advance(1);
            return Ok(Some(Decoded::HeartBeat));
        }
        Some(b'\r') => {
            if buf.len() < 2 {
                return Ok(None);
            }
            if buf[1] != b'\n' {
                return Err(bad("carriage return without line feed"));
            }
            buf.advance(2);
            return Ok(Some(Decoded::HeartBeat));
        }
        Some(_) => {}
    }
    // The header section ends at the first empty line.
    let window = &buf[..buf.len().min(MAX_HEADER_BYTES + 2)];
    let Some(end) = find_blank_line(window) else {
        if buf.len() > MAX_HEADER_BYTES {
            return Err(bad(format!("headers longer than {MAX_HEADER_BYTES} bytes")));
        }
        return Ok(None);
    };
    let (head_len, body_start) = end;
    let mut lines = buf[..head_len].split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let command = lines.next().unwrap_or_default();
    if command.is_empty() || !command.iter().all(u8::is_ascii_uppercase) {
        return Err(bad(format!("bad command {:?}", String::from_utf8_lossy(command))));
    }
    let command = String::from_utf8_lossy(command).into_owned();
    let escape = command != "CONNECTED" && command != "CONNECT";
    let mut headers = Vec::new();
    for line in lines {
        let colon = line.iter().position(|&b| b == b':').ok_or_else(|| bad("header line without a colon"))?;
        headers.push((unescape(&line[..colon], escape)?, unescape(&line[colon + 1..], escape)?));
    }
    let length = headers.iter().find(|(k, _)| k == "content-length").map(|(_, v)| v);
    let body_len = match length {
        Some(v) => {
            let n: usize = v.trim().parse().map_err(|_| bad(format!("bad content-length {v:?}")))?;
            if n > MAX_BODY_BYTES {
                return Err(bad(format!("body of {n} bytes is over the {MAX_BODY_BYTES} byte limit")));
            }
            if buf.len() < body_start + n + 1 {
                return Ok(None);
            }
            if buf[body_start + n] != 0 {
                return Err(bad("body does not end with NUL"));
            }
            n
        }
        None => match buf[body_start..].iter().position(|&b| b == 0) {
            Some(n) => n,
            None if buf.len() - body_start > MAX_BODY_BYTES => {
                return Err(bad(format!("body over the {MAX_BODY_BYTES} byte limit")));
            }
            None => return Ok(None),
        },
    };
    let mut frame_bytes = buf.split_to(body_start + body_len + 1).freeze();
    let body = frame_bytes.split_off(body_start).slice(..body_len);
    Ok(Some(Decoded::Frame(Frame { command, headers, body })))
}

/// The length of the header section (command line included) and where the body starts.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(pos) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + pos;
        let next = nl + 1;
        if buf.get(next) == Some(&b'\n') {
            return Some((strip_cr(buf, nl), next + 1));
        }
        if buf.get(next) == Some(&b'\r') && buf.get(next + 1) == Some(&b'\n') {
            return Some((strip_cr(buf, nl), next + 2));
        }
        i = next;
    }
    None
}

fn strip_cr(buf: &[u8], nl: usize) -> usize {
    if nl > 0 && buf[nl - 1] == b'\r' { nl - 1 } else { nl }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: &Frame) -> Frame {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        match decode(&mut buf).expect("decode") {
            Some(Decoded::Frame(f)) => {
                assert!(buf.is_empty(), "left over: {buf:?}");
                f
            }
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn headers_and_bodies_survive_exactly() {
        let frame = Frame::new("SEND")
            .header("destination", "/queue/a")
            .header("we:ird\\", "line\nbreak\r and : colon \\ üñí")
            .body(Bytes::from_static(&[0, 1, 0, 255, b'\n', 0]));
        let back = round_trip(&frame);
        assert_eq!(back.get("we:ird\\"), Some("line\nbreak\r and : colon \\ üñí"));
        assert_eq!(back.body, frame.body);
        assert_eq!(round_trip(&Frame::new("ACK").header("id", "1")).body.len(), 0);
    }

    #[test]
    fn partial_input_waits_and_heart_beats_are_skipped() {
        let mut wire = BytesMut::new();
        wire.put_slice(b"\n\r\n");
        Frame::new("MESSAGE").header("a", "b").body(Bytes::from_static(b"xyz")).encode(&mut wire);
        let all = wire.clone().freeze();
        for cut in 0..all.len() {
            let mut part = BytesMut::from(&all[..cut]);
            while let Some(d) = decode(&mut part).expect("valid prefix") {
                assert_eq!(d, Decoded::HeartBeat);
            }
        }
        let mut whole = BytesMut::from(&all[..]);
        assert_eq!(decode(&mut whole).unwrap(), Some(Decoded::HeartBeat));
        assert_eq!(decode(&mut whole).unwrap(), Some(Decoded::HeartBeat));
        assert!(matches!(decode(&mut whole).unwrap(), Some(Decoded::Frame(f)) if f.body.as_ref() == b"xyz"));
    }

    #[test]
    fn bodies_without_length_end_at_nul_and_crlf_is_accepted() {
        let mut wire = BytesMut::from(&b"RECEIPT\r\nreceipt-id:7\r\n\r\nhi\0"[..]);
        let Some(Decoded::Frame(f)) = decode(&mut wire).unwrap() else { panic!("frame") };
        assert_eq!((f.command.as_str(), f.get("receipt-id"), f.body.as_ref()), ("RECEIPT", Some("7"), &b"hi"[..]));
    }

    #[test]
    fn connected_headers_are_not_unescaped_and_first_repeat_wins() {
        let mut wire = BytesMut::from(&b"CONNECTED\nserver:a\\cb\nv:1\nv:2\n\n\0"[..]);
        let Some(Decoded::Frame(f)) = decode(&mut wire).unwrap() else { panic!("frame") };
        assert_eq!(f.get("server"), Some("a\\cb"));
        assert_eq!(f.get("v"), Some("1"));
    }

    #[test]
    fn malformed_input_is_an_error() {
        for wire in [
            &b"send\n\n\0"[..],
            b"SEND\nnocolon\n\n\0",
            b"SEND\nk:\\t\n\n\0",
            b"SEND\ncontent-length:x\n\n\0",
            b"SEND\ncontent-length:2\n\nabc\0",
            b"\rX",
        ] {
            assert!(decode(&mut BytesMut::from(wire)).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
        let mut huge = BytesMut::from(&b"SEND\n"[..]);
        huge.put_slice(&vec![b'a'; MAX_HEADER_BYTES + 10]);
        assert!(decode(&mut huge).is_err());
        let mut big_body = BytesMut::from(format!("SEND\ncontent-length:{}\n\n", MAX_BODY_BYTES + 1).as_bytes());
        assert!(decode(&mut big_body).is_err());
    }

    /// The fuzz target's check (`fuzz/fuzz_targets/stomp_frame.rs`), run here on
    /// mutations of valid frames: decoding never panics, and whatever decodes encodes
    /// back to an equal frame.
    #[test]
    fn mutated_input_never_panics_and_round_trips() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut valid = BytesMut::new();
        Frame::new("MESSAGE")
            .header("subscription", "s1")
            .header("we\\ird", "a:b\nc")
            .body(Bytes::from_static(b"body\0bytes"))
            .encode(&mut valid);
        valid.put_slice(b"\nRECEIPT\nreceipt-id:9\n\n\0ERROR\nmessage:x\n\nno length\0");
        for _ in 0..20_000 {
            let mut input = valid.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[at] = next() as u8,
                    1 => input.insert(at, b"\\:\n\r\0"[(next() % 5) as usize]),
                    _ => {
                        input.remove(at);
                    }
                }
            }
            check(&input);
        }
    }

    fn without_length(mut f: Frame) -> Frame {
        f.headers.retain(|(k, _)| k != "content-length");
        f
    }

    pub(crate) fn check(input: &[u8]) {
        let mut buf = BytesMut::from(input);
        while let Ok(Some(d)) = decode(&mut buf) {
            if let Decoded::Frame(f) = d
                && f.escapes()
            {
                let mut again = BytesMut::new();
                f.encode(&mut again);
                match decode(&mut again) {
                    // Encoding adds a content-length where the body had none.
                    Ok(Some(Decoded::Frame(back))) => assert_eq!(without_length(back), without_length(f)),
                    other => panic!("{f:?} did not round-trip: {other:?}"),
                }
            }
        }
    }
}
