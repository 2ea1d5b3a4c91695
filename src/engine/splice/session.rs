//! A session's steps between and within attempts: opening one, delivering
//! its text, completing handovers, accounting and ending.

use super::*;

impl<'r> Session<'r> {
    pub(super) fn new(request: &'r ChatRequest, ladder: &'r Ladder, log: SessionLog) -> Self {
        let (hi, lo) = request.session.as_u64_pair();
        let asked = request.model.as_deref();
        Session {
            request,
            healths: ladder.routes.iter().map(|r| r.health_for(asked)).collect(),
            lost: RouteSet::default(),
            log,
            emitted: String::new(),
            sent: 0,
            chain: Vec::new(),
            failures: Vec::new(),
            tokens: Tally::default(),
            pending: None,
            attempts: 0,
            rng: SplitMix::new(hi ^ lo),
            tool_calls: Vec::new(),
            tool_calls_sent: false,
            deltas: ladder.cache.is_some().then(Vec::new),
            reasoning_sent: 0,
            reasoning_field: ReasoningField::default(),
            seam_marker: &ladder.reasoning_marker,
        }
    }

    pub(super) fn open(&mut self, route: &Route, state: &AttemptState, instruction: &str, rules: &Rules) -> Attempt {
        self.attempts += 1;
        let messages = continuation::messages(&self.request.messages, &self.emitted, state.mode, instruction);
        let health = self.health(state.route);
        let (messages, too_small) = self.fit(route, &health, messages);
        let model = health.name().clone();
        let upstream = UpstreamRequest {
            model: model.to_string(),
            messages,
            params: route.sent_params(&self.request.params),
            continue_final_message: route.continue_final_message
                && state.mode == continuation::ContinuationMode::Prefill
                && !self.emitted.is_empty(),
        };
        // Decided once, here, and recorded: a replay re-drives with these, not with a history it lacks.
        let deadlines = route.deadlines_for(&health, &upstream.messages);
        let evidence = Evidence {
            setting: route.overlap,
            seen_echoing: health.seen_echoing(state.mode),
            stripped: route.provider.strips_trailing_whitespace(state.mode),
        };
        if self.log.listened() {
            self.log.emit(EventKind::AttemptOpened {
                route: route.name.to_string(),
                model: model.to_string(),
                attempt: self.attempts,
                mode: state.mode,
                prefix_bytes: self.emitted.len() as u64,
                request: upstream.clone(),
                deadlines: Some(Box::new(deadlines)),
                seen_echoing: evidence.seen_echoing,
                stripped: evidence.stripped,
            });
        }
        let (permit, stream) =
            if let Some(broken) = too_small.or_else(|| rules.check(route.price_per_1k, &health, &upstream)) {
                (None, fails_at_once(broken))
            } else {
                match health.admit(state.retries == 0) {
                    Some((permit, transition)) => {
                        self.breaker_changed(&route.name, &model, transition);
                        (Some(permit), route.provider.stream(upstream))
                    }
                    None => (None, fails_at_once(FailureKind::CircuitOpen)),
                }
            };
        Attempt {
            number: self.attempts,
            thought: None,
            permit,
            watchdog: crate::engine::watchdog::for_route(route, &health, stream, deadlines).into_stream(),
            trim: OverlapTrim::new(&self.emitted, evidence),
            mode: state.mode,
            learned: false,
            opened: Instant::now(),
            usage: None,
            route: route.name.clone(),
            model,
            health,
        }
    }

    /// Opens the attempt on `route` that `state` describes, with its thinking
    /// loop guard, its hedge race and its text loop guard (which watches the
    /// prefix from where it stands now).
    pub(super) fn start(
        &mut self,
        ladder: &Ladder,
        route: &Route,
        state: &AttemptState,
    ) -> (Attempt, Race, Option<LoopGuard>) {
        let mut attempt = self.open(route, state, &ladder.instruction, &ladder.rules);
        attempt.thought = ladder.loop_guard.as_ref().map(crate::policy::loopguard::TailGuard::new);
        let race = Race::arm(ladder, state, &attempt, self.lost);
        let guard = ladder
            .loop_guard
            .as_ref()
            .map(|c| LoopGuard::new(c, self.emitted.len()));
        (attempt, race, guard)
    }

    /// The health of the model the session's attempts on route `index` go to.
    pub(super) fn health(&self, index: usize) -> Arc<ModelHealth> {
        // One per route of the ladder, as `state.route` indexes `ladder.routes`.
        self.healths[index].clone()
    }

    /// What the session knows of its ladder's routes, for [`Ladder::decide_within`],
    /// with the route the machine `deferred`.
    pub(super) fn known(&self, ladder: &Ladder, deferred: Option<Deferred>) -> Known {
        Known {
            windows: ladder
                .routes
                .iter()
                .zip(&self.healths)
                .map(|(r, h)| r.window(h))
                .collect(),
            lost: self.lost,
            // Only while the client has nothing: a route asked again answers from the start.
            deferred: deferred.filter(|_| self.sent == 0 && self.reasoning_sent == 0),
        }
    }

    /// The ladder's one decision on `failure`, within the routes' retry
    /// budgets: a refusal of the budget is published as it happens.
    pub(super) fn decide(
        &self,
        ladder: &Ladder,
        failure: &FailureKind,
        state: &AttemptState,
        known: &Known,
        jitter: f64,
    ) -> Decision {
        ladder.decide_within(failure, state, known, jitter, &mut |index| {
            let (Some(route), Some(health)) = (ladder.routes.get(index), self.healths.get(index)) else {
                return false;
            };
            let allowed = route.allow_retry(health);
            if !allowed {
                self.log.emit(EventKind::RetryDenied {
                    route: route.name.to_string(),
                });
            }
            allowed
        })
    }

    /// The client items for `text` from `attempt`: a handover notice first if
    /// one is pending, then the reasoning seam marker if `seam`.
    pub(super) fn deliver(&mut self, attempt: &Attempt, text: String, seam: bool) -> Delivered {
        self.deliver_as(&attempt.route, &attempt.model, text, seam)
    }

    /// The client items for `text` written by `route` as `model` (`seam`: the seam marker first).
    pub(super) fn deliver_as(&mut self, route: &Arc<str>, model: &Arc<str>, text: String, seam: bool) -> Delivered {
        if text.is_empty() {
            return [None, None, None].into_iter().flatten();
        }
        let handover = self.arrive(route);
        // A fallback that answers without reasoning still shows where the reasoning was cut.
        let seam = if seam { self.seam(route, model) } else { None };
        if self.log.listened() {
            self.log.emit(EventKind::Delta {
                route: route.to_string(),
                text: text.clone(),
            });
        }
        self.emitted.push_str(&text);
        self.sent += text.len() as u64;
        if let Some(deltas) = &mut self.deltas {
            deltas.push(text.clone());
        }
        let item = ClientItem::Text {
            text,
            route: route.clone(),
            model: model.clone(),
        };
        [handover, seam, Some(item)].into_iter().flatten()
    }

    /// The client items for a reasoning delta of `attempt` placed at
    /// `placement`: none when it is withheld (counted only), else a pending
    /// handover notice and seam marker first.
    pub(super) fn deliver_reasoning(
        &mut self,
        attempt: &Attempt,
        text: String,
        field: ReasoningField,
        placement: Placement,
    ) -> Delivered {
        if placement == Placement::Withheld {
            // Counted in the attempt's deltas already; never forwarded.
            return [None, None, None].into_iter().flatten();
        }
        let handover = self.arrive(&attempt.route);
        let seam = if placement == Placement::AfterSeam {
            self.seam(&attempt.route, &attempt.model)
        } else {
            None
        };
        if self.log.listened() {
            self.log.emit(EventKind::Reasoning {
                route: attempt.route.to_string(),
                text: text.clone(),
            });
        }
        self.reasoning_sent += text.len() as u64;
        self.reasoning_field = field;
        let item = ClientItem::Reasoning {
            text,
            field,
            route: attempt.route.clone(),
            model: attempt.model.clone(),
        };
        [handover, seam, Some(item)].into_iter().flatten()
    }

    /// The seam marker where the client's reasoning was cut, in the field that reasoning came in.
    fn seam(&mut self, route: &Arc<str>, model: &Arc<str>) -> Option<ClientItem> {
        if self.seam_marker.is_empty() {
            return None;
        }
        let text = self.seam_marker.to_string();
        if self.log.listened() {
            self.log.emit(EventKind::Reasoning {
                route: route.to_string(),
                text: text.clone(),
            });
        }
        self.reasoning_sent += text.len() as u64;
        Some(ClientItem::Reasoning {
            text,
            field: self.reasoning_field,
            route: route.clone(),
            model: model.clone(),
        })
    }

    /// The client items for a finished attempt's tool calls.
    pub(super) fn deliver_tool_calls(&mut self, attempt: &Attempt, deltas: Vec<serde_json::Value>) -> Delivered {
        if self.log.listened() {
            self.tool_calls.extend(deltas.iter().cloned());
        }
        let item = ClientItem::ToolCalls {
            deltas,
            route: attempt.route.clone(),
            model: attempt.model.clone(),
        };
        self.tool_calls_sent = true;
        [self.arrive(&attempt.route), None, Some(item)].into_iter().flatten()
    }

    /// `attempt` is about to reach the client: completes a pending handover and extends the route chain.
    pub(super) fn arrive(&mut self, route: &Arc<str>) -> Option<ClientItem> {
        if self.chain.last().map(String::as_str) != Some(&**route) {
            self.chain.push(route.to_string());
        }
        let p = self.pending.take()?;
        let handover = Handover {
            from: p.from,
            to: route.clone(),
            class: p.class,
            reason: p.reason,
            prefix_bytes: self.sent,
            gap: p.at.elapsed(),
        };
        self.log.emit(EventKind::Handover {
            from: handover.from.to_string(),
            to: handover.to.to_string(),
            class: handover.class,
            reason: handover.reason.to_string(),
            prefix_bytes: handover.prefix_bytes,
            gap_ms: handover.gap.as_millis() as u64,
        });
        Some(ClientItem::Handover(handover))
    }

    /// Counts `attempt`'s tokens, once it is over: every attempt's, not only
    /// those that contributed text, since a provider bills a cut one too.
    pub(super) fn account(&mut self, attempt: &Attempt, deltas: u64) {
        self.tokens.push(AttemptTokens {
            attempt: attempt.number,
            route: attempt.route.to_string(),
            model: attempt.model.to_string(),
            reported: attempt.usage,
            deltas,
        });
    }

    /// Publishes what the upstream sent (failures are published with their decision).
    pub(super) fn upstream(&self, attempt: &Attempt, item: Option<&Watched>) {
        if !self.log.listened() {
            return;
        }
        let item = match item {
            Some(Watched::Text(t)) => UpstreamItem::Text(t.clone()),
            Some(Watched::Reasoning { text, field }) => UpstreamItem::Reasoning {
                text: text.clone(),
                field: *field,
            },
            Some(Watched::ToolCalls(c)) => UpstreamItem::ToolCalls(c.clone()),
            Some(Watched::Usage(u)) => UpstreamItem::Usage(*u),
            Some(Watched::Finished(r)) => UpstreamItem::Finished(r.clone()),
            Some(Watched::Failed(_)) | None => return,
        };
        self.log.emit(EventKind::Upstream {
            attempt: attempt.number,
            item,
        });
    }

    /// Settles the attempt's breaker permit with its outcome.
    pub(super) fn settle(&self, route: &Route, attempt: &mut Attempt, failure: Option<&FailureKind>) {
        if let Some(permit) = attempt.permit.take() {
            let transition = permit.settle(failure);
            self.breaker_changed(&route.name, &attempt.model, transition);
        }
    }

    pub(super) fn breaker_changed(&self, route: &str, model: &str, transition: Option<Transition>) {
        if let Some(t) = transition {
            tracing::info!(
                route,
                model,
                from = t.from.as_str(),
                to = t.to.as_str(),
                "circuit breaker"
            );
            self.log.emit(EventKind::Breaker {
                route: route.to_string(),
                model: Some(model.to_string()),
                from: t.from,
                to: t.to,
            });
        }
    }

    pub(super) fn record_failure(&mut self, route: &Route, kind: &FailureKind, tokens: u64) {
        let failure = Failure::new(kind, &route.name, tokens, self.sent, self.log.t_ms());
        self.log.emit(EventKind::Failure {
            failure: failure.clone(),
            cause: kind.clone(),
        });
        self.failures.push(failure);
    }

    pub(super) fn finish(&mut self, finish_reason: String) -> ClientItem {
        let tokens = std::mem::take(&mut self.tokens);
        let usage = tokens.reported().unwrap_or_default();
        self.log.emit(EventKind::Finished {
            finish_reason: finish_reason.clone(),
            route_chain: self.chain.clone(),
            bytes: self.sent,
            usage,
            tool_calls: std::mem::take(&mut self.tool_calls),
            tokens: Some(tokens.clone()),
        });
        ClientItem::Done(Completion {
            finish_reason,
            tokens,
            route_chain: std::mem::take(&mut self.chain),
            failures: std::mem::take(&mut self.failures),
        })
    }

    /// `messages` fitted to `route`'s configured context window (announcing
    /// what was dropped); unchanged, with the failure that skips the route, if
    /// they cannot fit. A window only learned from an error drops nothing: it
    /// skips the route when the messages alone are larger.
    pub(super) fn fit(
        &self,
        route: &Route,
        health: &ModelHealth,
        messages: Vec<Message>,
    ) -> (Vec<Message>, Option<FailureKind>) {
        let Some(window) = route.window(health) else {
            return (messages, None);
        };
        if route.context_tokens.is_none() {
            let needed = crate::request::estimate_tokens(&messages);
            let too_small = (needed > window).then_some(FailureKind::ContextTooSmall { needed, window });
            return (messages, too_small);
        }
        let reserve = fit::reserve(&self.request.params);
        let protected = fit::protected_from(&self.request.messages);
        match fit::fit(&messages, protected, window, reserve) {
            Ok(plan) if plan.drops() => {
                self.log.emit(EventKind::ContextFitted {
                    route: route.name.to_string(),
                    dropped_messages: plan.dropped_messages,
                    dropped_tokens: plan.dropped_tokens,
                    kept_tokens: plan.kept_tokens,
                    reserve,
                    window,
                });
                (plan.apply(messages), None)
            }
            Ok(_) => (messages, None),
            Err(TooSmall { needed, window }) => (messages, Some(FailureKind::ContextTooSmall { needed, window })),
        }
    }

    /// Cuts a loop out of the prefix, back to where it began; the client, which
    /// already has the looped text, gets `marker` where that text ends.
    pub(super) fn cut_loop(&mut self, attempt: &Attempt, found: &Loop, marker: &str) -> Option<ClientItem> {
        if self.emitted.is_char_boundary(found.start) {
            self.emitted.truncate(found.start);
        }
        // What the client got is not an answer to serve again.
        self.deltas = None;
        if marker.is_empty() {
            return None;
        }
        self.log.emit(EventKind::Delta {
            route: attempt.route.to_string(),
            text: marker.to_string(),
        });
        self.sent += marker.len() as u64;
        Some(ClientItem::Text {
            text: marker.to_string(),
            route: attempt.route.clone(),
            model: attempt.model.clone(),
        })
    }

    pub(super) fn fail(&mut self, error: SpliceError) -> ClientItem {
        self.log.emit(EventKind::Failed {
            error: error.to_string(),
            bytes: self.sent,
            tokens: Some(error.tokens().clone()),
        });
        ClientItem::Failed(error)
    }
}
