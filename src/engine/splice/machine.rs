//! The splicer's decisions as a pure state machine.
//!
//! [`Machine::on`] takes one [`Event`] (an attempt opened, an upstream item,
//! the end of a stream, the ladder's decision) and returns the [`Action`]s the
//! async driver in `mod.rs` executes (open an attempt, read, deliver, close,
//! ask the ladder, wait, finish, fail). It holds plain data only: which route
//! and retry is current, the session's [`Phase`], the current attempt's
//! counters and held tool calls, whether a reasoning seam is due, the deferred
//! rate-limited route. No clock, no IO, no provider: the driver owns those
//! (streams, the hedge race, the overlap trim, the loop guards, sleeps,
//! events, client items), and it calls [`crate::policy::ladder::Ladder::decide_within`]
//! when told to [`Action::Decide`], feeding the outcome back.
//!
//! ```text
//! Opening ──token──▶ Streaming ──finish──▶ Done
//!    │                   │  └──finish, no answer──┐
//!    └───failure/end─────┴──failure/end─────▶ Deciding
//! Deciding ──Retry/Return/SwitchToInstruct──▶ Waiting ──opened──▶ Opening
//! Deciding ──HandOver──▶ HandingOver ──opened──▶ Opening
//! Deciding ──Refuse/Local──▶ Failed      Deciding ──Exhausted──▶ Exhausted
//! ```
//!
//! The [`Phase`] is the session's, across every state (the same one the
//! dashboard shows): `Waiting` until the client has anything, `Thinking` once
//! it has reasoning, `Answering` once it has answer text. A handover before
//! `Answering` starts the answer afresh (and the reasoning seam is due if the
//! failed attempt's reasoning reached the client); one in `Answering`
//! continues the text.

use std::time::Duration;

use crate::continuation::ContinuationMode;
use crate::engine::watchdog::Watched;
use crate::failure::{FailureClass, FailureKind};
use crate::policy::ladder::{AttemptState, Decision, Deferred};
use crate::policy::reasoning::{self, Phase, Placement};
use crate::provider::ReasoningField;
use crate::request::Usage;
use smallvec::{smallvec, SmallVec};

/// What one event leads to: a few actions, inline (one event per token: no allocation for it).
pub(crate) type Actions = SmallVec<[Action; 4]>;

/// Where the session stands.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum State {
    /// An attempt is open and no token of any channel came yet.
    Opening,
    /// The attempt's tokens are flowing.
    Streaming,
    /// The attempt failed; the ladder decides what next.
    Deciding {
        /// The failure it decides on.
        failure: FailureKind,
    },
    /// The next route's attempt is being opened; the handover notice goes out with its first byte.
    HandingOver {
        /// The route's index.
        to: usize,
        /// No answer text yet: the route starts the answer from the start.
        afresh: bool,
    },
    /// A route is asked again after a pause (a retry, a return to a deferred route, a switch to instruct).
    Waiting {
        /// The route's index.
        route: usize,
        /// The pause.
        delay: Duration,
    },
    /// The answer is complete.
    Done,
    /// The session ends without an answer (a refusal, local resources).
    Failed,
    /// Every route failed: the ladder's last-resort rungs answer, or the session fails.
    Exhausted,
}

/// One input of the machine.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Event {
    /// An attempt opened as `AttemptState` says (the driver resolved its continuation mode).
    Opened(AttemptState),
    /// A hedge took over before any content: its attempt is the current one now.
    Switched(AttemptState),
    /// One item of the current attempt's watched stream.
    Item(Watched),
    /// The stream ended without a finish.
    Ended,
    /// The ladder's decision on the failure, and what a handover would defer.
    Decided {
        /// The decision.
        decision: Decision,
        /// What [`crate::policy::ladder::Ladder::deferral`] says for the failure.
        deferral: Option<Deferred>,
    },
}

/// One step for the driver.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    /// Open an attempt on route `route` after `retries` retries, continuing
    /// in `mode` (`None`: the route's own mode for its model), then report [`Event::Opened`].
    Open {
        /// The route's index.
        route: usize,
        /// Retries spent on it.
        retries: u32,
        /// The continuation mode, when not the route's own.
        mode: Option<ContinuationMode>,
    },
    /// Read the current attempt's next item and report it.
    Read,
    /// The attempt's first token: `timed` (text or reasoning) records the time
    /// to first token; a tool call's first delta only gives a probe's breaker its verdict.
    FirstToken {
        /// Whether it is a time to first token.
        timed: bool,
    },
    /// Answer text through the overlap trim to the client (then the loop guard);
    /// `seam`: the reasoning seam marker goes first.
    Text {
        /// The upstream delta.
        text: String,
        /// The seam marker is due before it.
        seam: bool,
    },
    /// A reasoning delta, placed (withheld, forwarded, after the seam), then the thinking loop guard.
    Reasoning {
        /// The text.
        text: String,
        /// Its field.
        field: ReasoningField,
        /// Where it goes.
        placement: Placement,
    },
    /// Token counts of the current attempt.
    Usage(Usage),
    /// The current attempt is over: settle its breaker permit, learn from the
    /// failure (if any), and account its `deltas`.
    Close {
        /// Its failure; `None` when it finished.
        failure: Option<FailureKind>,
        /// Its deltas of every channel.
        deltas: u64,
    },
    /// Ask the ladder about `failure` on `state` (within the retry budgets),
    /// record the failure, and report [`Event::Decided`].
    Decide {
        /// The failure.
        failure: FailureKind,
        /// Where the attempt stood.
        state: AttemptState,
        /// The deferred route, for [`crate::policy::ladder::Known::deferred`].
        deferred: Option<Deferred>,
        /// The attempt's deltas.
        deltas: u64,
    },
    /// A handover from the current route is pending until the next route's first byte (kept if one already is).
    Pend {
        /// The failure's label.
        reason: &'static str,
        /// Its class.
        class: FailureClass,
    },
    /// No handover is pending: a route asked again answers from the start.
    Unpend,
    /// Announce a retry of route `route` and pause `delay`.
    Wait {
        /// The route's index.
        route: usize,
        /// The pause.
        delay: Duration,
    },
    /// The attempt finished with an answer: release the trim, deliver the held
    /// tool calls, complete a pending handover, cache, end the session.
    Finish {
        /// The finish reason.
        reason: String,
        /// The tool-call deltas held until now.
        tool_calls: Vec<serde_json::Value>,
    },
    /// End the session with the provider's refusal.
    Refuse {
        /// The refusal.
        failure: FailureKind,
    },
    /// End the session: baton is out of local resources.
    Local {
        /// The failure.
        failure: FailureKind,
    },
    /// Every route failed: the last-resort rungs; `seam` when the client's reasoning ends in a cut.
    LastResort {
        /// The seam marker is due before their text.
        seam: bool,
    },
}

/// The splicer's state and decisions for one session.
#[derive(Clone, Debug)]
pub(crate) struct Machine {
    state: State,
    phase: Phase,
    /// The current attempt.
    at: AttemptState,
    /// The ladder forwards reasoning of attempts opened after the answer began.
    forward_late: bool,
    /// The current attempt's deltas of every channel.
    deltas: u64,
    /// The current attempt's answer-text deltas.
    texts: u64,
    /// The current attempt's reasoning bytes.
    reasoning_bytes: u64,
    /// The current attempt's tool-call deltas, held until it finishes.
    held: Vec<serde_json::Value>,
    /// The current attempt opened after the answer began: its reasoning is late.
    late: bool,
    /// Some of the current attempt's reasoning reached the client.
    wrote_reasoning: bool,
    /// The client's reasoning ends in a cut no seam marker shows yet.
    seam_due: bool,
    /// The first rate-limited route handed over from without a retry: the last rung.
    deferred: Option<Deferred>,
}

impl Machine {
    /// A machine before its first attempt; `forward_late` is the ladder's `forward_late_reasoning`.
    pub(crate) fn new(first: AttemptState, forward_late: bool) -> Self {
        Machine {
            state: State::Opening,
            phase: Phase::Waiting,
            at: first,
            forward_late,
            deltas: 0,
            texts: 0,
            reasoning_bytes: 0,
            held: Vec::new(),
            late: false,
            wrote_reasoning: false,
            seam_due: false,
            deferred: None,
        }
    }

    /// Where the session stands.
    #[cfg(test)]
    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    /// Where the client's answer stands.
    #[cfg(test)]
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the current attempt produced content of any channel (a hedge is then moot).
    pub(crate) fn has_content(&self) -> bool {
        self.deltas > 0
    }

    /// The next state after `event`, and what the driver does.
    pub(crate) fn on(&mut self, event: Event) -> Actions {
        match event {
            Event::Opened(at) => {
                self.begin(at);
                smallvec![Action::Read]
            }
            Event::Switched(at) => {
                self.begin(at);
                Actions::new()
            }
            Event::Item(item) => self.item(item),
            Event::Ended => self.fail(FailureKind::Truncated { detail: None }),
            Event::Decided { decision, deferral } => self.decided(decision, deferral),
        }
    }

    /// A new current attempt.
    fn begin(&mut self, at: AttemptState) {
        self.at = at;
        self.state = State::Opening;
        self.deltas = 0;
        self.texts = 0;
        self.reasoning_bytes = 0;
        self.held.clear();
        self.late = self.phase == Phase::Answering;
        self.wrote_reasoning = false;
    }

    /// Counts one token of any channel; the first one ends the first-token wait.
    fn token(&mut self, actions: &mut Actions, timed: bool) {
        self.deltas += 1;
        if self.deltas == 1 {
            actions.push(Action::FirstToken { timed });
        }
        self.state = State::Streaming;
    }

    fn item(&mut self, item: Watched) -> Actions {
        let mut actions = Actions::new();
        match item {
            Watched::Text(text) => {
                self.token(&mut actions, true);
                self.texts += 1;
                // With no answer yet the prefix is empty and the trim passes
                // the delta through: a non-empty one reaches the client now.
                let mut seam = false;
                if self.phase != Phase::Answering && !text.is_empty() {
                    seam = std::mem::take(&mut self.seam_due);
                    self.phase = Phase::Answering;
                }
                actions.push(Action::Text { text, seam });
            }
            Watched::Reasoning { text, field } => {
                self.token(&mut actions, true);
                self.reasoning_bytes += text.len() as u64;
                let placement = reasoning::place(self.late, self.forward_late, self.seam_due);
                match placement {
                    Placement::Withheld => {}
                    Placement::Forward => {
                        self.wrote_reasoning = true;
                        self.phase = self.phase.reasoning();
                    }
                    Placement::AfterSeam => {
                        self.wrote_reasoning = true;
                        self.seam_due = false;
                        self.phase = self.phase.reasoning();
                    }
                }
                actions.push(Action::Reasoning { text, field, placement });
            }
            Watched::ToolCalls(calls) => {
                self.token(&mut actions, false);
                self.held.extend(calls);
            }
            Watched::Usage(usage) => actions.push(Action::Usage(usage)),
            Watched::Finished(reason) => {
                if self.answerless(&reason) {
                    return self.fail(FailureKind::EmptyAnswer {
                        reasoning_bytes: self.reasoning_bytes,
                    });
                }
                self.state = State::Done;
                let tool_calls = std::mem::take(&mut self.held);
                return smallvec![
                    Action::Close {
                        failure: None,
                        deltas: self.deltas,
                    },
                    Action::Finish { reason, tool_calls },
                ];
            }
            Watched::Failed(kind) => return self.fail(kind),
        }
        actions.push(Action::Read);
        actions
    }

    /// Whether a finish with `reason` leaves the client without an answer: no
    /// text and no tool call. A refusal by `content_filter` stays the provider's answer.
    fn answerless(&self, reason: &str) -> bool {
        reason != "content_filter" && self.phase != Phase::Answering && self.texts == 0 && self.held.is_empty()
    }

    /// The current attempt failed with `kind`: it is closed and the ladder decides.
    fn fail(&mut self, kind: FailureKind) -> Actions {
        if self.wrote_reasoning {
            // The client's reasoning ends in a cut: whoever writes next marks it.
            self.seam_due = true;
        }
        self.at.produced_text = self.deltas > 0;
        self.held.clear();
        self.state = State::Deciding { failure: kind.clone() };
        smallvec![
            Action::Close {
                failure: Some(kind.clone()),
                deltas: self.deltas,
            },
            Action::Decide {
                failure: kind,
                state: self.at,
                deferred: self.deferred,
                deltas: self.deltas,
            },
        ]
    }

    fn decided(&mut self, decision: Decision, deferral: Option<Deferred>) -> Actions {
        let failure = match std::mem::replace(&mut self.state, State::Failed) {
            State::Deciding { failure } => failure,
            other => {
                // No failure to decide on: nothing happens.
                self.state = other;
                return Actions::new();
            }
        };
        let route = self.at.route;
        let pend = Action::Pend {
            reason: failure.label(),
            class: failure.class(),
        };
        match decision {
            Decision::Retry { delay } => {
                self.state = State::Waiting { route, delay };
                smallvec![
                    Action::Wait { route, delay },
                    Action::Open {
                        route,
                        retries: self.at.retries.saturating_add(1),
                        mode: Some(self.at.mode),
                    },
                ]
            }
            Decision::Return { to, delay } => {
                let retries = self.deferred.take().map_or(0, |d| d.retries).saturating_add(1);
                self.state = State::Waiting { route: to, delay };
                smallvec![
                    Action::Wait { route: to, delay },
                    // The client has nothing yet: the route answers from the start, no handover.
                    Action::Unpend,
                    Action::Open {
                        route: to,
                        retries,
                        mode: None,
                    },
                ]
            }
            Decision::SwitchToInstruct => {
                self.state = State::Waiting {
                    route,
                    delay: Duration::ZERO,
                };
                smallvec![Action::Open {
                    route,
                    retries: self.at.retries,
                    mode: Some(ContinuationMode::Instruct),
                }]
            }
            Decision::HandOver { to } => {
                if self.deferred.is_none() {
                    self.deferred = deferral;
                }
                self.state = State::HandingOver {
                    to,
                    afresh: self.phase != Phase::Answering,
                };
                smallvec![
                    pend,
                    Action::Open {
                        route: to,
                        retries: 0,
                        mode: None,
                    },
                ]
            }
            Decision::Refuse => {
                self.state = State::Failed;
                smallvec![Action::Refuse { failure }]
            }
            Decision::Local => {
                self.state = State::Failed;
                smallvec![Action::Local { failure }]
            }
            Decision::Exhausted => {
                self.state = State::Exhausted;
                let seam = self.seam_due && self.phase != Phase::Answering;
                smallvec![pend, Action::LastResort { seam }]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The expected actions, as the machine returns them.
    macro_rules! actions {
        ($($a:expr),* $(,)?) => { Actions::from_vec(vec![$($a),*]) };
    }

    use std::sync::Arc;

    use super::*;
    use crate::oracle::fault::{FaultPlan, FaultScript};
    use crate::oracle::provider::MockProvider;
    use crate::oracle::Style;
    use crate::policy::ladder::{Known, Ladder, Route, RouteSet};
    use crate::provider::Provider;

    fn at(route: usize) -> AttemptState {
        AttemptState {
            route,
            retries: 0,
            mode: ContinuationMode::Prefill,
            produced_text: false,
        }
    }

    /// A machine whose first attempt on route 0 has opened.
    fn opened() -> Machine {
        let mut m = Machine::new(at(0), false);
        assert_eq!(m.on(Event::Opened(at(0))), actions![Action::Read]);
        assert_eq!(m.state(), &State::Opening);
        m
    }

    fn text(t: &str) -> Event {
        Event::Item(Watched::Text(t.to_string()))
    }

    fn thought(t: &str) -> Event {
        Event::Item(Watched::Reasoning {
            text: t.to_string(),
            field: ReasoningField::ReasoningContent,
        })
    }

    fn cut() -> Event {
        Event::Item(Watched::Failed(FailureKind::Truncated { detail: None }))
    }

    fn decided(decision: Decision) -> Event {
        Event::Decided {
            decision,
            deferral: None,
        }
    }

    fn ladder(routes: usize) -> Ladder {
        let provider: Arc<dyn Provider> =
            Arc::new(MockProvider::new(FaultPlan::Fixed(FaultScript::NONE), Style::default()));
        Ladder::new(
            (0..routes)
                .map(|i| Route::new(&format!("r{i}"), "m", provider.clone()))
                .collect(),
        )
    }

    #[test]
    fn the_first_text_token_moves_thinking_to_answering() {
        let mut m = opened();
        assert_eq!(m.phase(), Phase::Waiting, "nothing reached the client yet");
        assert_eq!(
            m.on(thought("hmm")),
            actions![
                Action::FirstToken { timed: true },
                Action::Reasoning {
                    text: "hmm".into(),
                    field: ReasoningField::ReasoningContent,
                    placement: Placement::Forward
                },
                Action::Read
            ]
        );
        assert_eq!((m.state(), m.phase()), (&State::Streaming, Phase::Thinking));
        // An empty delta reaches no client: still thinking.
        m.on(text(""));
        assert_eq!(m.phase(), Phase::Thinking);
        assert_eq!(
            m.on(text("Hi")),
            actions![
                Action::Text {
                    text: "Hi".into(),
                    seam: false
                },
                Action::Read
            ]
        );
        assert_eq!(m.phase(), Phase::Answering);
    }

    #[test]
    fn a_failure_in_thinking_hands_over_afresh_with_the_seam_due() {
        let mut m = opened();
        m.on(thought("let me think"));
        let actions = m.on(cut());
        assert_eq!(
            actions[1],
            Action::Decide {
                failure: FailureKind::Truncated { detail: None },
                state: AttemptState {
                    produced_text: true,
                    ..at(0)
                },
                deferred: None,
                deltas: 1
            }
        );
        assert!(matches!(m.state(), State::Deciding { .. }));
        assert_eq!(
            m.on(decided(Decision::HandOver { to: 1 })),
            actions![
                Action::Pend {
                    reason: "truncated",
                    class: FailureClass::Technical
                },
                Action::Open {
                    route: 1,
                    retries: 0,
                    mode: None
                }
            ]
        );
        assert_eq!(m.state(), &State::HandingOver { to: 1, afresh: true });
        m.on(Event::Opened(at(1)));
        // The fallback's reasoning follows the seam marker; its text needs none then.
        match &m.on(thought("again"))[1] {
            Action::Reasoning { placement, .. } => assert_eq!(*placement, Placement::AfterSeam),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&m.on(text("A"))[0], Action::Text { seam: false, .. }));
    }

    #[test]
    fn a_fallback_answering_without_thinking_carries_the_seam() {
        let mut m = opened();
        m.on(thought("x"));
        m.on(cut());
        m.on(decided(Decision::HandOver { to: 1 }));
        m.on(Event::Opened(at(1)));
        assert_eq!(
            m.on(text("A")),
            actions![
                Action::FirstToken { timed: true },
                Action::Text {
                    text: "A".into(),
                    seam: true
                },
                Action::Read
            ]
        );
    }

    #[test]
    fn a_failure_after_text_hands_over_as_a_continuation_and_later_reasoning_is_withheld() {
        let mut m = opened();
        m.on(text("Hello"));
        m.on(Event::Item(Watched::Failed(FailureKind::Stall {
            after: Duration::from_secs(1),
        })));
        m.on(decided(Decision::HandOver { to: 1 }));
        assert_eq!(m.state(), &State::HandingOver { to: 1, afresh: false });
        m.on(Event::Opened(at(1)));
        match &m.on(thought("late"))[1] {
            Action::Reasoning { placement, .. } => assert_eq!(*placement, Placement::Withheld),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_finish_with_reasoning_and_no_text_is_an_empty_answer() {
        let mut m = opened();
        m.on(thought("abcd"));
        let actions = m.on(Event::Item(Watched::Finished("stop".into())));
        let empty = FailureKind::EmptyAnswer { reasoning_bytes: 4 };
        assert_eq!(
            actions[0],
            Action::Close {
                failure: Some(empty.clone()),
                deltas: 1
            }
        );
        assert_eq!(m.state(), &State::Deciding { failure: empty });
        // A content filter's finish stays the provider's answer.
        let mut m = opened();
        m.on(thought("abcd"));
        m.on(Event::Item(Watched::Finished("content_filter".into())));
        assert_eq!(m.state(), &State::Done);
        // A stream that just ends is cut.
        let mut m = opened();
        m.on(Event::Ended);
        assert_eq!(
            m.state(),
            &State::Deciding {
                failure: FailureKind::Truncated { detail: None }
            }
        );
    }

    #[test]
    fn a_refused_retry_budget_hands_over_in_one_decision() {
        let l = ladder(2);
        let busy = FailureKind::ServerError {
            status: 503,
            retry_after: None,
        };
        let known = Known {
            windows: vec![None, None],
            lost: RouteSet::default(),
            deferred: None,
        };
        let mut asked = Vec::new();
        let decision = l.decide_within(&busy, &at(0), &known, 0.5, &mut |i| {
            asked.push(i);
            false
        });
        assert_eq!(decision, Decision::HandOver { to: 1 });
        assert_eq!(
            asked,
            vec![0],
            "the budget is asked once, for the route that would be retried"
        );
        let mut asked = 0;
        let allowed = l.decide_within(&busy, &at(0), &known, 0.5, &mut |_| {
            asked += 1;
            true
        });
        assert!(matches!(allowed, Decision::Retry { .. }));
        assert_eq!(asked, 1);
        // A handover never asks the budget.
        let mut asked = 0;
        let cut = FailureKind::Truncated { detail: None };
        let on = AttemptState {
            produced_text: true,
            ..at(0)
        };
        l.decide_within(&cut, &on, &known, 0.5, &mut |_| {
            asked += 1;
            true
        });
        assert_eq!(asked, 0);
        // And the machine acts on that one decision.
        let mut m = opened();
        m.on(Event::Item(Watched::Failed(busy)));
        assert!(matches!(
            &m.on(decided(decision))[..],
            [Action::Pend { .. }, Action::Open { route: 1, .. }]
        ));
    }

    #[test]
    fn a_retry_waits_then_opens_the_same_route_with_one_more_retry() {
        let mut m = opened();
        let delay = Duration::from_millis(50);
        m.on(Event::Item(Watched::Failed(FailureKind::Reset {
            detail: "reset".into(),
        })));
        assert_eq!(
            m.on(decided(Decision::Retry { delay })),
            actions![
                Action::Wait { route: 0, delay },
                Action::Open {
                    route: 0,
                    retries: 1,
                    mode: Some(ContinuationMode::Prefill)
                }
            ]
        );
        assert_eq!(m.state(), &State::Waiting { route: 0, delay });
        m.on(Event::Item(Watched::Failed(FailureKind::PrefillRejected {
            message: "no".into(),
        })));
        assert_eq!(
            m.on(decided(Decision::SwitchToInstruct)),
            actions![Action::Open {
                route: 0,
                retries: 0,
                mode: Some(ContinuationMode::Instruct)
            }]
        );
    }

    #[test]
    fn a_return_answers_from_the_start_on_the_deferred_route() {
        let mut m = opened();
        let limited = FailureKind::RateLimited { retry_after: None };
        m.on(Event::Item(Watched::Failed(limited)));
        let deferral = Deferred {
            route: 0,
            retries: 1,
            retry_after: None,
        };
        m.on(Event::Decided {
            decision: Decision::HandOver { to: 1 },
            deferral: Some(deferral),
        });
        m.on(Event::Opened(at(1)));
        match &m.on(Event::Item(Watched::Failed(FailureKind::CircuitOpen)))[1] {
            Action::Decide { deferred, .. } => assert_eq!(*deferred, Some(deferral)),
            other => panic!("{other:?}"),
        }
        let delay = Duration::from_millis(500);
        assert_eq!(
            m.on(decided(Decision::Return { to: 0, delay })),
            actions![
                Action::Wait { route: 0, delay },
                Action::Unpend,
                Action::Open {
                    route: 0,
                    retries: 2,
                    mode: None
                }
            ]
        );
        // Used once: the next failure has nothing to return to.
        m.on(Event::Opened(at(0)));
        match &m.on(cut())[1] {
            Action::Decide { deferred, .. } => assert_eq!(*deferred, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuse_local_and_exhausted_end_the_session() {
        let policy = FailureKind::ContentPolicy { message: "no".into() };
        let mut m = opened();
        m.on(Event::Item(Watched::Failed(policy.clone())));
        assert_eq!(
            m.on(decided(Decision::Refuse)),
            actions![Action::Refuse { failure: policy }]
        );
        assert_eq!(m.state(), &State::Failed);
        let local = FailureKind::LocalResources {
            resource: "descriptors".into(),
            detail: "EMFILE".into(),
        };
        let mut m = opened();
        m.on(Event::Item(Watched::Failed(local.clone())));
        assert_eq!(
            m.on(decided(Decision::Local)),
            actions![Action::Local { failure: local }]
        );
        assert_eq!(m.state(), &State::Failed);
        // Exhausted in thinking, after forwarded reasoning: the rungs' text carries the seam.
        let mut m = opened();
        m.on(thought("t"));
        m.on(cut());
        assert_eq!(
            m.on(decided(Decision::Exhausted)),
            actions![
                Action::Pend {
                    reason: "truncated",
                    class: FailureClass::Technical
                },
                Action::LastResort { seam: true }
            ]
        );
        assert_eq!(m.state(), &State::Exhausted);
        // A decision with nothing to decide on does nothing.
        assert_eq!(m.on(decided(Decision::Exhausted)), Actions::new());
    }

    #[test]
    fn tool_call_deltas_are_held_until_the_finish() {
        let mut m = opened();
        let call = serde_json::json!({"index": 0, "function": {"name": "f"}});
        assert_eq!(
            m.on(Event::Item(Watched::ToolCalls(vec![call.clone()]))),
            actions![Action::FirstToken { timed: false }, Action::Read]
        );
        assert_eq!(
            m.on(Event::Item(Watched::ToolCalls(vec![call.clone()]))),
            actions![Action::Read]
        );
        assert_eq!(
            m.on(Event::Item(Watched::Finished("tool_calls".into()))),
            actions![
                Action::Close {
                    failure: None,
                    deltas: 2
                },
                Action::Finish {
                    reason: "tool_calls".into(),
                    tool_calls: vec![call.clone(), call]
                }
            ]
        );
        assert_eq!(m.state(), &State::Done);
        // Held calls of a failed attempt are dropped: the next route makes the call again.
        let mut m = opened();
        m.on(Event::Item(Watched::ToolCalls(vec![serde_json::json!({})])));
        m.on(cut());
        m.on(decided(Decision::HandOver { to: 1 }));
        m.on(Event::Opened(at(1)));
        m.on(text("ok"));
        match &m.on(Event::Item(Watched::Finished("stop".into())))[1] {
            Action::Finish { tool_calls, .. } => assert!(tool_calls.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    /// Whether the driver, after `actions`, has an event to report or the session is over.
    fn ends_in_a_report(actions: &[Action]) -> bool {
        matches!(
            actions.last(),
            Some(
                Action::Read
                    | Action::Open { .. }
                    | Action::Decide { .. }
                    | Action::Finish { .. }
                    | Action::Refuse { .. }
                    | Action::Local { .. }
                    | Action::LastResort { .. }
            )
        )
    }

    #[test]
    fn every_event_the_driver_reports_leads_to_a_report_or_an_end() {
        let items = [
            text("a"),
            text(""),
            thought("t"),
            Event::Item(Watched::ToolCalls(vec![serde_json::json!({})])),
            Event::Item(Watched::Usage(Usage::default())),
            Event::Item(Watched::Finished("stop".into())),
            cut(),
            Event::Ended,
        ];
        let decisions = [
            Decision::Retry {
                delay: Duration::from_millis(1),
            },
            Decision::SwitchToInstruct,
            Decision::HandOver { to: 1 },
            Decision::Return {
                to: 0,
                delay: Duration::ZERO,
            },
            Decision::Refuse,
            Decision::Local,
            Decision::Exhausted,
        ];
        // Every sequence of three items, each failure decided every way: the
        // driver's loop never runs out of actions before the session ends.
        for a in &items {
            for b in &items {
                for c in &items {
                    for d in &decisions {
                        let mut m = opened();
                        for event in [a, b, c] {
                            if matches!(m.state(), State::Done | State::Failed | State::Exhausted) {
                                break;
                            }
                            let mut actions = m.on(event.clone());
                            assert!(ends_in_a_report(&actions), "{event:?} → {actions:?}");
                            if matches!(m.state(), State::Deciding { .. }) {
                                actions = m.on(decided(*d));
                                assert!(ends_in_a_report(&actions), "{d:?} → {actions:?}");
                                if matches!(actions.last(), Some(Action::Open { .. })) {
                                    assert_eq!(m.on(Event::Opened(at(0))), actions![Action::Read]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_hedge_switch_starts_the_counts_afresh_without_reading() {
        let mut m = opened();
        assert!(!m.has_content());
        assert_eq!(m.on(Event::Switched(at(1))), Actions::new());
        assert_eq!(
            m.on(text("A"))[0],
            Action::FirstToken { timed: true },
            "the hedge's first token is timed"
        );
        assert!(m.has_content());
    }
}
