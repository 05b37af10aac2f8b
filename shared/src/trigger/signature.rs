//! Request authentication for `http` triggers: bearer tokens, HMAC-SHA256 signatures and
//! the GitHub, Stripe and Slack webhook schemes. Every comparison of a secret or a signature
//! takes time independent of where the inputs differ (ring compares HMAC tags).

use std::time::Duration;

use super::http::HttpRequest;

/// How far a Stripe or Slack signature timestamp may be from now.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);

pub(super) fn check_token(secret: &[u8], request: &HttpRequest) -> bool {
    let given = request
        .header("authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| request.header("x-reactor-token"));
    given.is_some_and(|token| constant_time_eq(token.trim().as_bytes(), secret))
}

/// Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]` over `"<t>.<body>"`.
pub(super) fn check_stripe(secret: &[u8], request: &HttpRequest, now: i64) -> bool {
    let Some(header) = request.header("stripe-signature") else {
        return false;
    };
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t),
            Some(("v1", sig)) => signatures.push(sig),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    if !fresh(t, now) {
        return false;
    }
    signatures
        .iter()
        .any(|sig| verify_hmac(secret, &[t.as_bytes(), b".", &request.body], sig))
}

/// Slack: `X-Slack-Signature: v0=<hex>` over `"v0:<timestamp>:<body>"`.
pub(super) fn check_slack(secret: &[u8], request: &HttpRequest, now: i64) -> bool {
    let (Some(signature), Some(t)) = (
        request.header("x-slack-signature"),
        request.header("x-slack-request-timestamp"),
    ) else {
        return false;
    };
    let Some(hex) = signature.strip_prefix("v0=") else {
        return false;
    };
    fresh(t, now) && verify_hmac(secret, &[b"v0:", t.as_bytes(), b":", &request.body], hex)
}

fn fresh(timestamp: &str, now: i64) -> bool {
    timestamp
        .trim()
        .parse::<i64>()
        .is_ok_and(|t| t.abs_diff(now) <= SIGNATURE_TOLERANCE.as_secs())
}

/// HMAC-SHA256 of the concatenated `parts`, lower-case hex.
pub fn hmac_sha256_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    for part in parts {
        context.update(part);
    }
    to_hex(context.sign().as_ref())
}

/// Checks a hex HMAC-SHA256 in constant time (ring compares the tags).
pub(super) fn verify_hmac(secret: &[u8], parts: &[&[u8]], hex: &str) -> bool {
    let Some(tag) = from_hex(hex.trim()) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let message: Vec<u8> = parts.concat();
    ring::hmac::verify(&key, &message, &tag).is_ok()
}

/// Equality whose time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_constant_time_eq() {
        assert_eq!(to_hex(&[0, 15, 255]), "000fff");
        assert_eq!(from_hex("000fFF"), Some(vec![0, 15, 255]));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", &[b"what do ya want ", b"for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
