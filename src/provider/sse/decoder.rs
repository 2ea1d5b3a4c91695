//! A bounded, incremental decoder of server-sent events (`text/event-stream`).
//!
//! Bytes are fed as they arrive, split anywhere (inside a line, between a CR
//! and its LF, inside a multi-byte character); complete events come out. It
//! follows the WHATWG parsing rules: lines end in CRLF, LF or CR; one leading
//! byte order mark is dropped; lines starting with `:` are comments; a field
//! without a colon has an empty value; one space after the colon is dropped;
//! `data` lines are joined with `\n`; `event` names the event; `id`, `retry`
//! and unknown fields are ignored; a blank line dispatches the event, unless it
//! had no `data` line at all. An event cut off by the end of the stream is
//! never dispatched ([`SseDecoder::finish`] says whether one was pending).
//!
//! Two deliberate departures from a browser's `EventSource`:
//!
//! * **Size caps.** A line longer than [`SseLimits::max_line_bytes`] or an
//!   event whose data outgrows [`SseLimits::max_event_bytes`] stops decoding
//!   with an error, so an upstream sending megabytes without a newline costs at
//!   most the cap in memory. This is why baton does not use
//!   `reqwest-eventsource` / `eventsource-stream` for upstreams: they buffer a
//!   line until its end, without limit.
//! * **Strict UTF-8.** `data` and `event` values must be valid UTF-8; an
//!   invalid byte is an error (a browser would substitute U+FFFD and pass a
//!   corrupted chunk on as text). Comments and ignored fields are not checked:
//!   their bytes are never used.
//!
//! The decoder is the per-chunk hot path of the proxy: a line that arrives
//! whole inside one fed buffer is never copied, lines are found with `memchr`,
//! and one event costs one allocation (its data), none for an unnamed event's
//! name.

/// Limits on what one upstream may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseLimits {
    /// The longest line accepted, in bytes, its line ending not counted.
    pub max_line_bytes: usize,
    /// The largest event accepted: the bytes of its data, lines joined.
    pub max_event_bytes: usize,
}

impl Default for SseLimits {
    /// 1 MiB per line, 4 MiB per event: far above any real chunk (a whole
    /// tool-call argument sent in one event included), far below harm.
    fn default() -> Self {
        SseLimits {
            max_line_bytes: 1024 * 1024,
            max_event_bytes: 4 * 1024 * 1024,
        }
    }
}

/// One decoded event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field; empty when the event was not named.
    pub event: String,
    /// The `data` lines, joined with `\n`.
    pub data: String,
}

/// Why decoding stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line went past [`SseLimits::max_line_bytes`] without ending.
    #[error("a line longer than the limit of {limit} bytes")]
    LineTooLong {
        /// The limit it broke.
        limit: usize,
    },
    /// An event's data went past [`SseLimits::max_event_bytes`] without a blank line.
    #[error("an event larger than the limit of {limit} bytes")]
    EventTooLarge {
        /// The limit it broke.
        limit: usize,
    },
    /// A `data` or `event` value is not valid UTF-8.
    #[error("invalid UTF-8 at byte {offset} of the stream")]
    InvalidUtf8 {
        /// Stream offset of the first invalid byte (BOM included).
        offset: u64,
    },
}

/// The UTF-8 byte order mark, dropped once at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A line buffer grown past this by one long line is freed rather than kept
/// for the rest of the stream.
const KEEP_LINE_CAPACITY: usize = 64 * 1024;

/// Incremental decoder: feed bytes as they arrive.
#[derive(Debug)]
pub struct SseDecoder {
    limits: SseLimits,
    /// The unfinished line: bytes after the last line ending. Only a line
    /// split across two fed buffers is copied here.
    line: Vec<u8>,
    /// The event being built, between blank lines.
    pending: Pending,
    /// The last fed buffer ended with CR: an LF starting the next one is the
    /// other half of that CRLF, not an empty line.
    after_cr: bool,
    /// Bytes fed so far, for error offsets.
    offset: u64,
    /// Decoding stopped: every later call returns this again.
    error: Option<SseError>,
}

/// The fields of the event being built.
#[derive(Debug)]
struct Pending {
    /// Data lines joined with `\n` (no trailing `\n`: the common single-line
    /// event then costs exactly one allocation).
    data: String,
    /// Whether a `data` line was seen, since one with an empty value still dispatches.
    has_data: bool,
    /// The `event` field.
    event: String,
    /// No line has ended yet: the next one may start with a BOM.
    first_line: bool,
}

impl SseDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: SseLimits) -> Self {
        SseDecoder {
            limits,
            line: Vec::new(),
            pending: Pending {
                data: String::new(),
                has_data: false,
                event: String::new(),
                first_line: true,
            },
            after_cr: false,
            offset: 0,
            error: None,
        }
    }

    /// Feeds bytes; complete events are pushed to `out`.
    ///
    /// On an error, the events completed before it are in `out`; decoding has
    /// stopped and every later call returns the same error.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let fed = self.feed_lines(bytes, out);
        if let Err(e) = &fed {
            self.error = Some(e.clone());
            // Nothing more will be decoded: free the buffers now.
            self.line = Vec::new();
            self.pending.data = String::new();
        }
        fed
    }

    /// The stream ended: whether a partial event was pending (a line without
    /// its ending, or fields without their blank line), i.e. the body was cut
    /// inside an event. The partial event is dropped and the decoder is ready
    /// for a new stream. `false` after an error.
    pub fn finish(&mut self) -> bool {
        let cut =
            self.error.is_none() && (!self.line.is_empty() || self.pending.has_data || !self.pending.event.is_empty());
        *self = SseDecoder::new(self.limits);
        cut
    }

    fn feed_lines(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        // An empty buffer between a CR and its LF must not forget the CR (found by fuzzing).
        if bytes.is_empty() {
            return Ok(());
        }
        let base = self.offset;
        self.offset += bytes.len() as u64;
        let max = self.limits.max_line_bytes;
        let mut pos = 0;
        if std::mem::take(&mut self.after_cr) && bytes.first() == Some(&b'\n') {
            pos = 1;
        }
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            let Some(i) = memchr::memchr2(b'\n', b'\r', rest) else {
                if self.line.len() + rest.len() > max {
                    return Err(SseError::LineTooLong { limit: max });
                }
                self.line.extend_from_slice(rest);
                return Ok(());
            };
            // Stream offset of this line ending.
            let end = base + (pos + i) as u64;
            if self.line.is_empty() {
                if i > max {
                    return Err(SseError::LineTooLong { limit: max });
                }
                self.pending.line(&rest[..i], end - i as u64, &self.limits, out)?;
            } else {
                if self.line.len() + i > max {
                    return Err(SseError::LineTooLong { limit: max });
                }
                self.line.extend_from_slice(&rest[..i]);
                let start = end - self.line.len() as u64;
                self.pending.line(&self.line, start, &self.limits, out)?;
                if self.line.capacity() > KEEP_LINE_CAPACITY {
                    self.line = Vec::new();
                } else {
                    self.line.clear();
                }
            }
            pos += i + 1;
            if rest[i] == b'\r' {
                match bytes.get(pos) {
                    Some(b'\n') => pos += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        Ok(())
    }
}

impl Pending {
    /// Applies one complete line (without its ending) that starts at stream offset `start`.
    fn line(
        &mut self,
        mut line: &[u8],
        mut start: u64,
        limits: &SseLimits,
        out: &mut Vec<SseEvent>,
    ) -> Result<(), SseError> {
        if std::mem::take(&mut self.first_line) {
            if let Some(rest) = line.strip_prefix(BOM) {
                line = rest;
                start += BOM.len() as u64;
            }
        }
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        let (name, value, value_at) = match memchr::memchr(b':', line) {
            Some(0) => return Ok(()), // a comment
            Some(c) => {
                let skip = if line.get(c + 1) == Some(&b' ') { c + 2 } else { c + 1 };
                (&line[..c], &line[skip..], start + skip as u64)
            }
            None => (line, &line[line.len()..], start + line.len() as u64),
        };
        match name {
            b"data" => {
                let value = utf8(value, value_at)?;
                let joined = self.data.len() + usize::from(self.has_data) + value.len();
                if joined > limits.max_event_bytes {
                    return Err(SseError::EventTooLarge {
                        limit: limits.max_event_bytes,
                    });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            b"event" => {
                let value = utf8(value, value_at)?;
                self.event.clear();
                self.event.push_str(value);
            }
            // `id`, `retry` and unknown fields: baton never reconnects by itself.
            _ => {}
        }
        Ok(())
    }

    /// A blank line: the event is complete.
    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if std::mem::take(&mut self.has_data) {
            out.push(SseEvent {
                event: std::mem::take(&mut self.event),
                data: std::mem::take(&mut self.data),
            });
        } else {
            self.event.clear();
        }
    }
}

/// `bytes` as text, or the stream offset of its first invalid byte (`at` is where `bytes` starts).
fn utf8(bytes: &[u8], at: u64) -> Result<&str, SseError> {
    std::str::from_utf8(bytes).map_err(|e| SseError::InvalidUtf8 {
        offset: at + e.valid_up_to() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    /// Decodes `input` fed in one piece, then one byte at a time: both must agree.
    fn decode(input: &[u8], limits: SseLimits) -> Result<Vec<SseEvent>, SseError> {
        let mut whole = Vec::new();
        let result = SseDecoder::new(limits).feed(input, &mut whole).map(|()| whole);
        let mut bytewise = Vec::new();
        let mut d = SseDecoder::new(limits);
        let split = input
            .iter()
            .try_for_each(|b| d.feed(std::slice::from_ref(b), &mut bytewise))
            .map(|()| bytewise);
        assert_eq!(result, split, "whole vs byte at a time for {input:?}");
        result
    }

    fn ok(input: &str) -> Vec<SseEvent> {
        decode(input.as_bytes(), SseLimits::default()).unwrap_or_else(|e| panic!("{e} for {input:?}"))
    }

    #[test]
    fn follows_the_whatwg_field_rules() {
        assert_eq!(ok("data: a\n\n"), [event("", "a")]);
        assert_eq!(ok("data:a\ndata:  b\n\n"), [event("", "a\n b")]);
        assert_eq!(ok("event: ping\ndata\n\n"), [event("ping", "")]);
        assert_eq!(
            ok(": comment\nid: 7\nretry: 10\nfoo: bar\ndata: x\n\n"),
            [event("", "x")]
        );
        // No data line: nothing dispatched, and the name does not leak into the next event.
        assert_eq!(ok("event: lone\n\ndata: y\n\n"), [event("", "y")]);
        assert_eq!(ok("data:\n\n"), [event("", "")]);
        assert_eq!(ok("data: x:y: z\n\n"), [event("", "x:y: z")]);
        // Field names are case-sensitive.
        assert_eq!(ok("Data: no\n\n"), []);
        // A cut event is not dispatched.
        assert_eq!(ok("data: cut\n"), []);
    }

    #[test]
    fn an_empty_buffer_between_cr_and_lf_is_not_a_blank_line() {
        // Fuzz finding: the empty feed cleared the pending CR, so the LF after it
        // ended a second, empty line and dispatched the event early.
        let mut d = SseDecoder::new(SseLimits::default());
        let mut out = Vec::new();
        for part in ["data: a\r", "", "\n", "data: b\r\n", "\r\n"] {
            assert_eq!(d.feed(part.as_bytes(), &mut out), Ok(()));
        }
        assert_eq!(out, [event("", "a\nb")]);
    }

    #[test]
    fn every_line_ending_and_a_leading_bom() {
        let expected = [event("", "a\nb"), event("e", "c")];
        for eol in ["\n", "\r\n", "\r"] {
            let body = format!("data: a{eol}data: b{eol}{eol}event: e{eol}data: c{eol}{eol}");
            assert_eq!(ok(&body), expected, "{eol:?}");
            assert_eq!(ok(&format!("\u{feff}{body}")), expected, "BOM, {eol:?}");
        }
        // Only one BOM, and only at the very start.
        assert_eq!(ok("\u{feff}\u{feff}data: a\n\n"), []);
        assert_eq!(ok("data: a\n\n\u{feff}data: b\n\n"), [event("", "a")]);
        // CR then LF in the next buffer is one line ending.
        let mut d = SseDecoder::new(SseLimits::default());
        let mut out = Vec::new();
        for part in ["data: a\r", "\n", "\r", "\ndata: b\r\r"] {
            assert_eq!(d.feed(part.as_bytes(), &mut out), Ok(()));
        }
        assert_eq!(out, [event("", "a"), event("", "b")]);
    }

    #[test]
    fn a_line_over_the_cap_fails_without_buffering_it() {
        let limits = SseLimits {
            max_line_bytes: 16,
            max_event_bytes: 64,
        };
        // Exactly at the limit is fine.
        assert_eq!(
            decode(b"data: 0123456789\n\n", limits),
            Ok(vec![event("", "0123456789")])
        );
        assert_eq!(
            decode(b"data: 0123456789a\n\n", limits),
            Err(SseError::LineTooLong { limit: 16 })
        );
        // No newline ever: the error comes once the buffer passes the cap.
        let mut d = SseDecoder::new(limits);
        let mut out = Vec::new();
        assert_eq!(d.feed(b"data: 0123456789", &mut out), Ok(()));
        assert_eq!(d.feed(b"x", &mut out), Err(SseError::LineTooLong { limit: 16 }));
        assert_eq!(d.line.capacity(), 0, "buffers freed after an error");
        // Sticky, and a finish after an error reports no cut.
        assert_eq!(d.feed(b"\n\n", &mut out), Err(SseError::LineTooLong { limit: 16 }));
        assert!(!d.finish());
    }

    #[test]
    fn an_event_over_the_cap_fails_and_earlier_events_are_kept() {
        let limits = SseLimits {
            max_line_bytes: 16,
            max_event_bytes: 10,
        };
        // "aaaa\nbbbbb" is 10 bytes: at the limit.
        assert_eq!(
            decode(b"data: aaaa\ndata: bbbbb\n\n", limits),
            Ok(vec![event("", "aaaa\nbbbbb")])
        );
        let mut out = Vec::new();
        let mut d = SseDecoder::new(limits);
        let fed = d.feed(b"data: ok\n\ndata: aaaa\ndata: bbbbbb\n\n", &mut out);
        assert_eq!(fed, Err(SseError::EventTooLarge { limit: 10 }));
        assert_eq!(out, [event("", "ok")]);
    }

    #[test]
    fn invalid_utf8_in_data_is_an_error_with_its_offset_but_not_in_a_comment() {
        assert_eq!(
            decode(b"data: {\"a\":\"\xff\"}\n\n", SseLimits::default()),
            Err(SseError::InvalidUtf8 { offset: 12 })
        );
        // A multi-byte character split across buffers is fine.
        assert_eq!(ok("data: 日本🚀\n\n"), [event("", "日本🚀")]);
        assert_eq!(
            decode(b": \xff\xfe\nx-junk: \xc3\ndata: ok\n\n", SseLimits::default()),
            Ok(vec![event("", "ok")])
        );
        assert_eq!(
            decode(b"event: \xc3\n", SseLimits::default()),
            Err(SseError::InvalidUtf8 { offset: 7 })
        );
    }

    #[test]
    fn finish_reports_a_cut_event() {
        for (body, cut) in [
            ("data: a\n\n", false),
            ("data: a\n\n: trailing comment\n", false),
            ("data: a\r", true),
            ("data: a\r\r", false),
            ("data: a\n", true),
            ("data: {\"choi", true),
            ("event: x\n", true),
        ] {
            let mut d = SseDecoder::new(SseLimits::default());
            let mut out = Vec::new();
            assert_eq!(d.feed(body.as_bytes(), &mut out), Ok(()));
            assert_eq!(d.finish(), cut, "{body:?}");
            // Ready for a new stream, BOM included.
            assert_eq!(d.feed("\u{feff}data: b\n\n".as_bytes(), &mut out), Ok(()));
            assert_eq!(out.last(), Some(&event("", "b")));
        }
    }
}
