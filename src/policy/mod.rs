//! Policy: the ladder and its pure decision, and the per-(route, model) state
//! and rules it decides with (breaker, budget, health, deadlines, hedging,
//! business rules), plus the seam rules (continuation, overlap trim, loop guard,
//! reasoning placement, context fitting). No IO here.

pub mod breaker;
pub mod budget;
pub mod deadline;
pub mod fit;
pub mod health;
pub mod hedge;
pub mod ladder;
pub mod loopguard;
pub mod overlap;
pub mod reasoning;
pub mod rules;
