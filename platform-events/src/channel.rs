//! Channel names and the patterns that subscribe to them.
//!
//! A channel name is one or more segments joined by `.` (`system.events`,
//! `jobs.42.events`): each segment 1 to 64 characters of ASCII letters, digits, `_`,
//! `-` and `:`, at most 16 segments and 255 characters in all. A pattern is a channel
//! name whose segments may also be `*` (exactly one segment) or, as the last segment,
//! `>` (one or more segments): `jobs.*.events`, `jobs.>`.

use std::fmt;

use platform_core::{Error, Result};

/// The longest channel name or pattern.
pub const MAX_CHANNEL_LEN: usize = 255;
/// The most segments a channel name or pattern has.
pub const MAX_SEGMENTS: usize = 16;
/// The longest segment.
pub const MAX_SEGMENT_LEN: usize = 64;

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SEGMENT_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':'))
}

fn shape(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
        return Err(invalid(what, name, &format!("must be 1 to {MAX_CHANNEL_LEN} characters")));
    }
    if name.split('.').count() > MAX_SEGMENTS {
        return Err(invalid(what, name, &format!("has more than {MAX_SEGMENTS} segments")));
    }
    Ok(())
}

fn invalid(what: &str, name: &str, why: &str) -> Error {
    let shown: String = name.chars().take(80).collect();
    Error::invalid_input(format!("{what} {shown:?} {why}")).with_detail(what.to_owned(), why.to_owned())
}

/// Checks a channel name to publish on: no wildcards.
pub fn validate_channel(name: &str) -> Result<()> {
    shape("channel", name)?;
    if let Some(bad) = name.split('.').find(|s| !segment_ok(s)) {
        let why = if bad == "*" || bad == ">" {
            "holds a wildcard: publish to a channel, subscribe with a pattern".to_owned()
        } else {
            format!("has a bad segment {bad:?} (1 to {MAX_SEGMENT_LEN} of A-Z a-z 0-9 _ - :)")
        };
        return Err(invalid("channel", name, &why));
    }
    Ok(())
}

/// A subscription pattern, checked: segments, `*` for one segment, `>` last for the
/// rest.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, PartialEq, Eq)]
enum Segment {
    Exact(String),
    One,
    Rest,
}

impl Pattern {
    /// Parses and checks `pattern`.
    pub fn parse(pattern: &str) -> Result<Self> {
        shape("pattern", pattern)?;
        let parts: Vec<&str> = pattern.split('.').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "*" => Segment::One,
                ">" if i + 1 == parts.len() => Segment::Rest,
                ">" => return Err(invalid("pattern", pattern, "has `>` before its last segment")),
                s if segment_ok(s) => Segment::Exact(s.to_owned()),
                s => {
                    let why =
                        format!("has a bad segment {s:?} (1 to {MAX_SEGMENT_LEN} of A-Z a-z 0-9 _ - :, or * or >)");
                    return Err(invalid("pattern", pattern, &why));
                }
            });
        }
        Ok(Self { text: pattern.to_owned(), segments })
    }

    /// Whether `channel` (a valid channel name) matches.
    pub fn matches(&self, channel: &str) -> bool {
        let mut parts = channel.split('.');
        for seg in &self.segments {
            match seg {
                Segment::Rest => return parts.next().is_some(),
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Exact(s) => {
                    if parts.next() != Some(s.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// Whether the pattern holds a wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.segments.iter().any(|s| !matches!(s, Segment::Exact(_)))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_checked() {
        for ok in ["system.events", "jobs.0190a3b2-7c1d.events", "a", "tenant:acme.x_y"] {
            validate_channel(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", ".", "a..b", "a.", "jobs.*.events", "jobs.>", "sp ace", "ü", &"a.".repeat(16), &"x".repeat(65)]
        {
            assert!(validate_channel(bad).expect_err(bad).is_invalid_input());
        }
    }

    #[test]
    fn patterns_match_by_segment() {
        let cases = [
            ("jobs.*.events", "jobs.42.events", true),
            ("jobs.*.events", "jobs.42.7.events", false),
            ("jobs.*.events", "jobs.events", false),
            ("jobs.>", "jobs.42", true),
            ("jobs.>", "jobs.42.events", true),
            ("jobs.>", "jobs", false),
            (">", "anything.at.all", true),
            ("*", "one", true),
            ("*", "one.two", false),
            ("system.events", "system.events", true),
            ("system.events", "system.events.x", false),
            ("system.events", "system", false),
        ];
        for (pattern, channel, expected) in cases {
            let p = Pattern::parse(pattern).expect(pattern);
            assert_eq!(p.matches(channel), expected, "{pattern} ~ {channel}");
        }
        for bad in ["", "a.>.b", "a..b", "a.*x", "a.>x"] {
            assert!(Pattern::parse(bad).expect_err(bad).is_invalid_input(), "{bad}");
        }
        assert!(Pattern::parse("a.*").expect("p").is_wildcard());
        assert!(!Pattern::parse("a.b").expect("p").is_wildcard());
    }
}
