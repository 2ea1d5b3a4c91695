//! The front doors: the client wire formats a request can come through. Each
//! door parses its own request into baton's [`ParsedRequest`] (one ladder
//! behind every door), encodes the spliced items into its own stream or whole
//! answer, and shapes errors the way its SDKs read them.

use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use serde_json::Value;

use super::encode::{self, Answer, ChatEncoder, ClientEncoder, Flow};
use super::messages::{self, MessagesEncoder};
use super::responses::{self, ResponsesEncoder};
use super::wire::{self, ApiError, ParsedRequest};
use crate::engine::splice::ClientItem;
use crate::policy::reasoning::OutgoingField;

pub use crate::door::Door;

/// What the proxy does for each door.
impl Door {
    /// Parses a request body sent to this door.
    pub fn parse(self, body: &[u8]) -> Result<ParsedRequest, ApiError> {
        match self {
            Door::Chat => wire::parse_request(body),
            Door::Responses => responses::parse_request(body),
            Door::Messages => messages::parse_request(body),
        }
    }

    /// The encoder of one streamed answer with the id `id`, started at `created`.
    pub fn encoder(self, request: &ParsedRequest, created: u64, reasoning_field: OutgoingField) -> DoorEncoder {
        match self {
            Door::Chat => DoorEncoder::Chat(ChatEncoder::new(
                &wire::new_id("chatcmpl-"),
                created,
                request.include_usage,
                reasoning_field,
            )),
            Door::Responses => {
                DoorEncoder::Responses(ResponsesEncoder::new(&wire::new_id("resp_"), &request.model, created))
            }
            Door::Messages => DoorEncoder::Messages(MessagesEncoder::new(&wire::new_id("msg_"), &request.model)),
        }
    }

    /// The whole (non-streamed) answer's body.
    pub fn whole(self, answer: &Answer, created: u64) -> Value {
        match self {
            Door::Chat => encode::chat_completion(answer, &wire::new_id("chatcmpl-"), created),
            Door::Responses => responses::response_object(answer, &wire::new_id("resp_"), created),
            Door::Messages => messages::message_object(answer, &wire::new_id("msg_")),
        }
    }

    /// `error` as this door's clients expect it.
    pub fn error_response(self, error: ApiError) -> Response {
        match self {
            // Responses errors are OpenAI-shaped, as chat's are.
            Door::Chat | Door::Responses => error.into_response(),
            Door::Messages => messages::error_response(error),
        }
    }
}

/// One streamed answer's encoder, whichever door it is for: an enum, not a
/// box, so the body's per-item call is a match, not a virtual call.
#[derive(Clone, Debug)]
pub enum DoorEncoder {
    /// Chat-completions chunks.
    Chat(ChatEncoder),
    /// Responses semantic events.
    Responses(ResponsesEncoder),
    /// Anthropic Messages events.
    Messages(MessagesEncoder),
}

impl ClientEncoder for DoorEncoder {
    fn item(&mut self, item: &ClientItem, out: &mut BytesMut) -> Flow {
        match self {
            DoorEncoder::Chat(e) => e.item(item, out),
            DoorEncoder::Responses(e) => e.item(item, out),
            DoorEncoder::Messages(e) => e.item(item, out),
        }
    }

    fn error(&mut self, message: &str, code: &'static str, out: &mut BytesMut) {
        match self {
            DoorEncoder::Chat(e) => e.error(message, code, out),
            DoorEncoder::Responses(e) => e.error(message, code, out),
            DoorEncoder::Messages(e) => e.error(message, code, out),
        }
    }
}
