//! Mail receivers: a plain-text message through an SMTP server.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use standby_types::watch::{Labels, Notification, ReceiverConfig, SmtpTls};

use crate::{DeliveryError, secret};

/// Mail subject and plain-text body for a notification.
///
/// Subject: `[FIRING] site-down site=site1`, the status, the rules of the
/// alerts and the group labels (an only alert's own labels when the group
/// has none), then `(N alerts)` when there are several.
pub fn render_mail(n: &Notification) -> (String, String) {
    let status = n.status.to_uppercase();
    let mut rules: Vec<&str> = Vec::new();
    for a in &n.alerts {
        if !rules.contains(&a.rule.as_str()) {
            rules.push(&a.rule);
        }
    }
    let mut subject = format!("[{status}]");
    if !rules.is_empty() {
        subject.push(' ');
        subject.push_str(&rules.join(", "));
    }
    let shown_labels = match (n.group_labels.is_empty(), n.alerts.as_slice()) {
        (true, [only]) => &only.labels,
        _ => &n.group_labels,
    };
    if !shown_labels.is_empty() {
        subject.push(' ');
        subject.push_str(&pairs(shown_labels));
    }
    if n.alerts.len() > 1 {
        let _ = write!(subject, " ({} alerts)", n.alerts.len());
    }

    let mut body = String::new();
    let count = match n.alerts.len() {
        1 => "1 alert".to_string(),
        c => format!("{c} alerts"),
    };
    let _ = writeln!(body, "{status}: {count}");
    if !n.group_labels.is_empty() {
        let _ = writeln!(body, "Group: {}", pairs(&n.group_labels));
    }
    for a in &n.alerts {
        let _ = writeln!(body);
        let _ = writeln!(
            body,
            "Alert #{}: {} ({}, {})",
            a.id,
            a.rule,
            a.severity,
            a.state.as_str()
        );
        let _ = writeln!(body, "  Labels:");
        for (k, v) in &a.labels {
            let _ = writeln!(body, "    {k}={v}");
        }
        if !a.annotations.is_empty() {
            let _ = writeln!(body, "  Annotations:");
            for (k, v) in &a.annotations {
                let _ = writeln!(body, "    {k}: {v}");
            }
        }
        let _ = writeln!(body, "  Fired:    {}", time(&a.fired_at));
        if let Some(at) = &a.resolved_at {
            let _ = writeln!(body, "  Resolved: {}", time(at));
        }
        if let (Some(at), Some(by)) = (&a.acknowledged_at, &a.acknowledged_by) {
            let _ = writeln!(body, "  Acknowledged: {} by {by}", time(at));
        }
    }
    if let Some(i) = &n.incident {
        let _ = writeln!(body);
        let _ = writeln!(
            body,
            "Incident #{}: {} ({}, {})",
            i.id,
            i.title,
            i.state.as_str(),
            i.severity
        );
        if !i.group.is_empty() {
            let _ = writeln!(body, "  Group:  {}", i.group);
        }
        let _ = writeln!(body, "  Opened: {}", time(&i.opened_at));
    }
    let _ = writeln!(body);
    let _ = writeln!(body, "-- ");
    let _ = writeln!(body, "standby delivery {}", n.delivery);
    (subject, body)
}

fn pairs(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `host:port` split, with the usual port for the TLS mode when none is
/// given. IPv6 literals go in brackets: `[::1]:25`.
fn host_port(server: &str, tls: SmtpTls) -> Option<(String, u16)> {
    let default_port = match tls {
        SmtpTls::None => 25,
        SmtpTls::Starttls => 587,
        SmtpTls::Tls => 465,
    };
    if let Some(rest) = server.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match server.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            Some((host.to_string(), port.parse().ok()?))
        }
        None if !server.is_empty() => Some((server.to_string(), default_port)),
        _ => None,
    }
}

fn mailbox(name: &str, field: &str, addr: &str) -> Result<Mailbox, DeliveryError> {
    addr.parse().map_err(|e| {
        DeliveryError::permanent(format!(
            "receiver '{name}': invalid {field} address '{addr}': {e}"
        ))
    })
}

pub(crate) async fn send(
    name: &str,
    receiver: &ReceiverConfig,
    n: &Notification,
) -> Result<(), DeliveryError> {
    let ReceiverConfig::Smtp {
        server,
        tls,
        from,
        to,
        username,
        password_env,
        password_file,
        timeout,
        ..
    } = receiver
    else {
        unreachable!("smtp::send called for a non-smtp receiver");
    };
    let (host, port) = host_port(server, *tls).ok_or_else(|| {
        DeliveryError::permanent(format!(
            "receiver '{name}': invalid SMTP server '{server}' (expected host:port)"
        ))
    })?;

    let (subject, body) = render_mail(n);
    let mut message = Message::builder()
        .from(mailbox(name, "from", from)?)
        .subject(subject);
    if to.is_empty() {
        return Err(DeliveryError::permanent(format!(
            "receiver '{name}': no 'to' address"
        )));
    }
    for addr in to {
        message = message.to(mailbox(name, "to", addr)?);
    }
    let message = message
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| {
            DeliveryError::permanent(format!("receiver '{name}': unable to build mail: {e}"))
        })?;

    let password = secret::read(
        name,
        "SMTP password",
        password_env.as_deref(),
        password_file.as_deref(),
    )?;
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
        .port(port)
        .timeout(Some(*timeout));
    match (username, password) {
        (Some(user), Some(password)) => {
            transport = transport.credentials(Credentials::new(user.clone(), password))
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(DeliveryError::permanent(format!(
                "receiver '{name}': username set but no password_env or password_file"
            )));
        }
        (None, Some(_)) => {
            return Err(DeliveryError::permanent(format!(
                "receiver '{name}': password set but no username"
            )));
        }
    }
    let tls_mode = match tls {
        SmtpTls::None => Tls::None,
        SmtpTls::Starttls | SmtpTls::Tls => {
            let params = TlsParameters::new(host.clone()).map_err(|e| {
                DeliveryError::permanent(format!(
                    "receiver '{name}': unable to set up TLS for {host}: {e}"
                ))
            })?;
            if *tls == SmtpTls::Starttls {
                Tls::Required(params)
            } else {
                Tls::Wrapper(params)
            }
        }
    };
    let transport = transport.tls(tls_mode).build();

    tracing::debug!(receiver = name, server = %server, delivery = n.delivery, recipients = to.len(), "sending mail");
    transport.send(message).await.map(|_| ()).map_err(|e| {
        // 5xx replies (bad recipient, refused auth) and client-side errors
        // will fail again; 4xx replies, connection and TLS errors may not.
        let retryable = !(e.is_permanent() || e.is_client());
        let what = if e.is_timeout() {
            format!("timed out after {:?}", timeout)
        } else {
            standby_types::error_chain(&e)
        };
        DeliveryError {
            message: format!("receiver '{name}': SMTP {server}: {what}"),
            retryable,
        }
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use standby_types::watch::{Alert, AlertState, Incident, IncidentState, Severity};

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn alert(id: i64, rule: &str, site: &str) -> Alert {
        let at = Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap();
        Alert {
            id,
            fingerprint: format!("fp{id}"),
            rule: rule.into(),
            severity: Severity::Critical,
            state: AlertState::Firing,
            labels: labels(&[("site", site), ("probe", "sip")]),
            annotations: labels(&[("summary", "site unreachable")]),
            active_since: at,
            fired_at: at,
            acknowledged_at: None,
            acknowledged_by: None,
            resolved_at: None,
            inhibited_by: None,
            silenced_by: None,
            incident: Some(7),
        }
    }

    fn notification(alerts: Vec<Alert>) -> Notification {
        Notification {
            delivery: 42,
            status: "firing".into(),
            group_labels: labels(&[("site", "site1")]),
            alerts,
            incident: None,
        }
    }

    #[test]
    fn subject_single_and_many() {
        let (s, _) = render_mail(&notification(vec![alert(1, "site-down", "site1")]));
        assert_eq!(s, "[FIRING] site-down site=site1");
        let (s, _) = render_mail(&notification(vec![
            alert(1, "site-down", "site1"),
            alert(2, "site-down", "site1"),
        ]));
        assert_eq!(s, "[FIRING] site-down site=site1 (2 alerts)");
        let mut n = notification(vec![alert(1, "site-down", "site1")]);
        n.status = "resolved".into();
        n.group_labels.clear();
        let (s, _) = render_mail(&n);
        assert_eq!(s, "[RESOLVED] site-down probe=sip site=site1");
    }

    #[test]
    fn body_lists_alerts_and_incident() {
        let mut a = alert(1, "site-down", "site1");
        a.state = AlertState::Resolved;
        a.resolved_at = Some(Utc.with_ymd_and_hms(2025, 3, 1, 12, 5, 0).unwrap());
        let mut n = notification(vec![a]);
        n.incident = Some(Incident {
            id: 7,
            title: "Site 1 down".into(),
            severity: Severity::Critical,
            description: String::new(),
            group: "noc".into(),
            state: IncidentState::Active,
            template: None,
            key: None,
            labels: Labels::new(),
            opened_at: Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 1).unwrap(),
            resolved_at: None,
            closed_at: None,
        });
        let (_, body) = render_mail(&n);
        for piece in [
            "FIRING: 1 alert\n",
            "Group: site=site1\n",
            "Alert #1: site-down (critical, resolved)\n",
            "    site=site1\n",
            "    summary: site unreachable\n",
            "  Fired:    2025-03-01T12:00:00Z\n",
            "  Resolved: 2025-03-01T12:05:00Z\n",
            "Incident #7: Site 1 down (active, critical)\n",
            "standby delivery 42\n",
        ] {
            assert!(body.contains(piece), "missing {piece:?} in:\n{body}");
        }
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            host_port("mail:2525", SmtpTls::None),
            Some(("mail".into(), 2525))
        );
        assert_eq!(
            host_port("mail", SmtpTls::Starttls),
            Some(("mail".into(), 587))
        );
        assert_eq!(host_port("mail", SmtpTls::Tls), Some(("mail".into(), 465)));
        assert_eq!(
            host_port("[::1]:25", SmtpTls::None),
            Some(("::1".into(), 25))
        );
        assert_eq!(host_port("mail:x", SmtpTls::None), None);
        assert_eq!(host_port("", SmtpTls::None), None);
    }
}
