//! A `Duration` as milliseconds in JSON: an integer when whole, else a
//! decimal (exact to the nanosecond). For `#[serde(with = "crate::serde_ms")]`
//! on recorded and configured deadlines; it sits at the bottom of the module
//! graph so both the policy types and the recordings can use it.

use std::time::Duration;

use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

/// Writes `d` in milliseconds.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    if d.subsec_nanos() % 1_000_000 == 0 {
        s.serialize_u64(d.as_millis() as u64)
    } else {
        s.serialize_f64(d.as_nanos() as f64 / 1e6)
    }
}

/// Reads milliseconds, integer or decimal.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = serde_json::Number::deserialize(d)?;
    if let Some(ms) = v.as_u64() {
        return Ok(Duration::from_millis(ms));
    }
    match v.as_f64() {
        Some(ms) if ms.is_finite() && ms >= 0.0 => Ok(Duration::from_nanos((ms * 1e6).round() as u64)),
        _ => Err(D::Error::custom(format!("{v} is not a duration in milliseconds"))),
    }
}

/// Serde for an optional [`Duration`] as milliseconds (`null` or absent: none).
pub mod opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `d` in milliseconds, or `null`.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads milliseconds, integer or decimal, or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Ms(#[serde(with = "super")] Duration);
        Ok(Option::<Ms>::deserialize(d)?.map(|Ms(d)| d))
    }
}
