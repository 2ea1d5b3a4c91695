//! The ladder's non-model rungs: the response cache and the labelled safe reply.

pub mod cache;
pub mod safe_reply;
