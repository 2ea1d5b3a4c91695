//! Who may call the proxy, decided before any handler runs.
//!
//! * **Client endpoints** (`/v1/…` and anything unknown): the client key when
//!   one is set. Without one, the server is only safe from the browsers on its
//!   machine: a web page may neither reach it under a foreign name (DNS
//!   rebinding: `Host` must be `localhost` or an IP literal), nor call it from
//!   another origin (`Origin`), nor POST a "simple" cross-site body (anything
//!   but `application/json`), since any of these would spend the operator's
//!   upstream keys.
//! * **Operator endpoints** (`/events`, `/metrics`): they carry every prompt and
//!   answer, so client keys never open them. With an operator key, its bearer
//!   is required; without one, they are served only over loopback connections,
//!   under a local `Host`, and never to a cross-origin browser.
//! * `/healthz` is open.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::door::Door;
use super::wire::ApiError;
use super::AppState;
use crate::config::Secret;

/// Why a request was refused before reaching its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A key is required and no `Authorization: Bearer` came.
    MissingKey,
    /// The bearer is not the key this endpoint takes.
    WrongKey,
    /// The client key was sent to an operator endpoint.
    ClientKeyOnOperatorEndpoint,
    /// An operator endpoint without an operator key, asked over a non-loopback connection.
    NotLoopback,
    /// A keyless server was asked under a name that is not its own.
    ForeignHost,
    /// A browser on another origin sent the request.
    ForeignOrigin,
    /// A keyless server got a POST that is not `application/json`.
    NotJson,
}

impl Refusal {
    /// The OpenAI-style error sent back (never naming a key's value).
    pub fn error(self) -> ApiError {
        let (status, code, message) = match self {
            Refusal::MissingKey => (
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "an API key is required: send `Authorization: Bearer <key>`",
            ),
            Refusal::WrongKey => (StatusCode::UNAUTHORIZED, "invalid_api_key", "the API key is wrong"),
            Refusal::ClientKeyOnOperatorEndpoint => (
                StatusCode::FORBIDDEN,
                "operator_key_required",
                "client keys do not open operator endpoints: send the operator key (server.operator_key_env)",
            ),
            Refusal::NotLoopback => (
                StatusCode::FORBIDDEN,
                "operator_key_required",
                "without server.operator_key_env, operator endpoints are served to loopback connections only",
            ),
            Refusal::ForeignHost => (
                StatusCode::FORBIDDEN,
                "invalid_host",
                "the Host header names neither localhost nor an IP address (a server without server.api_key_env answers no other name)",
            ),
            Refusal::ForeignOrigin => (
                StatusCode::FORBIDDEN,
                "invalid_origin",
                "cross-origin browser requests are refused",
            ),
            Refusal::NotJson => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the request body as `Content-Type: application/json`",
            ),
        };
        ApiError {
            status,
            message: message.to_string(),
            kind: "invalid_request_error",
            code,
            retry_after: None,
        }
    }
}

/// The keys the proxy checks.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    /// The bearer clients send (`server.api_key_env`).
    pub client: Option<Secret>,
    /// The bearer operator endpoints take (`server.operator_key_env`).
    pub operator: Option<Secret>,
}

/// What a path is, for access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Open,
    Operator,
    Client,
}

fn endpoint(path: &str) -> Endpoint {
    match path {
        "/healthz" => Endpoint::Open,
        "/events" | "/metrics" => Endpoint::Operator,
        _ => Endpoint::Client,
    }
}

/// Decides whether a request may reach its handler (pure: the tests drive it directly).
pub fn check(
    keys: &Keys,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<(), Refusal> {
    match endpoint(path) {
        Endpoint::Open => Ok(()),
        Endpoint::Client => match &keys.client {
            Some(key) => client_key(headers, key),
            None => {
                local_browser_rules(headers)?;
                if method == Method::POST && !is_json(headers) {
                    return Err(Refusal::NotJson);
                }
                Ok(())
            }
        },
        Endpoint::Operator => match &keys.operator {
            Some(key) => match bearer(headers, key) {
                Err(Refusal::WrongKey) if keys.client.as_ref().is_some_and(|c| bearer(headers, c).is_ok()) => {
                    Err(Refusal::ClientKeyOnOperatorEndpoint)
                }
                other => other,
            },
            None => {
                if !peer.is_some_and(|p| p.ip().is_loopback()) {
                    return Err(Refusal::NotLoopback);
                }
                local_browser_rules(headers)
            }
        },
    }
}

/// What to warn at start when `listening` is reachable beyond this machine without a client key.
pub fn exposure_warning(listening: SocketAddr, client_key: bool) -> Option<String> {
    (!listening.ip().is_loopback() && !client_key).then(|| {
        format!(
            "listening on {listening} beyond loopback without a client key (server.api_key_env): anyone who can reach it spends your upstream keys"
        )
    })
}

/// The middleware in front of every route.
pub async fn layer(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    // A refusal is shaped as the door's clients read errors (OpenAI's shape elsewhere).
    let door = Door::for_path(request.uri().path()).unwrap_or(Door::Chat);
    match check(
        &state.keys,
        request.uri().path(),
        request.method(),
        request.headers(),
        peer,
    ) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let error = refusal.error();
            state.metrics.reject(error.code);
            door.error_response(error)
        }
    }
}

fn bearer(headers: &HeaderMap, key: &Secret) -> Result<(), Refusal> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // The scheme is case-insensitive (RFC 9110 §11.1): `bearer` is `Bearer`.
        .and_then(|(scheme, key)| scheme.eq_ignore_ascii_case("bearer").then(|| key.trim_start()));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), key.expose().as_bytes()) => Ok(()),
        Some(_) => Err(Refusal::WrongKey),
        None => Err(Refusal::MissingKey),
    }
}

/// A client key as a bearer or, as Anthropic's SDKs send it, in `x-api-key`.
fn client_key(headers: &HeaderMap, key: &Secret) -> Result<(), Refusal> {
    match headers.get("x-api-key").map(|v| v.as_bytes()) {
        Some(given) if constant_time_eq(given, key.expose().as_bytes()) => Ok(()),
        Some(_) => match bearer(headers, key) {
            Err(Refusal::MissingKey) => Err(Refusal::WrongKey),
            other => other,
        },
        None => bearer(headers, key),
    }
}

/// Compares without an early exit, so timing does not reveal the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Host` is local or an IP literal, and any `Origin` is the server's own.
fn local_browser_rules(headers: &HeaderMap) -> Result<(), Refusal> {
    // A client without `Host` (HTTP/1.0) is no browser.
    let host = match headers.get(header::HOST) {
        None => None,
        Some(value) => match value.to_str() {
            Ok(host) if is_own_name(host) => Some(host),
            _ => return Err(Refusal::ForeignHost),
        },
    };
    match headers.get(header::ORIGIN) {
        None => Ok(()),
        Some(origin) => {
            let authority = origin
                .to_str()
                .ok()
                .and_then(|o| o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")));
            match (authority, host) {
                (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host) => Ok(()),
                _ => Err(Refusal::ForeignOrigin),
            }
        }
    }
}

/// `localhost[:port]` or an IP literal (`127.0.0.1[:port]`, `[::1][:port]`): a name
/// DNS rebinding cannot take over, since a page under an IP is that IP's origin.
fn is_own_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || is_port(port) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

fn is_port(text: &str) -> bool {
    text.strip_prefix(':').unwrap_or(text).parse::<u16>().is_ok()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::net::IpAddr;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    fn keys(client: Option<&str>, operator: Option<&str>) -> Keys {
        Keys {
            client: client.map(Secret::new),
            operator: operator.map(Secret::new),
        }
    }

    const LOOPBACK: Option<SocketAddr> = Some(SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5000));

    #[test]
    fn listening_beyond_loopback_without_a_client_key_is_warned_of() {
        let any: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        assert!(exposure_warning(any, false).is_some_and(|w| w.contains("0.0.0.0:8080")));
        assert_eq!(exposure_warning(any, true), None);
        assert_eq!(exposure_warning("127.0.0.1:8080".parse().expect("addr"), false), None);
        assert_eq!(exposure_warning("[::1]:8080".parse().expect("addr"), false), None);
    }

    #[test]
    fn names_a_rebinding_page_cannot_use() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]",
            "[::1]:8080",
            "10.1.2.3:8080",
        ] {
            assert!(is_own_name(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "[::1",
            "[::1]x",
            "127.0.0.1:http",
            "",
        ] {
            assert!(!is_own_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_keyless_server_refuses_browsers_and_foreign_names_everywhere_but_healthz() {
        let k = keys(None, None);
        let post = Method::POST;
        let json = ("content-type", "application/json; charset=utf-8");
        let ok = headers(&[("host", "127.0.0.1:8080"), json]);
        assert_eq!(check(&k, "/v1/chat/completions", &post, &ok, LOOPBACK), Ok(()));
        let rebound = headers(&[("host", "evil.example:8080"), json]);
        assert_eq!(
            check(&k, "/v1/chat/completions", &post, &rebound, LOOPBACK),
            Err(Refusal::ForeignHost)
        );
        assert_eq!(check(&k, "/healthz", &Method::GET, &rebound, None), Ok(()));
        let cross = headers(&[("host", "127.0.0.1:8080"), ("origin", "http://evil.example"), json]);
        assert_eq!(
            check(&k, "/v1/chat/completions", &post, &cross, LOOPBACK),
            Err(Refusal::ForeignOrigin)
        );
        let own = headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080"), json]);
        assert_eq!(check(&k, "/v1/chat/completions", &post, &own, LOOPBACK), Ok(()));
        let null = headers(&[("host", "127.0.0.1:8080"), ("origin", "null"), json]);
        assert_eq!(
            check(&k, "/v1/models", &Method::GET, &null, LOOPBACK),
            Err(Refusal::ForeignOrigin)
        );
        let plain = headers(&[("host", "127.0.0.1:8080"), ("content-type", "text/plain")]);
        assert_eq!(
            check(&k, "/v1/chat/completions", &post, &plain, LOOPBACK),
            Err(Refusal::NotJson)
        );
        let none = headers(&[("host", "127.0.0.1:8080")]);
        assert_eq!(
            check(&k, "/v1/chat/completions", &post, &none, LOOPBACK),
            Err(Refusal::NotJson)
        );
    }

    #[test]
    fn operator_endpoints_without_an_operator_key_are_loopback_only() {
        let remote = Some(SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)), 5000));
        let local = headers(&[("host", "127.0.0.1:8080")]);
        for k in [keys(None, None), keys(Some("client-key-1"), None)] {
            assert_eq!(check(&k, "/events", &Method::GET, &local, LOOPBACK), Ok(()));
            assert_eq!(
                check(&k, "/metrics", &Method::GET, &local, remote),
                Err(Refusal::NotLoopback)
            );
            assert_eq!(
                check(&k, "/metrics", &Method::GET, &local, None),
                Err(Refusal::NotLoopback)
            );
            let rebound = headers(&[("host", "evil.example")]);
            assert_eq!(
                check(&k, "/events", &Method::GET, &rebound, LOOPBACK),
                Err(Refusal::ForeignHost)
            );
        }
    }

    #[test]
    fn the_operator_key_opens_operator_endpoints_and_a_client_key_does_not() {
        let k = keys(Some("client-key-1"), Some("operator-key-1"));
        let with = |key: &str| headers(&[("host", "evil.example"), ("authorization", &format!("Bearer {key}"))]);
        let remote = Some(SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)), 5000));
        assert_eq!(
            check(&k, "/events", &Method::GET, &with("operator-key-1"), remote),
            Ok(())
        );
        assert_eq!(
            check(&k, "/events", &Method::GET, &with("client-key-1"), LOOPBACK),
            Err(Refusal::ClientKeyOnOperatorEndpoint)
        );
        assert_eq!(
            check(&k, "/metrics", &Method::GET, &with("guess"), LOOPBACK),
            Err(Refusal::WrongKey)
        );
        assert_eq!(
            check(&k, "/metrics", &Method::GET, &headers(&[]), LOOPBACK),
            Err(Refusal::MissingKey)
        );
        assert_eq!(
            check(&k, "/v1/models", &Method::GET, &with("operator-key-1"), LOOPBACK),
            Err(Refusal::WrongKey),
            "the operator key is not a client key"
        );
        assert_eq!(
            check(&k, "/v1/models", &Method::GET, &with("client-key-1"), remote),
            Ok(())
        );
        assert_eq!(
            Refusal::ClientKeyOnOperatorEndpoint.error().status,
            StatusCode::FORBIDDEN
        );
    }
    #[test]
    fn the_client_key_also_opens_client_endpoints_as_x_api_key_but_never_operator_ones() {
        let k = keys(Some("client-key-1"), Some("operator-key-1"));
        let remote = Some(SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7)), 5000));
        let given = |key: &str| headers(&[("host", "evil.example"), ("x-api-key", key)]);
        assert_eq!(
            check(&k, "/v1/messages", &Method::POST, &given("client-key-1"), remote),
            Ok(())
        );
        assert_eq!(
            check(&k, "/v1/messages", &Method::POST, &given("client-key-2"), remote),
            Err(Refusal::WrongKey)
        );
        // A wrong x-api-key beside a right bearer: the bearer decides, as before.
        let both = headers(&[("x-api-key", "guess"), ("authorization", "Bearer client-key-1")]);
        assert_eq!(check(&k, "/v1/chat/completions", &Method::POST, &both, remote), Ok(()));
        assert_eq!(
            check(&k, "/metrics", &Method::GET, &given("operator-key-1"), LOOPBACK),
            Err(Refusal::MissingKey),
            "operator endpoints take only the bearer"
        );
    }
}
