//! Secrets out of everything an upstream can make baton say.
//!
//! Some upstreams echo the request's headers in a 401/400 body, so a route's
//! key can come back inside an error message; from there a failure's detail
//! reaches the client (a 503 body, a stream's error event), `/events`, the
//! recordings and the logs. A [`Redactor`] is built once from every secret
//! the config read (route keys, the client key) and is applied where upstream
//! text becomes a [`FailureKind`] (the SSE transport), so every sink after
//! that point only ever sees redacted, bounded text.
//!
//! What is replaced by [`REDACTED`]:
//!
//! * every configured secret, wherever it appears; also a secret's start
//!   (at least [`MIN_CUT_SECRET`] characters) at the very end of a text, which
//!   is what is left of it when a bounded snippet cut it;
//! * the token after `Bearer ` (any case), whatever it is: an echoed
//!   `Authorization` header of a key baton was not told about;
//! * `sk-…` tokens (OpenAI's and Anthropic's key shape) of at least
//!   [`MIN_SK_TOKEN`] characters after the `sk-`, starting a word.
//!
//! Then the text is cut to [`MAX_MESSAGE_CHARS`] characters: an upstream's
//! message is passed on, not its whole body.

use std::sync::Arc;

use crate::failure::FailureKind;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// The longest upstream message passed on, in characters (after redaction).
pub const MAX_MESSAGE_CHARS: usize = 300;

/// The shortest start of a secret redacted when a text ends with it.
pub const MIN_CUT_SECRET: usize = 6;

/// The fewest token characters after `sk-` for a word to count as a key.
pub const MIN_SK_TOKEN: usize = 16;

/// Replaces configured secrets and key-shaped tokens in upstream text, and bounds it.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is replaced whole.
    secrets: Arc<[String]>,
}

impl std::fmt::Debug for Redactor {
    // The secrets themselves never show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor for `secrets` (empty ones are ignored).
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Self {
        let mut list: Vec<String> = secrets
            .into_iter()
            .map(|s| s.as_ref().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        list.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        list.dedup();
        Redactor { secrets: list.into() }
    }

    /// This redactor's secrets and `more`'s.
    pub fn union(&self, more: &Redactor) -> Self {
        Redactor::new(self.secrets.iter().chain(more.secrets.iter()))
    }

    /// `text` with every secret and key-shaped token replaced, unbounded.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.secrets.iter() {
            out = replace_ignoring_case(&out, secret);
        }
        out = self.cut_secret_at_end(out);
        let out = redact_after_bearer(&out);
        redact_sk_tokens(&out)
    }

    /// `text` redacted, then cut to [`MAX_MESSAGE_CHARS`] characters (`…` marks a cut).
    pub fn message(&self, text: &str) -> String {
        bound(&self.redact(text))
    }

    /// `kind` with every text it carries from the upstream redacted and bounded.
    pub fn failure(&self, kind: FailureKind) -> FailureKind {
        let m = |s: String| self.message(&s);
        match kind {
            FailureKind::Connect { detail } => FailureKind::Connect { detail: m(detail) },
            FailureKind::Reset { detail } => FailureKind::Reset { detail: m(detail) },
            FailureKind::ContextLength { message } => FailureKind::ContextLength { message: m(message) },
            FailureKind::ContentPolicy { message } => FailureKind::ContentPolicy { message: m(message) },
            FailureKind::PrefillRejected { message } => FailureKind::PrefillRejected { message: m(message) },
            FailureKind::Auth { status, message } => FailureKind::Auth {
                status,
                message: m(message),
            },
            FailureKind::Rejected { status, message, code } => FailureKind::Rejected {
                status,
                message: m(message),
                code,
            },
            FailureKind::Truncated { detail } => FailureKind::Truncated { detail: detail.map(m) },
            FailureKind::Malformed { detail } => FailureKind::Malformed { detail: m(detail) },
            FailureKind::TooLarge { what, limit } => FailureKind::TooLarge { what: m(what), limit },
            FailureKind::ContentEncoding { encoding } => FailureKind::ContentEncoding { encoding: m(encoding) },
            FailureKind::ErrorEvent { message } => FailureKind::ErrorEvent { message: m(message) },
            // The rest carry numbers and durations only.
            other => other,
        }
    }

    /// A text that ends with the start of a secret lost the rest to a cut: the start goes too.
    fn cut_secret_at_end(&self, mut text: String) -> String {
        let body_len = text.trim_end_matches('…').len();
        for secret in self.secrets.iter() {
            let body = &text[..body_len];
            let longest = secret
                .char_indices()
                .map(|(i, _)| i)
                .chain([secret.len()])
                .filter(|&n| secret[..n].chars().count() >= MIN_CUT_SECRET.min(secret.chars().count()))
                .rev()
                .find(|&n| n > 0 && ends_with_ignoring_case(body, &secret[..n]));
            if let Some(n) = longest {
                text.replace_range(body_len - n..body_len, REDACTED);
                return text;
            }
        }
        text
    }
}

/// `text` with every occurrence of `secret` replaced, ASCII case ignored
/// (some upstreams echo a request's headers lower-cased).
fn replace_ignoring_case(text: &str, secret: &str) -> String {
    // ASCII lower-casing keeps every byte offset, so offsets found in `lower` hold in `text`.
    let lower = text.to_ascii_lowercase();
    let needle = secret.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    while let Some(found) = lower[rest..].find(&needle) {
        out.push_str(&text[rest..rest + found]);
        out.push_str(REDACTED);
        rest += found + needle.len();
    }
    out.push_str(&text[rest..]);
    out
}

/// At most [`MAX_MESSAGE_CHARS`] characters of `text`, `…` marking a cut.
fn bound(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn ends_with_ignoring_case(text: &str, end: &str) -> bool {
    text.len() >= end.len() && text.as_bytes()[text.len() - end.len()..].eq_ignore_ascii_case(end.as_bytes())
}

/// Characters a bearer token or an `sk-` key is made of.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=')
}

/// Replaces the token after every `Bearer ` (any case, one or more spaces).
fn redact_after_bearer(text: &str) -> String {
    const WORD: &str = "bearer";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    let mut from = 0;
    while let Some(found) = lower[from..].find(WORD) {
        let start = from + found + WORD.len();
        let spaces = text[start..].len() - text[start..].trim_start_matches(' ').len();
        let token_start = start + spaces;
        let token_len = text[token_start..]
            .find(|c: char| !is_token_char(c))
            .unwrap_or(text.len() - token_start);
        from = start;
        if spaces == 0 || token_len == 0 || text[token_start..].starts_with(REDACTED) {
            continue;
        }
        out.push_str(&text[rest..token_start]);
        out.push_str(REDACTED);
        rest = token_start + token_len;
        from = rest;
    }
    out.push_str(&text[rest..]);
    out
}

/// Replaces `sk-` tokens that start a word and are long enough to be keys.
fn redact_sk_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    let mut from = 0;
    while let Some(found) = text[from..].find("sk-") {
        let at = from + found;
        let starts_word = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        let body = &text[at + 3..];
        let len = body.find(|c: char| !is_token_char(c)).unwrap_or(body.len());
        from = at + 3;
        if starts_word && len >= MIN_SK_TOKEN {
            out.push_str(&text[rest..at]);
            out.push_str(REDACTED);
            rest = at + 3 + len;
            from = rest;
        }
    }
    out.push_str(&text[rest..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_secrets_are_replaced_wherever_they_appear() {
        let r = Redactor::new(["route-key-123", "", "client-key"]);
        assert_eq!(
            r.redact(r#"{"headers":{"x-api-key":"route-key-123"},"echo":"client-key,route-key-123"}"#),
            r#"{"headers":{"x-api-key":"[redacted]"},"echo":"[redacted],[redacted]"}"#
        );
        assert_eq!(r.redact("nothing secret"), "nothing secret");
        // Echoed lower-cased, a key is still the key.
        let mixed = Redactor::new(["sk-Route-KEY-7c3f"]);
        assert_eq!(mixed.redact("x-api-key: sk-route-key-7c3f!"), "x-api-key: [redacted]!");
    }

    #[test]
    fn a_secret_inside_another_is_replaced_as_the_longer_one() {
        let r = Redactor::new(["abc", "abcdef-long"]);
        assert_eq!(r.redact("key abcdef-long and abc"), "key [redacted] and [redacted]");
    }

    #[test]
    fn bearer_tokens_and_sk_keys_are_replaced_even_when_not_configured() {
        let r = Redactor::default();
        assert_eq!(
            r.redact("authorization: Bearer abc.def-ghi, more"),
            "authorization: Bearer [redacted], more"
        );
        assert_eq!(r.redact("BEARER  tok"), "BEARER  [redacted]");
        assert_eq!(r.redact("a bearer, of news"), "a bearer, of news");
        assert_eq!(
            r.redact("key sk-ant-api03-ABCDEFGHIJKLMNOP was wrong"),
            "key [redacted] was wrong"
        );
        // Too short, or inside a word: not a key.
        assert_eq!(
            r.redact("sk-short and task-abcdefghijklmnopqrstu"),
            "sk-short and task-abcdefghijklmnopqrstu"
        );
    }

    #[test]
    fn the_start_of_a_secret_cut_off_at_the_end_is_replaced() {
        let r = Redactor::new(["sk-live-0123456789"]);
        assert_eq!(r.redact("echo: sk-live-01…"), "echo: [redacted]…");
        assert_eq!(r.redact("echo: sk-liv"), "echo: [redacted]");
        assert_eq!(r.redact("echo: SK-LIVE-0"), "echo: [redacted]");
        // Five characters are not enough to tell.
        assert_eq!(r.redact("task sk-li"), "task sk-li");
        let short = Redactor::new(["abc"]);
        assert_eq!(short.redact("xyz ab"), "xyz ab");
        assert_eq!(short.redact("xyz abc"), "xyz [redacted]");
    }

    #[test]
    fn messages_are_bounded_after_redaction() {
        let secret = "s".repeat(20);
        let r = Redactor::new([secret.as_str()]);
        let long = format!("{}{secret}", "é".repeat(MAX_MESSAGE_CHARS - 5));
        let message = r.message(&long);
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(message.ends_with("é[reda…"), "{message}");
        assert!(!message.contains('s'));
        assert_eq!(r.message("short"), "short");
    }

    #[test]
    fn a_failure_keeps_its_kind_and_loses_its_secrets() {
        let r = Redactor::new(["k-9f2c-secret"]);
        let kind = r.failure(FailureKind::Auth {
            status: 401,
            message: "bad key k-9f2c-secret".into(),
        });
        assert_eq!(
            kind,
            FailureKind::Auth {
                status: 401,
                message: "bad key [redacted]".into()
            }
        );
        let truncated = r.failure(FailureKind::Truncated {
            detail: Some("k-9f2c-secret".into()),
        });
        assert_eq!(
            truncated,
            FailureKind::Truncated {
                detail: Some(REDACTED.into())
            }
        );
        assert_eq!(r.failure(FailureKind::CircuitOpen), FailureKind::CircuitOpen);
        assert_eq!(format!("{r:?}"), "Redactor { secrets: 1 }");
    }
}
