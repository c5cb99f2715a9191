//! When to renew and when to retry: pure functions of plain times.
//!
//! Nothing here reads a clock or a random source; callers pass `now` and a
//! jitter fraction in `[0, 1)`, so every rule is covered by unit tests.

use std::time::{Duration, SystemTime};

/// The shortest delay ever scheduled: a zero or negative delay would spin.
pub const MIN_DELAY: Duration = Duration::from_secs(1);

/// Renewal starts at most this share of the lifetime earlier than planned,
/// so tokens minted together do not all renew in the same second.
const RENEWAL_JITTER_SHARE: f64 = 0.05;

/// A failed refresh is retried no later than this before the token expires.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// Backoff for errors that may clear up by themselves (timeouts, 5xx, throttling).
const TRANSIENT_BACKOFF: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));
/// Backoff for errors that need a configuration change (rejected client,
/// missing key): retried slowly, and at once when the spec changes.
const CONFIGURATION_BACKOFF: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(1800));

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: use hours, minutes and seconds such as 10m, 1h30m or 90s")]
pub struct InvalidDuration(pub String);

/// Parses `1h30m`, `10m`, `90s` (the units in this order, each at most once).
pub fn parse_duration(text: &str) -> Result<Duration, InvalidDuration> {
    let invalid = || InvalidDuration(text.to_owned());
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut last_unit = 0;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let (rank, seconds) = match c {
            'h' => (1, 3600),
            'm' => (2, 60),
            's' => (3, 1),
            _ => return Err(invalid()),
        };
        if digits.is_empty() || rank <= last_unit {
            return Err(invalid());
        }
        let value: u64 = digits.parse().map_err(|_| invalid())?;
        total = value
            .checked_mul(seconds)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(invalid)?;
        digits.clear();
        last_unit = rank;
    }
    if !digits.is_empty() || last_unit == 0 {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total))
}

/// When to renew a token obtained at `issued_at` that expires at
/// `expires_at`: `renew_before` ahead of expiry when given and shorter than
/// the lifetime, else two thirds through it; then up to 5 % of the lifetime
/// earlier by `jitter`; truncated to whole seconds (status stores seconds,
/// and an untruncated time would wake the controller just too early).
pub fn renew_at(
    issued_at: SystemTime,
    expires_at: SystemTime,
    renew_before: Option<Duration>,
    jitter: f64,
) -> SystemTime {
    let lifetime = expires_at.duration_since(issued_at).unwrap_or_default();
    let planned = match renew_before {
        Some(before) if before < lifetime => lifetime - before,
        _ => lifetime.mul_f64(2.0 / 3.0),
    };
    let early = lifetime.mul_f64(RENEWAL_JITTER_SHARE * jitter.clamp(0.0, 1.0));
    let offset = planned.saturating_sub(early).max(MIN_DELAY.min(lifetime));
    truncate_to_seconds(issued_at + offset)
}

/// Whole seconds since the epoch, rounded down.
pub fn truncate_to_seconds(time: SystemTime) -> SystemTime {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}

/// How long to wait from `now` until `at`: never less than [`MIN_DELAY`].
pub fn delay_until(now: SystemTime, at: SystemTime) -> Duration {
    at.duration_since(now).unwrap_or_default().max(MIN_DELAY)
}

/// What kind of failure is being retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// May clear up by itself: retry with a short exponential backoff.
    Transient,
    /// Needs a configuration change: retry slowly.
    Configuration,
    /// The server said when to come back (HTTP 429 with a reset time).
    RateLimitedUntil(SystemTime),
}

/// Exponential backoff after `failures` consecutive failures (1 = the
/// first), with up to ±20 % jitter.
pub fn backoff(failures: u32, kind: FailureKind, jitter: f64) -> Duration {
    let (base, cap) = match kind {
        FailureKind::Configuration => CONFIGURATION_BACKOFF,
        _ => TRANSIENT_BACKOFF,
    };
    let exponent = failures.saturating_sub(1).min(16);
    let raw = base.saturating_mul(1 << exponent).min(cap);
    raw.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
        .max(MIN_DELAY)
}

/// When to try again after a failure at `now`.
///
/// A rate limit waits for the server's reset time (plus up to 2 s of
/// jitter). Otherwise the backoff applies, but while a good token is still
/// valid the retry is brought forward to [`EXPIRY_MARGIN`] before its
/// expiry, so a long backoff never lets the Secret run out unnoticed.
pub fn next_attempt(
    now: SystemTime,
    failures: u32,
    kind: FailureKind,
    valid_token_expires_at: Option<SystemTime>,
    jitter: f64,
) -> SystemTime {
    if let FailureKind::RateLimitedUntil(reset) = kind {
        let reset = reset.max(now) + Duration::from_secs(2).mul_f64(jitter.clamp(0.0, 1.0));
        return truncate_up(reset.max(now + MIN_DELAY));
    }
    let mut at = now + backoff(failures, kind, jitter);
    if let Some(expires_at) = valid_token_expires_at {
        let last_chance = expires_at.checked_sub(EXPIRY_MARGIN).unwrap_or(expires_at);
        if last_chance > now && at > last_chance {
            at = last_chance;
        }
    }
    truncate_up(at.max(now + MIN_DELAY))
}

/// Rounded up to whole seconds, so a stored time never fires early.
fn truncate_up(time: SystemTime) -> SystemTime {
    let down = truncate_to_seconds(time);
    if down < time {
        down + Duration::from_secs(1)
    } else {
        down
    }
}

/// A deterministic jitter fraction in `[0, 1)` from a seed, so the same
/// token always yields the same renewal time across restarts.
pub fn seeded_jitter(seed: &str) -> f64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(seed.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h5s"), Ok(Duration::from_secs(7205)));
        for bad in ["", "10", "m", "5m1h", "1x", "1h1h", "-5m", " 5m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn renewal_defaults_to_two_thirds_of_the_real_lifetime() {
        assert_eq!(renew_at(t(1000), t(4600), None, 0.0), t(3400));
        // A 5-minute custom-server token renews after 200 s, not after a constant.
        assert_eq!(renew_at(t(1000), t(1300), None, 0.0), t(1200));
    }

    #[test]
    fn renew_before_counts_back_from_expiry() {
        let ten_minutes = Some(Duration::from_secs(600));
        assert_eq!(renew_at(t(1000), t(4600), ten_minutes, 0.0), t(4000));
        // Longer than the lifetime: two thirds instead of "renew at once".
        assert_eq!(renew_at(t(1000), t(1300), ten_minutes, 0.0), t(1200));
    }

    #[test]
    fn jitter_only_renews_a_little_earlier_and_in_whole_seconds() {
        let plain = renew_at(t(1000), t(4600), None, 0.0);
        for jitter in [0.1, 0.5, 0.999] {
            let jittered = renew_at(t(1000), t(4600), None, jitter);
            assert!(jittered <= plain);
            assert!(
                jittered >= plain - Duration::from_secs(180),
                "at most 5 % of 3600 s"
            );
            let since_epoch = jittered
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("after epoch");
            assert_eq!(since_epoch.subsec_nanos(), 0);
        }
        let odd_issue = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_700);
        let renewal = renew_at(odd_issue, odd_issue + Duration::from_secs(30), None, 0.0);
        assert_eq!(renewal, t(1020), "truncated, not rounded up");
    }

    #[test]
    fn renewal_of_a_tiny_lifetime_is_never_immediate() {
        assert!(renew_at(t(1000), t(1002), Some(Duration::from_secs(1)), 0.9) >= t(1001));
    }

    #[test]
    fn delays_are_never_zero_or_negative() {
        assert_eq!(delay_until(t(100), t(50)), MIN_DELAY);
        assert_eq!(delay_until(t(100), t(100)), MIN_DELAY);
        assert_eq!(delay_until(t(100), t(160)), Duration::from_secs(60));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let transient: Vec<u64> = (1..=10)
            .map(|n| backoff(n, FailureKind::Transient, 0.5).as_secs())
            .collect();
        assert_eq!(transient, vec![5, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
        assert_eq!(backoff(1, FailureKind::Configuration, 0.5).as_secs(), 60);
        assert_eq!(backoff(20, FailureKind::Configuration, 0.5).as_secs(), 1800);
        assert_eq!(
            backoff(u32::MAX, FailureKind::Transient, 0.5).as_secs(),
            300
        );
        let low = backoff(3, FailureKind::Transient, 0.0);
        let high = backoff(3, FailureKind::Transient, 0.999);
        assert!(low >= Duration::from_secs(16) && high <= Duration::from_secs(24));
    }

    #[test]
    fn retry_never_sleeps_past_a_valid_tokens_expiry() {
        // 10 failures would mean 300 s; the token expires in 60 s.
        let at = next_attempt(t(1000), 10, FailureKind::Configuration, Some(t(1060)), 0.5);
        assert_eq!(at, t(1050));
        // Past that last chance, the normal backoff applies again.
        let at = next_attempt(t(1055), 11, FailureKind::Transient, Some(t(1060)), 0.5);
        assert_eq!(at, t(1355));
        // No valid token: plain backoff.
        assert_eq!(
            next_attempt(t(1000), 1, FailureKind::Transient, None, 0.5),
            t(1005)
        );
    }

    #[test]
    fn rate_limit_waits_for_the_reset_time() {
        let at = next_attempt(
            t(1000),
            1,
            FailureKind::RateLimitedUntil(t(1042)),
            Some(t(1020)),
            0.0,
        );
        assert_eq!(at, t(1042));
        let at = next_attempt(t(1000), 1, FailureKind::RateLimitedUntil(t(900)), None, 0.0);
        assert_eq!(at, t(1001), "a reset in the past still waits a moment");
    }

    #[test]
    fn seeded_jitter_is_stable_and_in_range() {
        let a = seeded_jitter("uid-1/1700000000");
        assert_eq!(a, seeded_jitter("uid-1/1700000000"));
        assert_ne!(a, seeded_jitter("uid-2/1700000000"));
        for seed in 0..1000 {
            let j = seeded_jitter(&seed.to_string());
            assert!((0.0..1.0).contains(&j));
        }
    }
}
