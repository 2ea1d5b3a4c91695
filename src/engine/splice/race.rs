//! Hedging inside a session: racing an attempt against a hedge on the next
//! route, and settling the race (see [`crate::policy::hedge`] for the timing rule).

use super::*;

/// The deltas of a race's loser: the first content of either side ends the race.
const RACE_LOSER_DELTAS: u64 = 0;

/// Hedging of the attempt the ladder opened (see [`crate::policy::hedge`]).
pub(super) enum Race {
    /// Not hedged (hedging off, no next route, no delay known, or the race is over).
    Off,
    /// The hedge starts at `at` unless content comes first.
    Armed {
        /// When.
        at: Instant,
        /// Since the attempt opened, as recorded.
        after: Duration,
        /// The hedge's route index.
        to: usize,
    },
    /// Both run; the first content decides.
    Running {
        /// The hedge attempt.
        hedge: Box<Attempt>,
        /// Its state, which becomes the session's if it goes on.
        state: AttemptState,
    },
}

impl Race {
    /// The race for `attempt`, just opened as `state` says; `lost` routes are never hedged to.
    pub(super) fn arm(ladder: &Ladder, state: &AttemptState, attempt: &Attempt, lost: RouteSet) -> Race {
        let Some(policy) = &ladder.hedge else {
            return Race::Off;
        };
        let Some(to) = ladder.hedge_route(state.route, lost) else {
            return Race::Off;
        };
        match ladder.routes[state.route].hedge_delay(policy, attempt.number, &attempt.health) {
            Some(after) => Race::Armed {
                at: attempt.opened + after,
                after,
                to,
            },
            None => Race::Off,
        }
    }
}

impl<'r> Session<'r> {
    /// The next item of the current attempt, racing it against a hedge while `race`
    /// says so (`content`: the attempt already produced some, so no hedge is
    /// needed); when the hedge goes on, `route`, `attempt` and `state` become its.
    pub(super) async fn next_item<'l>(
        &mut self,
        ladder: &'l Ladder,
        route: &mut &'l Route,
        attempt: &mut Attempt,
        state: &mut AttemptState,
        race: &mut Race,
        content: bool,
    ) -> Option<Watched> {
        loop {
            match std::mem::replace(race, Race::Off) {
                Race::Off => return attempt.watchdog.next().await,
                // Content already came: nothing left to hedge.
                Race::Armed { .. } if content => {}
                Race::Armed { at, after, to } => {
                    tokio::select! {
                        // The attempt first: content ready at the deadline needs no hedge.
                        biased;
                        next = attempt.watchdog.next() => {
                            *race = Race::Armed { at, after, to };
                            return next;
                        }
                        () = tokio::time::sleep_until(at) => {
                            *race = self.start_hedge(ladder, route, attempt, after, to);
                        }
                    }
                }
                Race::Running {
                    mut hedge,
                    state: hedge_state,
                } => {
                    let (side, next) = next_of_either(&mut attempt.watchdog, &mut hedge.watchdog).await;
                    match (side, next) {
                        (Side::Primary, Some(Watched::Usage(usage))) => {
                            *race = Race::Running {
                                hedge,
                                state: hedge_state,
                            };
                            return Some(Watched::Usage(usage));
                        }
                        (Side::Hedge, Some(Watched::Usage(usage))) => {
                            self.upstream(&hedge, Some(&Watched::Usage(usage)));
                            hedge.usage = Some(usage::merge(hedge.usage, usage));
                            *race = Race::Running {
                                hedge,
                                state: hedge_state,
                            };
                        }
                        (Side::Primary, Some(Watched::Failed(kind))) if kind.class() != FailureClass::Policy => {
                            // The hedge is already the handover the failure calls for.
                            let mut failed = std::mem::replace(attempt, *hedge);
                            self.race_lost(route, &mut failed, &kind);
                            self.pending.get_or_insert_with(|| Pending::after(route, &kind));
                            *route = &ladder.routes[hedge_state.route];
                            *state = hedge_state;
                            self.hedge_won(ladder, attempt, true, None);
                        }
                        (Side::Primary, None) => {
                            // A watchdog yields `None` only after its end, which ends the race first.
                            return None;
                        }
                        (Side::Primary, next) => {
                            // Content, a finish or a refusal: the hedge is not needed.
                            self.hedge_won(ladder, attempt, false, Some(&hedge));
                            self.account(&hedge, RACE_LOSER_DELTAS);
                            return next;
                        }
                        (Side::Hedge, Some(Watched::Failed(kind))) => {
                            let hedge_route = &ladder.routes[hedge_state.route];
                            self.race_lost(hedge_route, &mut hedge, &kind);
                            // A later handover must not go back to the route that just failed.
                            self.lost.insert(hedge_state.route);
                            self.hedge_won(ladder, attempt, false, None);
                        }
                        (Side::Hedge, None) => {}
                        (Side::Hedge, next) => {
                            let cancelled = std::mem::replace(attempt, *hedge);
                            *route = &ladder.routes[hedge_state.route];
                            *state = hedge_state;
                            self.hedge_won(ladder, attempt, true, Some(&cancelled));
                            // Dropping it frees its breaker permit without counting a failure.
                            self.account(&cancelled, RACE_LOSER_DELTAS);
                            drop(cancelled);
                            return next;
                        }
                    }
                }
            }
        }
    }

    /// Starts the hedge of `attempt` on route `to`, `after` its opening.
    pub(super) fn start_hedge(
        &mut self,
        ladder: &Ladder,
        route: &Route,
        attempt: &Attempt,
        after: Duration,
        to: usize,
    ) -> Race {
        let next = &ladder.routes[to];
        let state = AttemptState::first_on(to, next, &self.health(to));
        self.log.emit(EventKind::Hedge {
            route: route.name.to_string(),
            attempt: attempt.number,
            hedge_route: next.name.to_string(),
            hedge_attempt: self.attempts + 1,
            after_ms: after.as_millis() as u64,
        });
        let mut hedge = self.open(next, &state, &ladder.instruction, &ladder.rules);
        hedge.thought = ladder.loop_guard.as_ref().map(crate::policy::loopguard::TailGuard::new);
        Race::Running {
            hedge: Box::new(hedge),
            state,
        }
    }

    /// One side of a race failed before any content: recorded like any failed attempt.
    pub(super) fn race_lost(&mut self, route: &Route, attempt: &mut Attempt, kind: &FailureKind) {
        self.settle(route, attempt, Some(kind));
        attempt.health.learn_from(kind);
        self.record_failure(route, kind, RACE_LOSER_DELTAS);
        self.account(attempt, RACE_LOSER_DELTAS);
    }

    /// A race ended: `winner` goes on; `cancelled` was still running.
    pub(super) fn hedge_won(&self, ladder: &Ladder, winner: &Attempt, by_hedge: bool, cancelled: Option<&Attempt>) {
        if let Some(policy) = &ladder.hedge {
            policy.count(crate::policy::hedge::Outcome::of(by_hedge, cancelled.is_some()));
        }
        self.log.emit(EventKind::HedgeWon {
            route: winner.route.to_string(),
            attempt: winner.number,
            by_hedge,
            cancelled: cancelled.map(|c| c.route.to_string()),
            cancelled_attempt: cancelled.map(|c| c.number),
        });
    }
}

/// Which attempt of a race produced an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// The attempt the ladder opened.
    Primary,
    /// The hedge started for it.
    Hedge,
}

/// The next item of either watched stream; on a tie, the primary's.
pub(super) async fn next_of_either<S>(primary: &mut S, hedge: &mut S) -> (Side, Option<Watched>)
where
    S: futures::Stream<Item = Watched> + Unpin,
{
    // Both `next` futures are cancel-safe: an item is only taken in the poll that returns it.
    tokio::select! {
        biased;
        item = primary.next() => (Side::Primary, item),
        item = hedge.next() => (Side::Hedge, item),
    }
}
