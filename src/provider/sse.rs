//! Server-sent events from an upstream, as [`Chunk`]s: the transport half
//! every SSE provider shares. Each provider brings only the parser of its
//! events' payloads ([`ParseEvent`]).
//!
//! What the transport decides, whatever the provider:
//!
//! * **Status.** Anything but 200 is classified by
//!   [`classify_http`](super::openai::classify_http) from the status, its
//!   `Retry-After` and at most [`ERROR_BODY_LIMIT`] bytes of the body, read for
//!   at most [`ERROR_BODY_TIME`].
//! * **Encoding.** baton asks for `Accept-Encoding: identity` and does not
//!   decode compressed bodies: a streamed answer gains nothing from
//!   compression, a compressing intermediary may hold tokens back until its
//!   block fills (a false stall), and a decompressor would be one more place a
//!   hostile upstream could make memory grow. A response that is compressed
//!   anyway is a [`FailureKind::ContentEncoding`] failure.
//! * **Content type.** A 200 that is not `text/event-stream` (an HTML error
//!   page, a whole JSON completion from a server that ignored `stream`) is
//!   [`FailureKind::Malformed`].
//! * **Body.** Decoded by our own bounded [`SseDecoder`] (see its module for
//!   why not `reqwest-eventsource`): a line or event over its [`SseLimits`] is
//!   [`FailureKind::TooLarge`], invalid UTF-8 is malformed, a transport error
//!   or a body cut inside an event is [`FailureKind::Truncated`]. An event
//!   named `error` is a failure whatever its data; an event with blank data
//!   is a keep-alive. There are no retries: baton owns them.
//! * **Secrets.** Every failure leaves through the provider's
//!   [`Redactor`]: an error body or a chunk can echo the request's key, and a
//!   failure's text reaches the client, events, recordings and logs.

mod decoder;

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderValue, ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};

pub use decoder::{SseDecoder, SseError, SseEvent, SseLimits};

use super::{Chunk, ChunkStream};
use crate::failure::FailureKind;
use crate::redact::Redactor;

/// How much of an error body is read to classify it.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// How long an error body is read for: one that trickles forever is classified
/// by what arrived, instead of holding the attempt until a deadline.
pub const ERROR_BODY_TIME: Duration = Duration::from_secs(2);

/// Turns one event (its name, `""` when unnamed, and its data) into chunks.
pub type ParseEvent = fn(&str, &str) -> Result<Vec<Chunk>, FailureKind>;

/// Streams the SSE response to `builder`, each event parsed by `parse`, with `limits` on its size;
/// every failure's text goes through `redactor` (an error body may echo the request's key).
pub fn stream(
    builder: reqwest::RequestBuilder,
    parse: ParseEvent,
    limits: SseLimits,
    redactor: Redactor,
) -> ChunkStream {
    Box::pin(async_stream::stream! {
        // Counted from the request being sent until this stream is dropped, so a
        // client that vanished without its upstream being cancelled shows in /metrics.
        let _open = crate::live::LiveGuard::upstream();
        let response = match open(builder).await {
            Ok(response) => response,
            Err(kind) => {
                yield Err(redactor.failure(kind));
                return;
            }
        };
        yield Ok(Chunk::Opened);
        let mut chunks = std::pin::pin!(decode_body(response.bytes_stream(), parse, limits));
        while let Some(item) = chunks.next().await {
            yield item.map_err(|kind| redactor.failure(kind));
        }
    })
}

/// Sends the request and accepts the response: status 200, not compressed, an event stream.
async fn open(builder: reqwest::RequestBuilder) -> Result<reqwest::Response, FailureKind> {
    let response = builder
        .header(ACCEPT, HeaderValue::from_static("text/event-stream"))
        .header(ACCEPT_ENCODING, HeaderValue::from_static("identity"))
        .send()
        .await
        .map_err(|e| {
            let detail = transport_detail(&e);
            if let Some(resource) = crate::failure::local_exhaustion(&e) {
                FailureKind::LocalResources {
                    resource: resource.to_string(),
                    detail,
                }
            } else if e.is_connect() {
                FailureKind::Connect { detail }
            } else {
                FailureKind::Reset { detail }
            }
        })?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_capped(response).await;
        return Err(super::openai::classify_http(
            status.as_u16(),
            retry_after.as_deref(),
            &body,
        ));
    }
    let headers = response.headers();
    if let Some(encoding) = headers.get(CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(encoding.as_bytes()).trim().to_string();
        if !encoding.eq_ignore_ascii_case("identity") {
            return Err(FailureKind::ContentEncoding { encoding });
        }
    }
    let content_type = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes).unwrap_or_default();
    if !is_event_stream(content_type) {
        return Err(FailureKind::Malformed {
            detail: format!(
                "content type {:?} is not text/event-stream",
                snippet(&String::from_utf8_lossy(content_type))
            ),
        });
    }
    Ok(response)
}

/// Whether a `Content-Type` value is `text/event-stream`, parameters allowed.
fn is_event_stream(value: &[u8]) -> bool {
    let essence = value.split(|b| *b == b';').next().unwrap_or_default();
    essence.trim_ascii().eq_ignore_ascii_case(b"text/event-stream")
}

/// Decodes an accepted SSE body into chunks (everything after the headers).
///
/// `body` is the raw byte stream; its error ends the stream as a truncation.
/// The stream ends after `[DONE]` (a [`Chunk::Done`]), at the end of the body,
/// or with the first failure.
pub fn decode_body<S, E>(
    body: S,
    parse: ParseEvent,
    limits: SseLimits,
) -> impl Stream<Item = Result<Chunk, FailureKind>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::error::Error + Send,
{
    async_stream::stream! {
        let mut body = std::pin::pin!(body);
        let mut decoder = SseDecoder::new(limits);
        // Reused for every fed buffer: the hot path allocates per event, not per read.
        let mut events = Vec::new();
        loop {
            let bytes = match body.next().await {
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => {
                    yield Err(FailureKind::Truncated { detail: Some(transport_detail(&e)) });
                    return;
                }
                None => {
                    if decoder.finish() {
                        yield Err(FailureKind::Truncated {
                            detail: Some("the body ended inside an event".to_string()),
                        });
                    }
                    return;
                }
            };
            // Events completed before a decoding error are still delivered: their text is sound.
            let fed = decoder.feed(&bytes, &mut events);
            for event in events.drain(..) {
                match event_chunks(&event, parse) {
                    Ok(chunks) => {
                        let done = chunks.contains(&Chunk::Done);
                        for chunk in chunks {
                            yield Ok(chunk);
                        }
                        if done {
                            return;
                        }
                    }
                    Err(kind) => {
                        yield Err(kind);
                        return;
                    }
                }
            }
            if let Err(e) = fed {
                yield Err(decoding_failure(e));
                return;
            }
        }
    }
}

/// The chunks of one event, or the failure it reports.
fn event_chunks(event: &SseEvent, parse: ParseEvent) -> Result<Vec<Chunk>, FailureKind> {
    let is_error = event.event == "error";
    if event.data.trim().is_empty() {
        return if is_error {
            Err(FailureKind::ErrorEvent {
                message: "an error event without data".to_string(),
            })
        } else {
            Ok(Vec::new())
        };
    }
    match parse(&event.event, &event.data) {
        // An event named `error` is a failure even if its data says little or
        // is not a chunk; the parser's reading of an error object (a policy
        // refusal, say) wins when it has one.
        Err(FailureKind::Malformed { .. }) | Ok(_) if is_error => Err(FailureKind::ErrorEvent {
            message: snippet(&event.data),
        }),
        parsed => parsed,
    }
}

/// The failure a decoding error stands for.
fn decoding_failure(e: SseError) -> FailureKind {
    match e {
        SseError::LineTooLong { limit } => FailureKind::TooLarge {
            what: "line".to_string(),
            limit: limit as u64,
        },
        SseError::EventTooLarge { limit } => FailureKind::TooLarge {
            what: "event".to_string(),
            limit: limit as u64,
        },
        SseError::InvalidUtf8 { .. } => FailureKind::Malformed { detail: e.to_string() },
    }
}

/// The error text with its sources, which is where reqwest keeps the useful part.
fn transport_detail(e: &(dyn std::error::Error + '_)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// At most [`ERROR_BODY_LIMIT`] bytes of an error body, read for at most [`ERROR_BODY_TIME`].
async fn read_capped(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let read = async {
        while let Ok(Some(bytes)) = response.chunk().await {
            body.extend_from_slice(&bytes);
            if body.len() >= ERROR_BODY_LIMIT {
                body.truncate(ERROR_BODY_LIMIT);
                break;
            }
        }
    };
    // Timing out is fine: what arrived is classified.
    let _ = tokio::time::timeout(ERROR_BODY_TIME, read).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// At most 200 characters of `text`, for error messages.
pub fn snippet(text: &str) -> String {
    let mut out: String = text.chars().take(200).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(event: &str, data: &str) -> Result<Vec<Chunk>, FailureKind> {
        super::super::openai::parse_sse_event(event, data)
    }

    /// The chunks of `body` fed in `parts`.
    fn run(parts: &[&[u8]], limits: SseLimits) -> Vec<Result<Chunk, FailureKind>> {
        let body = futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::copy_from_slice(p)))
                .collect::<Vec<_>>(),
        );
        futures::executor::block_on(decode_body(body, parse, limits).collect())
    }

    #[test]
    fn keep_alives_and_foreign_events_are_skipped_and_done_ends_the_stream() {
        let body = b": ping\n\ndata:\n\ndata:  \n\nevent: ping\ndata: {\"type\":\"ping\"}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\ndata: after\n\n";
        assert_eq!(
            run(&[body], SseLimits::default()),
            [
                Ok(Chunk::Text("hi".into())),
                Ok(Chunk::Finish("stop".into())),
                Ok(Chunk::Done)
            ]
        );
    }

    #[test]
    fn error_events_cut_bodies_and_decoding_errors_are_failures() {
        let text = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
        let ended = |parts: &[&[u8]]| run(parts, SseLimits::default()).pop();
        assert!(matches!(
            ended(&[text, b"event: error\ndata: {\"choices\":[]}\n\n"]),
            Some(Err(FailureKind::ErrorEvent { .. }))
        ));
        assert!(matches!(
            ended(&[b"event: error\ndata:\n\n"]),
            Some(Err(FailureKind::ErrorEvent { .. }))
        ));
        assert!(matches!(
            ended(&[text, b"data: {\"choi"]),
            Some(Err(FailureKind::Truncated { detail: Some(_) }))
        ));
        assert_eq!(ended(&[text]), Some(Ok(Chunk::Text("a".into()))));
        assert!(matches!(
            ended(&[text, b"data: \"\xff\"\n\n"]),
            Some(Err(FailureKind::Malformed { .. }))
        ));
        let small = SseLimits {
            max_line_bytes: 64,
            max_event_bytes: 64,
        };
        // The event before the oversized line still arrives.
        let out = run(&[text, &[b'x'; 65]], small);
        assert_eq!(out.first(), Some(&Ok(Chunk::Text("a".into()))));
        assert_eq!(
            out.last(),
            Some(&Err(FailureKind::TooLarge {
                what: "line".into(),
                limit: 64
            }))
        );
    }

    #[test]
    fn content_types_with_parameters_and_case_are_event_streams() {
        assert!(is_event_stream(b"text/event-stream"));
        assert!(is_event_stream(b"Text/Event-Stream; charset=utf-8"));
        assert!(!is_event_stream(b"text/html"));
        assert!(!is_event_stream(b""));
        assert!(!is_event_stream(b"application/json"));
    }
}
