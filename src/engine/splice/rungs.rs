//! The ladder's own rungs in a session: the response cache (first rung and
//! last resort), the safe reply, and storing complete answers in the cache.

use super::*;

impl<'r> Session<'r> {
    /// A cached answer, as the first rung (`last_resort` false) or after every
    /// route failed: it must continue what the client already has (`seam`:
    /// its first text follows the reasoning seam marker).
    pub(super) fn cached(&mut self, ladder: &Ladder, last_resort: bool, mut seam: bool) -> Option<Vec<ClientItem>> {
        let rung = ladder.cache.as_ref()?;
        let wanted = if last_resort {
            rung.uses.last_resort()
        } else {
            rung.uses.first()
        };
        if !wanted {
            return None;
        }
        let hit = rung.store.get(&ResponseCache::key(self.request))?;
        let rest = hit.answer.text().strip_prefix(self.emitted.as_str())?.to_string();
        let sent = self.emitted.len();
        self.log.emit(EventKind::CacheHit {
            age_ms: hit.age.as_millis() as u64,
            last_resort,
            bytes: rest.len() as u64,
        });
        let (route, model): (Arc<str>, Arc<str>) = (CACHE_ROUTE.into(), CACHE_MODEL.into());
        let mut items = Vec::new();
        for text in hit.answer.deltas_after(sent) {
            let seam = !text.is_empty() && std::mem::take(&mut seam);
            items.extend(self.deliver_as(&route, &model, text, seam));
        }
        if self.pending.is_some() {
            items.extend(self.arrive(&route));
        }
        items.push(self.finish(hit.answer.finish_reason.clone()));
        Some(items)
    }

    /// Every route failed: a cached answer that continues the client's text,
    /// else the safe reply, else the failure (`seam`: the client's reasoning
    /// ends in a cut, marked before their first text).
    pub(super) fn last_resort(&mut self, ladder: &Ladder, mut seam: bool) -> Vec<ClientItem> {
        if let Some(items) = self.cached(ladder, true, seam) {
            return items;
        }
        let Some(safe) = &ladder.safe_reply else {
            let failures = std::mem::take(&mut self.failures);
            let error = SpliceError::Exhausted {
                failures,
                emitted_bytes: self.sent,
                tokens: std::mem::take(&mut self.tokens),
            };
            return vec![self.fail(error)];
        };
        // What the client saw decides, not the prefix: after a loop cut back to
        // nothing, the client still has text that the note must close.
        let text = safe.text_after(self.sent as usize);
        self.log.emit(EventKind::SafeReply {
            partial: self.sent > 0,
            bytes: text.len() as u64,
        });
        let (route, model): (Arc<str>, Arc<str>) = (SAFE_REPLY_ROUTE.into(), SAFE_REPLY_MODEL.into());
        let mut items = Vec::new();
        for delta in safe_reply::deltas(text) {
            let seam = !delta.is_empty() && std::mem::take(&mut seam);
            items.extend(self.deliver_as(&route, &model, delta, seam));
        }
        if self.pending.is_some() {
            items.extend(self.arrive(&route));
        }
        // Never cached: it is not an answer.
        self.deltas = None;
        items.push(self.finish("stop".to_string()));
        items
    }

    /// Stores a complete text answer in the ladder's cache.
    pub(super) fn remember(&mut self, ladder: &Ladder, finish_reason: &str) {
        let (Some(rung), Some(deltas)) = (&ladder.cache, self.deltas.take()) else {
            return;
        };
        if self.tool_calls_sent || deltas.is_empty() {
            return;
        }
        rung.store.put(
            ResponseCache::key(self.request),
            CachedAnswer {
                deltas,
                finish_reason: finish_reason.to_string(),
            },
        );
    }
}
