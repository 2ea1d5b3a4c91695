//! Where a reasoning delta goes: reasoning is never the answer, so it never
//! enters a continuation prefix; the client gets it on its own channel, with a
//! visible seam where one model's reasoning was cut and another's begins.

use crate::provider::ReasoningField;

/// Which chat-completions field the proxy sends reasoning in (`reasoning_field`
/// in `[server]` or on a `[[ladder]]`), for clients that read only one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutgoingField {
    /// The field the upstream used (Anthropic thinking: `reasoning_content`).
    #[default]
    AsUpstream,
    /// Always `reasoning_content`.
    ReasoningContent,
    /// Always `reasoning`.
    Reasoning,
}

impl OutgoingField {
    /// The field reasoning that arrived in `field` goes out in.
    pub fn apply(self, field: ReasoningField) -> ReasoningField {
        match self {
            OutgoingField::AsUpstream => field,
            OutgoingField::ReasoningContent => ReasoningField::ReasoningContent,
            OutgoingField::Reasoning => ReasoningField::Reasoning,
        }
    }
}

/// What the client's reasoning channel gets where a handover cut the reasoning off.
pub const SEAM_MARKER: &str = "\n\n[baton: the reasoning above was cut off; another model continues]\n\n";

/// What becomes of one reasoning delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Counted, not sent: the answer had begun before its attempt started.
    Withheld,
    /// Sent to the client.
    Forward,
    /// Sent to the client after the seam marker: an earlier attempt's reasoning was cut off.
    AfterSeam,
}

/// Where a reasoning delta of an attempt goes: `late` when the client already
/// had answer text as the attempt opened, `forward_late` the ladder's flag,
/// `seam_due` when the client's reasoning ends in a cut no marker shows yet.
pub fn place(late: bool, forward_late: bool, seam_due: bool) -> Placement {
    match (late && !forward_late, seam_due) {
        (true, _) => Placement::Withheld,
        (false, true) => Placement::AfterSeam,
        (false, false) => Placement::Forward,
    }
}

/// Where a session's client stream stands, as its deltas show it: a handover
/// while it is [`Phase::Thinking`] is a handover during reasoning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Nothing sent to the client yet.
    #[default]
    Waiting,
    /// Reasoning sent, no answer text yet.
    Thinking,
    /// Answer text sent: reasoning after it (forwarded late) does not change that.
    Answering,
}

impl Phase {
    /// The phase after a reasoning delta reached the client.
    pub fn reasoning(self) -> Phase {
        match self {
            Phase::Answering => Phase::Answering,
            Phase::Waiting | Phase::Thinking => Phase::Thinking,
        }
    }

    /// The phase after answer text reached the client.
    pub fn text(self) -> Phase {
        Phase::Answering
    }

    /// Its name, for people: `waiting`, `thinking`, `answering`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Thinking => "thinking",
            Phase::Answering => "answering",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outgoing_field_is_the_upstreams_unless_the_operator_names_one() {
        use ReasoningField::*;
        for field in [ReasoningContent, Reasoning, Thinking] {
            assert_eq!(OutgoingField::AsUpstream.apply(field), field);
            assert_eq!(OutgoingField::ReasoningContent.apply(field), ReasoningContent);
            assert_eq!(OutgoingField::Reasoning.apply(field), Reasoning);
        }
    }

    #[test]
    fn reasoning_is_a_phase_until_the_answer_begins() {
        let p = Phase::default();
        assert_eq!(p, Phase::Waiting);
        assert_eq!(p.reasoning(), Phase::Thinking);
        assert_eq!(p.reasoning().reasoning(), Phase::Thinking);
        assert_eq!(p.reasoning().text(), Phase::Answering);
        assert_eq!(p.text().reasoning(), Phase::Answering, "late reasoning is not thinking");
        assert_eq!(p.text(), Phase::Answering);
    }

    #[test]
    fn late_reasoning_is_withheld_unless_the_ladder_forwards_it() {
        assert_eq!(place(false, false, false), Placement::Forward);
        assert_eq!(place(false, false, true), Placement::AfterSeam);
        assert_eq!(place(true, false, true), Placement::Withheld);
        assert_eq!(place(true, true, false), Placement::Forward);
        assert_eq!(place(true, true, true), Placement::AfterSeam);
    }
}
