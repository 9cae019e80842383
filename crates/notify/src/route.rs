//! Which routes take an alert, and how a route groups alerts.

use standby_types::watch::{Labels, RouteConfig, Severity};

/// Routes that take an alert, with their index in `routes`: every route
/// whose matchers all equal the alert's labels and whose minimum severity
/// is at most the alert's. Matching stops after the first route that takes
/// the alert unless that route has `continue = true`.
pub fn routes_for<'a>(
    routes: &'a [RouteConfig],
    alert_labels: &Labels,
    severity: Severity,
) -> Vec<(usize, &'a RouteConfig)> {
    let mut taken = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let labels_match = route
            .matchers
            .iter()
            .all(|(k, v)| alert_labels.get(k) == Some(v));
        let severe_enough = route.severity.is_none_or(|floor| floor <= severity);
        if labels_match && severe_enough {
            taken.push((i, route));
            if !route.continue_matching {
                break;
            }
        }
    }
    taken
}

/// The route's group key: the alert's values of the route's `group_by`
/// labels. A label the alert lacks is left out, so alerts without it
/// group together.
pub fn group_labels(route: &RouteConfig, alert_labels: &Labels) -> Labels {
    route
        .group_by
        .iter()
        .filter_map(|k| alert_labels.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn route(
        matchers: &[(&str, &str)],
        severity: Option<Severity>,
        receiver: &str,
        cont: bool,
    ) -> RouteConfig {
        RouteConfig {
            matchers: labels(matchers),
            severity,
            receivers: vec![receiver.to_string()],
            group_by: vec!["site".into(), "rule".into()],
            group_wait: Duration::from_secs(1),
            continue_matching: cont,
        }
    }

    fn names(taken: &[(usize, &RouteConfig)]) -> Vec<(usize, String)> {
        taken
            .iter()
            .map(|(i, r)| (*i, r.receivers[0].clone()))
            .collect()
    }

    #[test]
    fn all_matchers_must_equal() {
        let routes = [
            route(&[("site", "site1"), ("kind", "vm")], None, "vm-team", false),
            route(&[("site", "site1")], None, "site1", false),
            route(&[], None, "default", false),
        ];
        let site1_vm = labels(&[("site", "site1"), ("kind", "vm"), ("vm", "db")]);
        assert_eq!(
            names(&routes_for(&routes, &site1_vm, Severity::Error)),
            [(0, "vm-team".into())]
        );
        let site1_tcp = labels(&[("site", "site1"), ("kind", "tcp")]);
        assert_eq!(
            names(&routes_for(&routes, &site1_tcp, Severity::Error)),
            [(1, "site1".into())]
        );
        // A matcher on a label the alert lacks does not match.
        let bare = labels(&[("kind", "vm")]);
        assert_eq!(
            names(&routes_for(&routes, &bare, Severity::Error)),
            [(2, "default".into())]
        );
    }

    #[test]
    fn severity_is_a_floor() {
        let routes = [
            route(&[], Some(Severity::Critical), "pager", false),
            route(&[], Some(Severity::Warning), "mail", false),
        ];
        let l = labels(&[("site", "site1")]);
        assert_eq!(
            names(&routes_for(&routes, &l, Severity::Critical)),
            [(0, "pager".into())]
        );
        assert_eq!(
            names(&routes_for(&routes, &l, Severity::Error)),
            [(1, "mail".into())]
        );
        assert_eq!(
            names(&routes_for(&routes, &l, Severity::Warning)),
            [(1, "mail".into())]
        );
        assert!(routes_for(&routes, &l, Severity::Info).is_empty());
    }

    #[test]
    fn continue_keeps_matching() {
        let routes = [
            route(&[], None, "audit", true),
            route(&[("site", "site2")], None, "site2", false),
            route(&[("site", "site1")], None, "site1", true),
            route(&[], Some(Severity::Critical), "pager", false),
            route(&[], None, "default", false),
        ];
        let l = labels(&[("site", "site1")]);
        assert_eq!(
            names(&routes_for(&routes, &l, Severity::Critical)),
            [
                (0, "audit".into()),
                (2, "site1".into()),
                (3, "pager".into())
            ]
        );
        assert_eq!(
            names(&routes_for(&routes, &l, Severity::Warning)),
            [
                (0, "audit".into()),
                (2, "site1".into()),
                (4, "default".into())
            ]
        );
        assert!(routes_for(&[], &l, Severity::Critical).is_empty());
    }

    #[test]
    fn group_labels_picks_group_by() {
        let r = route(&[], None, "x", false);
        let l = labels(&[("site", "site1"), ("rule", "site-down"), ("probe", "p1")]);
        assert_eq!(
            group_labels(&r, &l),
            labels(&[("site", "site1"), ("rule", "site-down")])
        );
        let missing = labels(&[("rule", "site-down")]);
        assert_eq!(group_labels(&r, &missing), labels(&[("rule", "site-down")]));
        let none = RouteConfig {
            group_by: vec![],
            ..r
        };
        assert!(group_labels(&none, &l).is_empty());
    }
}
