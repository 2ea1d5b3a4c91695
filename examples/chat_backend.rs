//! A chat backend of your own that embeds baton's splicer: no `baton serve`,
//! no proxy in between.
//!
//! It builds its own [`Splicer`] over a two-route ladder and serves
//! `POST /chat/{wire}`, where `wire` is `chat` (OpenAI chat completions),
//! `messages` (Anthropic Messages) or `responses` (OpenAI Responses). The body
//! is that wire's request; the library's translation for the wire turns it
//! into a [`ChatRequest`](baton::ChatRequest), the splicer runs it along the ladder (handing the
//! answer over to the fallback if the primary breaks mid-stream), and the
//! library's encoder for the wire streams it back as SSE, or renders the whole
//! answer object when `stream` is false. The request's `model` is not looked
//! at: this backend has one ladder.
//!
//! Run it with no keys and no network:
//!
//! ```text
//! cargo run --example chat_backend
//! ```
//!
//! It starts two mock oracle upstreams on 127.0.0.1, a primary that drops its
//! connection after 15 chunks and a healthy fallback, and prints the address it
//! listens on (`--port N` or `PORT` picks the port; 0, any free one, by default).
//! Then, for example:
//!
//! ```text
//! curl -N http://127.0.0.1:PORT/chat/messages -H 'content-type: application/json' \
//!   -d '{"model":"any","max_tokens":512,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
//! ```
//!
//! To put real OpenAI-compatible upstreams behind it instead, name each, in
//! ladder order, with its model: `--upstream URL --model NAME` (the key, if
//! any, from `OPENAI_API_KEY`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use baton::policy::reasoning::OutgoingField;
use baton::provider::openai::OpenAiProvider;
use baton::proxy::door::{Door, DoorEncoder};
use baton::proxy::encode::{gather, ClientEncoder, Flow};
use baton::proxy::wire::{self, ApiError};
use baton::{ClientItem, Ladder, Route, Splicer};
use bytes::BytesMut;
use futures::{Stream, StreamExt};

/// One upstream the ladder goes through, in order.
pub struct Upstream {
    /// Its OpenAI-compatible base URL (`…/v1`).
    pub base_url: String,
    /// The model it is asked for.
    pub model: String,
}

/// The splicer over `upstreams`: the first is the primary, each next one continues what the one before broke off.
pub fn splicer(upstreams: &[Upstream], api_key: Option<String>) -> Splicer {
    let client = OpenAiProvider::default_client();
    let routes = upstreams
        .iter()
        .enumerate()
        .map(|(i, up)| {
            let provider = OpenAiProvider::new(client.clone(), &up.base_url, api_key.clone());
            let name = if i == 0 {
                "primary".to_string()
            } else {
                format!("fallback-{i}")
            };
            Route::new(&name, &up.model, Arc::new(provider))
        })
        .collect();
    Splicer::new(Ladder::new(routes))
}

/// The backend's routes: `POST /chat/{wire}`.
pub fn app(splicer: Arc<Splicer>) -> Router {
    Router::new().route("/chat/{wire}", post(chat)).with_state(splicer)
}

/// The wire a path segment names.
pub fn door(wire: &str) -> Option<Door> {
    match wire {
        "chat" => Some(Door::Chat),
        "messages" => Some(Door::Messages),
        "responses" => Some(Door::Responses),
        _ => None,
    }
}

async fn chat(State(splicer): State<Arc<Splicer>>, Path(wire): Path<String>, body: Bytes) -> Response {
    let Some(door) = door(&wire) else {
        return (StatusCode::NOT_FOUND, "the wires are chat, messages and responses\n").into_response();
    };
    match answer(door, &splicer, &body).await {
        Ok(response) => response,
        Err(error) => door.error_response(error),
    }
}

/// The answer to one request through `door`, or the error its clients read before any of it.
async fn answer(door: Door, splicer: &Splicer, body: &[u8]) -> Result<Response, ApiError> {
    let parsed = door.parse(body)?;
    let created = wire::now_secs();
    let reasoning = OutgoingField::AsUpstream;
    if !parsed.stream {
        let answer = gather(splicer.splice(parsed.into_chat_request(door)), reasoning).await?;
        return Ok(Json(door.whole(&answer, created)).into_response());
    }
    let encoder = door.encoder(&parsed, created, reasoning);
    let mut items = splicer.splice(parsed.into_chat_request(door));
    // An answer that fails before its first item gets an HTTP error status,
    // not a 200 stream with the error inside.
    let first = match items.next().await {
        Some(ClientItem::Failed(error)) => return Err(ApiError::from_splice(&error)),
        Some(item) => item,
        None => return Err(ApiError::internal()),
    };
    let events = sse(futures::stream::once(async { first }).chain(items), encoder);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .map_err(|_| ApiError::internal())
}

/// The SSE bytes of `items` in `encoder`'s wire, one chunk per item, up to the item that ends the answer.
pub fn sse(
    items: impl Stream<Item = ClientItem> + Send + 'static,
    mut encoder: DoorEncoder,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    items.scan(false, move |ended, item| {
        let chunk = (!*ended).then(|| {
            let mut out = BytesMut::new();
            *ended = encoder.item(&item, &mut out) == Flow::End;
            Ok(out.freeze())
        });
        futures::future::ready(chunk)
    })
}

/// Two mock oracle upstreams on 127.0.0.1: a primary with `fault` (a fault
/// script, `drop@15`: cut after 15 chunks) and a healthy fallback; their stop handles end them.
pub async fn mock_upstreams(fault: &str) -> std::io::Result<(Vec<Upstream>, Vec<tokio::sync::oneshot::Sender<()>>)> {
    use baton::oracle::fault::{FaultPlan, FaultScript};
    use baton::oracle::server::{spawn, MockConfig};
    let mut upstreams = Vec::new();
    let mut stops = Vec::new();
    for (fault, model) in [(fault, "oracle-large"), ("none", "oracle-small")] {
        let script = fault
            .parse::<FaultScript>()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{fault:?}: {e}")))?;
        let (addr, stop) = spawn(MockConfig {
            plan: FaultPlan::Fixed(script),
            style: Default::default(),
            pacing: Default::default(),
        })
        .await?;
        upstreams.push(Upstream {
            base_url: format!("http://{addr}/v1"),
            model: model.to_string(),
        });
        stops.push(stop);
    }
    Ok((upstreams, stops))
}

/// What the command line asked for.
struct Args {
    port: u16,
    upstreams: Vec<Upstream>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut port = std::env::var("PORT").ok();
    let mut upstreams: Vec<Upstream> = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} takes a value"));
        match arg.as_str() {
            "--port" => port = Some(value()?),
            "--upstream" => upstreams.push(Upstream {
                base_url: value()?,
                model: String::new(),
            }),
            "--model" => match upstreams.last_mut() {
                Some(up) => up.model = value()?,
                None => return Err("--model names the model of the --upstream before it".into()),
            },
            _ => {
                return Err(format!(
                    "unknown argument {arg:?}; try --port N, --upstream URL --model NAME"
                ))
            }
        }
    }
    if let Some(up) = upstreams.iter().find(|up| up.model.is_empty()) {
        return Err(format!("--upstream {} needs a --model after it", up.base_url));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|e| format!("port {p:?}: {e}"))?,
        None => 0,
    };
    Ok(Args { port, upstreams })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args(std::env::args().skip(1))?;
    // The mocks' stop handles live as long as the backend does.
    let (upstreams, _mocks) = if args.upstreams.is_empty() {
        let (upstreams, stops) = mock_upstreams("drop@15").await?;
        for (up, what) in upstreams
            .iter()
            .zip(["primary, drops after 15 chunks", "fallback, healthy"])
        {
            println!("mock upstream ({what}): {}", up.base_url);
        }
        (upstreams, stops)
    } else {
        (args.upstreams, Vec::new())
    };
    let splicer = Arc::new(splicer(&upstreams, std::env::var("OPENAI_API_KEY").ok()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!(
        "chat backend on http://{}/chat/{{chat,messages,responses}}",
        listener.local_addr()?
    );
    axum::serve(listener, app(splicer)).await?;
    Ok(())
}
