//! Delivering notifications: alerts that fired or resolved together, sent
//! to one receiver (a webhook or a mailbox).
//!
//! # Design
//!
//! This crate keeps no state. The server owns the durable outbox (the
//! delivery log in the database): it groups alerts with [`routes_for`] and
//! [`group_labels`], builds a [`Notification`] whose `delivery` is the
//! outbox row id, and calls [`deliver`] once per attempt. A failed attempt
//! returns a [`DeliveryError`] that says whether retrying can help; the
//! server waits [`backoff`] and tries again until the receiver's
//! `max_attempts`, so a message is sent at least once and receivers drop
//! duplicates by the delivery id.
//!
//! # Wire formats
//!
//! - Webhook ([`webhook`]): `POST` of the [`Notification`] as JSON with
//!   `Content-Type: application/json`, `User-Agent: standby/<version>`,
//!   `X-Standby-Delivery: <delivery id>` and, when a secret is configured,
//!   `X-Standby-Timestamp: <Unix seconds>`, `X-Standby-Nonce: <32 hex>`
//!   and `X-Standby-Signature: sha256=<hex HMAC-SHA256(secret,
//!   "<timestamp>.<nonce>.<body>")>` ([`sign`], [`verify`];
//!   [`ReplayGuard`] refuses a stale timestamp or a nonce seen already).
//!   Each attempt is signed afresh. 2xx is delivered; 5xx, 408, 429 and
//!   transport errors are retryable; any other status is permanent.
//! - Mail ([`smtp`]): a plain-text message, subject and body from
//!   [`render_mail`]. SMTP 4xx and connection errors are retryable, 5xx
//!   are permanent.
//!
//! # Invariants
//!
//! - Secrets (HMAC keys, SMTP passwords) are read at each attempt from the
//!   environment or a file, and never logged nor put in an error message;
//!   a missing one is a permanent error that names where it was looked for.
//! - TLS (https webhooks, STARTTLS and SMTPS) goes through rustls with the
//!   `ring` provider only, with the webpki root certificates.

mod route;
mod secret;
mod signature;
pub mod smtp;
pub mod webhook;

use std::time::Duration;

use standby_types::watch::{Notification, ReceiverConfig};

pub use route::{group_labels, routes_for};
pub use signature::{
    MAX_SKEW, NONCE_HEADER, ReplayGuard, SIGNATURE_HEADER, SignatureError, Signed,
    TIMESTAMP_HEADER, new_nonce, sign, verify,
};
pub use smtp::render_mail;

/// `User-Agent` of webhook requests.
pub const USER_AGENT: &str = concat!("standby/", env!("CARGO_PKG_VERSION"));

/// Delays grow from 1 s by doubling up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One failed delivery attempt.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub message: String,
    /// Whether a later attempt can succeed (the server retries these).
    pub retryable: bool,
}

impl DeliveryError {
    pub(crate) fn retryable(message: impl Into<String>) -> Self {
        DeliveryError {
            message: message.into(),
            retryable: true,
        }
    }

    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        DeliveryError {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Send one notification to one receiver.
pub async fn deliver(
    receiver_name: &str,
    receiver: &ReceiverConfig,
    n: &Notification,
) -> Result<(), DeliveryError> {
    let result = match receiver {
        ReceiverConfig::Webhook { .. } => webhook::send(receiver_name, receiver, n).await,
        ReceiverConfig::Smtp { .. } => smtp::send(receiver_name, receiver, n).await,
    };
    match &result {
        Ok(()) => tracing::info!(
            receiver = receiver_name,
            delivery = n.delivery,
            status = %n.status,
            alerts = n.alerts.len(),
            "notification delivered"
        ),
        Err(e) => tracing::warn!(
            receiver = receiver_name,
            delivery = n.delivery,
            retryable = e.retryable,
            "notification not delivered: {e}"
        ),
    }
    result
}

/// Delay before the next attempt after `failures` failed ones: 1 s, 2 s,
/// 4 s … capped at [`MAX_BACKOFF`]. No failure yet means no delay.
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    // 2^6 s already exceeds the cap, so larger shifts need not be computed.
    let secs = 1u64 << (failures - 1).min(6);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::ZERO);
        let secs: Vec<u64> = (1..=9).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn user_agent_names_version() {
        assert_eq!(USER_AGENT, format!("standby/{}", env!("CARGO_PKG_VERSION")));
    }
}
