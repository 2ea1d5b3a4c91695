//! The front doors: the client APIs a request can come through. The proxy
//! parses and encodes each one (`proxy::door`); the core only carries the
//! name, so events, recordings and the dashboard say which door a session
//! came through.

use serde::{Deserialize, Serialize};

/// A client API baton answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Door {
    /// OpenAI chat completions, `POST /v1/chat/completions`.
    #[serde(rename = "chat_completions")]
    Chat,
    /// OpenAI Responses, `POST /v1/responses`.
    Responses,
    /// Anthropic Messages, `POST /v1/messages`.
    Messages,
}

impl Door {
    /// Every door, in the order the 404 message lists them.
    pub const ALL: [Door; 3] = [Door::Chat, Door::Responses, Door::Messages];

    /// The path a client POSTs to.
    pub fn path(self) -> &'static str {
        match self {
            Door::Chat => "/v1/chat/completions",
            Door::Responses => "/v1/responses",
            Door::Messages => "/v1/messages",
        }
    }

    /// The door whose path is `path` or a sub-path of it (`/v1/messages/count_tokens`), if any.
    pub fn for_path(path: &str) -> Option<Door> {
        Door::ALL.into_iter().find(|d| {
            path.strip_prefix(d.path())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// The short name metrics, logs and recordings use (as serialized).
    pub fn label(self) -> &'static str {
        match self {
            Door::Chat => "chat_completions",
            Door::Responses => "responses",
            Door::Messages => "messages",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_serialized_names_and_round_trip() {
        for door in Door::ALL {
            let json = serde_json::to_value(door).expect("serializes");
            assert_eq!(json, door.label());
            assert_eq!(serde_json::from_value::<Door>(json).expect("parses"), door);
        }
    }

    #[test]
    fn paths_find_their_door_and_only_theirs() {
        assert_eq!(Door::for_path("/v1/messages/count_tokens"), Some(Door::Messages));
        assert_eq!(Door::for_path("/v1/responses"), Some(Door::Responses));
        assert_eq!(Door::for_path("/v1/messagesx"), None);
        assert_eq!(Door::for_path("/v1/models"), None);
    }
}
