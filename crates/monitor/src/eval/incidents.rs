//! Inhibition and incident templates of firing alerts.

use standby_types::watch::Labels;

use super::{Evaluator, Phase, RenderedIncident};

impl Evaluator {
    /// Fingerprint of a firing alert that inhibits an alert with these
    /// labels (never the alert itself).
    /// Whether some inhibit rule could mute an alert with these labels
    /// (its `target` matches). One that cannot (site-down) has nothing to
    /// wait for before it is acted on.
    pub fn may_be_inhibited(&self, labels: &Labels) -> bool {
        self.rules.inhibit.iter().any(|i| i.target.matches(labels))
    }

    pub fn inhibited_by(&self, labels: &Labels) -> Option<String> {
        for inhibit in &self.rules.inhibit {
            if !inhibit.target.matches(labels) {
                continue;
            }
            for groups in self.slots.values() {
                for slot in groups.values() {
                    let Phase::Firing {
                        labels: source,
                        fingerprint,
                        ..
                    } = &slot.phase
                    else {
                        continue;
                    };
                    if source == labels || !inhibit.source.matches(source) {
                        continue;
                    }
                    if inhibit.equal.iter().all(|l| source.get(l) == labels.get(l)) {
                        return Some(fingerprint.clone());
                    }
                }
            }
        }
        None
    }

    /// Renders an incident template for an alert. The key defaults to the
    /// template name and the alert's group labels, so alerts of the same
    /// group share an incident.
    pub fn render_incident(
        &self,
        template: &str,
        alert_labels: &Labels,
        annotations: &Labels,
    ) -> Option<RenderedIncident> {
        let t = self.rules.incident_templates.get(template)?;
        let r = |src: &str| self.render(src, alert_labels, Some(annotations));
        let key = match &t.key {
            Some(k) => r(k),
            None => {
                let group_by: Vec<String> = alert_labels
                    .get("alertname")
                    .and_then(|a| self.rules.rule(a))
                    .map(|rule| rule.condition.group_by().to_vec())
                    .unwrap_or_else(|| {
                        alert_labels
                            .keys()
                            .filter(|k| *k != "alertname" && *k != "severity")
                            .cloned()
                            .collect()
                    });
                let parts: Vec<String> = group_by
                    .iter()
                    .map(|k| {
                        format!(
                            "{k}={}",
                            alert_labels.get(k).map(String::as_str).unwrap_or("")
                        )
                    })
                    .collect();
                format!("{template}:{}", parts.join(","))
            }
        };
        Some(RenderedIncident {
            title: r(&t.title),
            description: r(&t.description),
            severity: t.severity,
            group: r(&t.group),
            key,
        })
    }
}
