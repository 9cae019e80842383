//! Webhook receivers: the notification POSTed as JSON, optionally signed.

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use standby_types::watch::{Notification, ReceiverConfig};

use crate::{DeliveryError, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, secret, sign};

/// Header that carries the delivery id, for receivers to drop duplicates.
pub const DELIVERY_HEADER: &str = "X-Standby-Delivery";

/// How much of an error response's body goes into the error message.
const BODY_EXCERPT: usize = 200;

/// The URL as shown in errors and logs: without user info and query, which
/// may carry credentials.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => url.to_string(),
    }
}

/// TLS for webhooks: rustls with the ring provider and the Mozilla root
/// certificates (as lettre's SMTP); the system's store is not read.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// Whether a response status may succeed on a later attempt.
fn status_retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

pub(crate) async fn send(
    name: &str,
    receiver: &ReceiverConfig,
    n: &Notification,
) -> Result<(), DeliveryError> {
    let ReceiverConfig::Webhook {
        url,
        secret_env,
        secret_file,
        timeout,
        ..
    } = receiver
    else {
        unreachable!("webhook::send called for a non-webhook receiver");
    };
    let shown = shown_url(url);
    let secret = secret::read(
        name,
        "webhook secret",
        secret_env.as_deref(),
        secret_file.as_deref(),
    )?;
    let body = serde_json::to_vec(n).map_err(|e| {
        DeliveryError::permanent(format!(
            "receiver '{name}': unable to encode notification {}: {e}",
            n.delivery
        ))
    })?;

    let setup_failed = |e: &dyn std::fmt::Display| {
        DeliveryError::permanent(format!(
            "receiver '{name}': unable to set up HTTP client: {e}"
        ))
    };
    let tls = tls_config().map_err(|e| setup_failed(&e))?;
    let client = standby_http::builder(standby_http::Reach::External)
        .tls_backend_preconfigured(tls)
        .timeout(*timeout)
        // A redirected POST turns into a GET; a moved receiver is a config fix.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| setup_failed(&e))?;
    let mut request = client
        .post(url.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, crate::USER_AGENT)
        .header(DELIVERY_HEADER, n.delivery.to_string());
    if let Some(secret) = &secret {
        // Signed afresh at each attempt: a receiver refuses a timestamp
        // more than 5 minutes off and a nonce it has seen.
        let (ts, nonce) = (chrono::Utc::now().timestamp(), crate::new_nonce());
        request = request
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(NONCE_HEADER, &nonce)
            .header(SIGNATURE_HEADER, sign(secret.as_bytes(), ts, &nonce, &body));
    }

    tracing::debug!(receiver = name, url = %shown, delivery = n.delivery, signed = secret.is_some(), "posting notification");
    let response = request.body(body).send().await.map_err(|e| {
        // reqwest's message repeats the whole URL, query included.
        let e = e.without_url();
        if e.is_builder() {
            return DeliveryError::permanent(format!(
                "receiver '{name}': invalid webhook request to {shown}: {}",
                standby_types::error_chain(&e)
            ));
        }
        let what = if e.is_timeout() {
            format!("timed out after {timeout:?}")
        } else if e.is_connect() {
            format!("unable to connect: {}", standby_types::error_chain(&e))
        } else {
            standby_types::error_chain(&e)
        };
        DeliveryError::retryable(format!("receiver '{name}': POST {shown}: {what}"))
    })?;

    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let excerpt = match response.text().await {
        Ok(text) => {
            let text = text.trim();
            let mut cut: String = text.chars().take(BODY_EXCERPT).collect();
            if cut.len() < text.len() {
                cut.push('…');
            }
            if cut.is_empty() {
                String::new()
            } else {
                format!(": {cut}")
            }
        }
        Err(_) => String::new(),
    };
    let message = format!("receiver '{name}': POST {shown}: HTTP {status}{excerpt}");
    Err(if status_retryable(status) {
        DeliveryError::retryable(message)
    } else {
        DeliveryError::permanent(message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_ring_with_the_mozilla_roots() {
        let config = tls_config().unwrap();
        let suites = |p: &rustls::crypto::CryptoProvider| -> Vec<_> {
            p.cipher_suites.iter().map(|s| s.suite()).collect()
        };
        assert_eq!(
            suites(config.crypto_provider()),
            suites(&rustls::crypto::ring::default_provider())
        );
        // Built without a process-wide default provider: reqwest would
        // panic if it needed one.
        reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .build()
            .unwrap();
    }

    #[test]
    fn url_shown_without_credentials() {
        assert_eq!(
            shown_url("https://user:pw@hooks.example.com/in/abc?token=x#f"),
            "https://hooks.example.com/in/abc"
        );
        assert_eq!(
            shown_url("http://127.0.0.1:8080/hook"),
            "http://127.0.0.1:8080/hook"
        );
    }

    #[test]
    fn retryable_statuses() {
        for code in [500, 502, 503, 504, 408, 429] {
            assert!(
                status_retryable(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 410, 301] {
            assert!(
                !status_retryable(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }
}
