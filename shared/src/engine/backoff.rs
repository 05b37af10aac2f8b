//! Retry delays: fixed, linear or exponential, capped, with deterministic jitter.
//!
//! Jitter must not break replay, so it is derived from the execution id and the retry's key
//! rather than drawn from a random source: the same retry always waits the same time.

use std::time::Duration;

use crate::flow::{Backoff, Retry};

/// The delay before try number `next_attempt` (2 for the first retry).
pub fn retry_delay(retry: &Retry, next_attempt: u32, seed: &str) -> Duration {
    let n = next_attempt.saturating_sub(1).max(1); // retries so far, counting this one
    let base = retry.delay.as_secs_f64();
    let raw = match retry.backoff {
        Backoff::Fixed => base,
        Backoff::Linear => base * f64::from(n),
        Backoff::Exponential => {
            base * retry
                .factor
                .max(1.0)
                .powi(n.saturating_sub(1).min(64) as i32)
        }
    };
    let capped = match retry.max_delay {
        Some(max) => raw.min(max.as_secs_f64()),
        None => raw.min(Duration::from_secs(86_400 * 365).as_secs_f64()),
    };
    let secs = if retry.jitter {
        // "Equal jitter": half the delay is kept, the other half is spread.
        capped / 2.0 + capped / 2.0 * unit_fraction(seed)
    } else {
        capped
    };
    Duration::from_secs_f64(secs.max(0.0))
}

/// A number in [0, 1) derived from `seed` (FNV-1a, then a finalizer).
fn unit_fraction(seed: &str) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(backoff: Backoff, jitter: bool) -> Retry {
        Retry {
            attempts: 10,
            backoff,
            delay: Duration::from_millis(100),
            jitter,
            ..Retry::default()
        }
    }

    #[test]
    fn fixed_linear_exponential() {
        let ms = |r: &Retry, n| retry_delay(r, n, "k").as_millis();
        let fixed = retry(Backoff::Fixed, false);
        assert_eq!(
            [ms(&fixed, 2), ms(&fixed, 3), ms(&fixed, 4)],
            [100, 100, 100]
        );
        let linear = retry(Backoff::Linear, false);
        assert_eq!(
            [ms(&linear, 2), ms(&linear, 3), ms(&linear, 4)],
            [100, 200, 300]
        );
        let exp = retry(Backoff::Exponential, false);
        assert_eq!([ms(&exp, 2), ms(&exp, 3), ms(&exp, 4)], [100, 200, 400]);
    }

    #[test]
    fn max_delay_caps() {
        let mut exp = retry(Backoff::Exponential, false);
        exp.max_delay = Some(Duration::from_millis(250));
        assert_eq!(retry_delay(&exp, 9, "k"), Duration::from_millis(250));
    }

    #[test]
    fn jitter_is_deterministic_and_bounded() {
        let r = retry(Backoff::Fixed, true);
        let a = retry_delay(&r, 2, "exec-1/step@1");
        assert_eq!(a, retry_delay(&r, 2, "exec-1/step@1"));
        let spread: Vec<_> = (0..100)
            .map(|i| retry_delay(&r, 2, &format!("seed{i}")))
            .collect();
        assert!(
            spread
                .iter()
                .all(|d| *d >= Duration::from_millis(50) && *d <= Duration::from_millis(100))
        );
        assert!(
            spread.iter().any(|d| *d != spread[0]),
            "jitter spreads delays"
        );
    }
}
