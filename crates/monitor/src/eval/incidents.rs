//! Inhibition and incident templates of firing alerts.

use std::collections::HashMap;

use standby_types::watch::Labels;

use super::{Evaluator, Phase, RenderedIncident};
use crate::rules::InhibitRule;

/// The firing alerts that may inhibit others, by inhibit rule and by the
/// values of the rule's `equal` labels (see [`Evaluator::inhibitions`]).
pub struct Inhibitions<'a> {
    #[allow(clippy::type_complexity)]
    rules: Vec<(
        &'a InhibitRule,
        HashMap<Vec<Option<&'a str>>, Vec<(&'a Labels, &'a str)>>,
    )>,
}

impl Inhibitions<'_> {
    /// Fingerprint of a firing alert that inhibits an alert with these
    /// labels (never the alert itself).
    pub fn by(&self, labels: &Labels) -> Option<String> {
        for (inhibit, sources) in &self.rules {
            if !inhibit.target.matches(labels) {
                continue;
            }
            let found = sources
                .get(&equal_values(&inhibit.equal, labels))
                .into_iter()
                .flatten()
                .find(|(source, _)| *source != labels);
            if let Some((_, fingerprint)) = found {
                return Some(fingerprint.to_string());
            }
        }
        None
    }
}

fn equal_values<'a>(equal: &[String], labels: &'a Labels) -> Vec<Option<&'a str>> {
    equal
        .iter()
        .map(|l| labels.get(l).map(String::as_str))
        .collect()
}

impl Evaluator {
    /// Whether some inhibit rule could mute an alert with these labels
    /// (its `target` matches). One that cannot (site-down) has nothing to
    /// wait for before it is acted on.
    pub fn may_be_inhibited(&self, labels: &Labels) -> bool {
        self.rules.inhibit.iter().any(|i| i.target.matches(labels))
    }

    /// Fingerprint of a firing alert that inhibits an alert with these
    /// labels (never the alert itself). For many alerts, ask
    /// [`Evaluator::inhibitions`] once.
    pub fn inhibited_by(&self, labels: &Labels) -> Option<String> {
        self.inhibitions().by(labels)
    }

    /// What inhibits what among the alerts firing now, indexed so that
    /// asking for each of many alerts costs one lookup per inhibit rule
    /// (a site of thousands of VMs down is thousands of alerts).
    pub fn inhibitions(&self) -> Inhibitions<'_> {
        let rules = self
            .rules
            .inhibit
            .iter()
            .map(|inhibit| {
                let mut sources: HashMap<Vec<Option<&str>>, Vec<(&Labels, &str)>> = HashMap::new();
                for slot in self.slots.values().flat_map(|g| g.values()) {
                    let Phase::Firing {
                        labels: source,
                        fingerprint,
                        ..
                    } = &slot.phase
                    else {
                        continue;
                    };
                    if inhibit.source.matches(source) {
                        sources
                            .entry(equal_values(&inhibit.equal, source))
                            .or_default()
                            .push((source, fingerprint));
                    }
                }
                (inhibit, sources)
            })
            .collect();
        Inhibitions { rules }
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
