//! Server-sent events from an upstream, as [`Chunk`]s: the transport half
//! every SSE provider shares (status, content type, cut bodies, no retries).
//! Each provider brings only the parser of its `data:` payloads.

use futures::StreamExt;
use reqwest_eventsource::{retry::Never, Error as EsError, Event, EventSource};

use super::{Chunk, ChunkStream};
use crate::failure::FailureKind;

/// How much of an error body is read to classify it.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Streams the SSE response to `builder`, each `data:` payload parsed by `parse`.
pub fn stream(builder: reqwest::RequestBuilder, parse: fn(&str) -> Result<Vec<Chunk>, FailureKind>) -> ChunkStream {
    Box::pin(async_stream::stream! {
        let mut source = match EventSource::new(builder) {
            Ok(source) => source,
            Err(e) => {
                yield Err(FailureKind::Connect { detail: e.to_string() });
                return;
            }
        };
        // baton owns retries; the event source's own retry would hide failures.
        source.set_retry_policy(Box::new(Never));
        let mut opened = false;
        while let Some(event) = source.next().await {
            match event {
                Ok(Event::Open) => {
                    opened = true;
                    yield Ok(Chunk::Opened);
                }
                Ok(Event::Message(message)) => {
                    match parse(&message.data) {
                        // An event named `error` is a failure even if its data says little.
                        Ok(_) if message.event == "error" => {
                            yield Err(FailureKind::ErrorEvent { message: snippet(&message.data) });
                            return;
                        }
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
                Err(EsError::StreamEnded) => return,
                Err(EsError::InvalidStatusCode(status, response)) => {
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body = read_capped(response).await;
                    yield Err(super::openai::classify_http(status.as_u16(), retry_after.as_deref(), &body));
                    return;
                }
                Err(EsError::InvalidContentType(value, _)) => {
                    yield Err(FailureKind::Malformed {
                        detail: format!("content type {value:?} is not text/event-stream"),
                    });
                    return;
                }
                Err(EsError::Transport(e)) => {
                    let detail = transport_detail(&e);
                    yield Err(if opened {
                        FailureKind::Truncated { detail: Some(detail) }
                    } else if e.is_connect() {
                        FailureKind::Connect { detail }
                    } else {
                        FailureKind::Reset { detail }
                    });
                    return;
                }
                Err(e) => {
                    yield Err(FailureKind::Malformed { detail: e.to_string() });
                    return;
                }
            }
        }
    })
}

/// The error text with its sources, which is where reqwest keeps the useful part.
fn transport_detail(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn read_capped(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(bytes)) = response.chunk().await {
        body.extend_from_slice(&bytes);
        if body.len() >= ERROR_BODY_LIMIT {
            body.truncate(ERROR_BODY_LIMIT);
            break;
        }
    }
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
