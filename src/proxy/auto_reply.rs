//! Answers written straight to a socket, outside the router, in the
//! OpenAI-style JSON every other error of baton has.
//!
//! hyper answers a request it cannot parse (400, 414, 431) by itself, before
//! the router sees it, with an empty body: [`replacement`] is the answer the
//! connection's socket wrapper swaps in when it sees hyper's head go out for
//! a request the service never received. A connection over the cap gets
//! [`over_capacity`] before its request is even read.

use bytes::Bytes;

use super::wire::ApiError;
use axum::http::StatusCode;

/// The whole response to write instead of hyper's own answer `head`, when it is one.
pub fn replacement(head: &[u8]) -> Option<Bytes> {
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let status = StatusCode::from_bytes(status).ok()?;
    let (code, message) = match status {
        StatusCode::BAD_REQUEST => ("bad_request", "the request is not valid HTTP/1.1"),
        StatusCode::URI_TOO_LONG => ("uri_too_long", "the request target is too long"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "request_header_fields_too_large",
            "the request head is too large or has too many header fields",
        ),
        _ => return None,
    };
    Some(render(&ApiError {
        status,
        message: message.to_string(),
        kind: "invalid_request_error",
        code,
        retry_after: None,
    }))
}

/// The whole response for a connection over `server.max_connections`, written before its request is read.
pub fn over_capacity(limit: usize) -> Bytes {
    render(&ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: format!(
            "baton has its limit of {limit} client connections open (server.max_connections); retry shortly"
        ),
        kind: "server_error",
        code: "too_many_connections",
        retry_after: Some(1),
    })
}

/// `error` as a whole HTTP/1.1 response that closes the connection.
fn render(error: &ApiError) -> Bytes {
    let body = error.body().to_string();
    let retry_after = error
        .retry_after
        .map(|secs| format!("retry-after: {secs}\r\n"))
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry_after}connection: close\r\n\r\n{body}",
        error.status.as_u16(),
        error.status.canonical_reason().unwrap_or_default(),
        body.len()
    );
    Bytes::from(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_own_answers_get_a_json_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let reply = replacement(head).expect("a replacement");
        let text = String::from_utf8_lossy(&reply);
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(json["error"]["code"], "request_header_fields_too_large");
    }

    #[test]
    fn other_heads_are_left_alone() {
        for head in [
            &b"HTTP/1.1 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"data: x",
            b"HTTP/1.1 4",
        ] {
            assert_eq!(replacement(head), None, "{}", String::from_utf8_lossy(head));
        }
    }
}
