//! What a client is told when no route answered: a status it acts on
//! correctly, in OpenAI's error shape.
//!
//! SDKs retry 408, 409, 429 and every 5xx by default (the openai Python SDK
//! does), so a request that every route refused for what it is must be a 4xx,
//! or the client sends the same bad request again. The verdict looks at every
//! route that was *tried*: a route skipped without a request (open breaker,
//! latency or cost rule) or a prefill rejection (the same route is asked
//! again by instruction) says nothing about the request.

use axum::http::StatusCode;

use super::wire::ApiError;
use crate::failure::Failure;

/// Longest message an error carries: upstream text is quoted, never whole.
const MAX_MESSAGE_BYTES: usize = 1024;

/// Seconds a client is asked to wait before trying an unavailable ladder again.
const UNAVAILABLE_RETRY_AFTER_SECS: u32 = 1;

/// Upstream error codes passed on to the client as they are (OpenAI's and
/// common server ones); any other code becomes the status's own, so the
/// codes a client sees are a fixed vocabulary and never echo upstream text.
const KNOWN_CODES: &[&str] = &[
    "context_length_exceeded",
    "invalid_value",
    "invalid_type",
    "invalid_prompt",
    "unsupported_parameter",
    "unsupported_value",
    "unknown_parameter",
    "missing_required_parameter",
    "string_above_max_length",
    "array_above_max_length",
    "integer_above_max_value",
    "integer_below_min_value",
    "empty_array",
    "invalid_image_url",
    "invalid_image",
    "image_parse_error",
    "request_too_large",
    "tool_use_failed",
    "invalid_tool_schema",
];

/// What one failed attempt says about the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict<'a> {
    /// It did not go to the upstream, or the same route is asked again: no verdict.
    Skipped,
    /// The request does not fit the model's context window.
    TooLong,
    /// The upstream refused the request itself (400, 413, 422), maybe naming a code.
    BadRequest { status: u16, code: Option<&'a str> },
    /// The upstream refused baton's credentials (401, 403).
    Auth,
    /// Another 4xx: the route's configuration (its URL, its model) is wrong.
    Misconfigured,
    /// The upstream was unavailable or broke.
    Unavailable,
}

fn verdict(failure: &Failure) -> Verdict<'_> {
    match (failure.kind.as_str(), failure.status) {
        ("circuit_open" | "too_slow" | "over_cost" | "prefill_rejected", _) => Verdict::Skipped,
        ("context_length" | "context_too_small", _) => Verdict::TooLong,
        ("auth", _) => Verdict::Auth,
        ("rejected", Some(status @ (400 | 413 | 422))) => Verdict::BadRequest {
            status,
            code: failure.code.as_deref(),
        },
        ("rejected", _) => Verdict::Misconfigured,
        _ => Verdict::Unavailable,
    }
}

/// The error for a ladder whose every route failed (`failures`, in order).
pub fn exhausted(failures: &[Failure]) -> ApiError {
    let summary = summary(failures);
    let summary = summary.as_str();
    let tried: Vec<Verdict<'_>> = failures
        .iter()
        .map(verdict)
        .filter(|v| *v != Verdict::Skipped)
        .collect();
    let all = |p: fn(&Verdict<'_>) -> bool| !tried.is_empty() && tried.iter().all(p);
    if all(|v| *v == Verdict::TooLong) {
        return ApiError {
            status: StatusCode::BAD_REQUEST,
            message: bounded(&format!("the request is too long for every route: {summary}")),
            kind: "invalid_request_error",
            code: "context_length_exceeded",
            retry_after: None,
        };
    }
    if all(|v| matches!(v, Verdict::TooLong | Verdict::BadRequest { .. })) {
        return bad_request(&tried, summary);
    }
    if all(|v| matches!(v, Verdict::Auth | Verdict::Misconfigured)) {
        let auth = tried.contains(&Verdict::Auth);
        return ApiError {
            status: StatusCode::BAD_GATEWAY,
            message: bounded(&gateway_message(failures, auth)),
            kind: "upstream_error",
            code: if auth {
                "upstream_auth_failed"
            } else {
                "upstream_rejected"
            },
            retry_after: None,
        };
    }
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: bounded(summary),
        kind: "upstream_error",
        code: "all_routes_failed",
        retry_after: Some(UNAVAILABLE_RETRY_AFTER_SECS),
    }
}

/// Every attempt's failure, for people. An auth failure is told by its
/// status alone: its body can quote the key the upstream was given.
fn summary(failures: &[Failure]) -> String {
    if failures.is_empty() {
        return "every route failed: the ladder has no routes".to_string();
    }
    let each: Vec<String> = failures
        .iter()
        .map(|f| match (verdict(f), f.status) {
            (Verdict::Auth, Some(status)) => {
                format!("{}: the upstream refused baton's credentials ({status})", f.route)
            }
            _ => f.to_string(),
        })
        .collect();
    format!("every route failed: {}", each.join("; "))
}

/// Every tried route refused the request itself: their common status and
/// code when they agree, else 400 and the status's own code.
fn bad_request(tried: &[Verdict<'_>], summary: &str) -> ApiError {
    let statuses: Vec<(u16, Option<&str>)> = tried
        .iter()
        .map(|v| match v {
            Verdict::BadRequest { status, code } => (*status, *code),
            _ => (400, Some("context_length_exceeded")),
        })
        .collect();
    let Some(&first) = statuses.first() else {
        return exhausted(&[]);
    };
    let status = if statuses.iter().all(|(s, _)| *s == first.0) {
        first.0
    } else {
        400
    };
    let agreed = statuses.iter().all(|(_, c)| *c == first.1).then_some(first.1).flatten();
    let code = agreed
        .and_then(|c| KNOWN_CODES.iter().find(|k| **k == c).copied())
        .unwrap_or(match status {
            413 => "request_too_large",
            422 => "unprocessable_request",
            _ => "invalid_request",
        });
    ApiError {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        message: bounded(&format!("every route refused the request: {summary}")),
        kind: "invalid_request_error",
        code,
        retry_after: None,
    }
}

/// Names the routes and statuses, never the upstream's text: an auth error's
/// body can quote the key it was given.
fn gateway_message(failures: &[Failure], auth: bool) -> String {
    let routes: Vec<String> = failures
        .iter()
        .filter(|f| matches!(verdict(f), Verdict::Auth | Verdict::Misconfigured))
        .map(|f| match f.status {
            Some(status) => format!("{} ({status})", f.route),
            None => f.route.clone(),
        })
        .collect();
    let what = if auth {
        "refused baton's upstream credentials (check the routes' api_key_env)"
    } else {
        "refused the request as configured (check the routes' base_url and model)"
    };
    format!("the upstream of every route tried {what}: {}", routes.join(", "))
}

/// `text` cut to [`MAX_MESSAGE_BYTES`] at a character boundary.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::FailureKind;

    fn failed(route: &str, kind: FailureKind) -> Failure {
        Failure::new(&kind, route, 0, 0, 0)
    }

    fn rejected(route: &str, status: u16, code: Option<&str>) -> Failure {
        failed(
            route,
            FailureKind::Rejected {
                status,
                message: "no".into(),
                code: code.map(str::to_string),
            },
        )
    }

    fn context(route: &str) -> Failure {
        failed(
            route,
            FailureKind::ContextLength {
                message: "maximum context length is 8192 tokens".into(),
            },
        )
    }

    fn auth(route: &str, status: u16) -> Failure {
        failed(
            route,
            FailureKind::Auth {
                status,
                message: "Incorrect API key provided: sk-secret".into(),
            },
        )
    }

    fn stall(route: &str) -> Failure {
        failed(
            route,
            FailureKind::Stall {
                after: std::time::Duration::from_secs(1),
            },
        )
    }

    fn status_and_code(failures: &[Failure]) -> (u16, &'static str) {
        let e = exhausted(failures);
        (e.status.as_u16(), e.code)
    }

    #[test]
    fn a_request_every_route_refused_is_the_clients_4xx() {
        let both = [
            rejected("a", 400, Some("invalid_value")),
            rejected("b", 400, Some("invalid_value")),
        ];
        assert_eq!(status_and_code(&both), (400, "invalid_value"));
        let differ = [rejected("a", 400, Some("invalid_value")), rejected("b", 422, None)];
        assert_eq!(status_and_code(&differ), (400, "invalid_request"));
        assert_eq!(status_and_code(&[rejected("a", 413, None)]), (413, "request_too_large"));
        assert_eq!(
            status_and_code(&[rejected("a", 422, None)]),
            (422, "unprocessable_request")
        );
        // An unknown code is not passed on: the vocabulary is fixed.
        assert_eq!(
            status_and_code(&[rejected("a", 400, Some("sk-live-abcdef"))]),
            (400, "invalid_request")
        );
        assert_eq!(exhausted(&both).kind, "invalid_request_error");
        assert_eq!(exhausted(&both).retry_after, None);
    }

    #[test]
    fn context_length_on_every_route_tried_is_context_length_exceeded() {
        let skipped = failed("c", FailureKind::CircuitOpen);
        assert_eq!(
            status_and_code(&[context("a"), skipped, context("b")]),
            (400, "context_length_exceeded")
        );
        let too_small = failed(
            "b",
            FailureKind::ContextTooSmall {
                needed: 9000,
                window: 8192,
            },
        );
        assert_eq!(
            status_and_code(&[context("a"), too_small]),
            (400, "context_length_exceeded")
        );
        // Too long here, refused there: still the request's fault, but no single code.
        assert_eq!(
            status_and_code(&[context("a"), rejected("b", 400, Some("invalid_value"))]),
            (400, "invalid_request")
        );
    }

    #[test]
    fn our_key_refused_is_a_gateway_error_that_quotes_no_upstream_text() {
        let e = exhausted(&[auth("a", 401), auth("b", 403)]);
        assert_eq!((e.status.as_u16(), e.code), (502, "upstream_auth_failed"));
        assert!(!e.message.contains("sk-secret"), "{}", e.message);
        assert!(e.message.contains("a (401), b (403)"), "{}", e.message);
        assert_eq!(status_and_code(&[rejected("a", 404, None)]), (502, "upstream_rejected"));
        assert_eq!(
            status_and_code(&[auth("a", 401), rejected("b", 404, None)]),
            (502, "upstream_auth_failed")
        );
    }

    #[test]
    fn unavailability_and_mixed_failures_are_a_503_to_retry() {
        for failures in [
            vec![stall("a"), stall("b")],
            vec![rejected("a", 400, None), stall("b")],
            vec![auth("a", 401), stall("b")],
            vec![rejected("a", 400, None), auth("b", 401)],
            vec![failed("a", FailureKind::CircuitOpen)],
            vec![],
        ] {
            let e = exhausted(&failures);
            assert_eq!((e.status.as_u16(), e.code), (503, "all_routes_failed"), "{failures:?}");
            assert_eq!(e.retry_after, Some(1));
            assert!(!e.message.contains("sk-secret"), "{}", e.message);
        }
    }

    #[test]
    fn messages_are_bounded() {
        let long = failed(
            "a",
            FailureKind::ErrorEvent {
                message: "é".repeat(3000),
            },
        );
        let e = exhausted(&[long]);
        assert!(
            e.message.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8(),
            "{}",
            e.message.len()
        );
    }
}
