//! What changes from one configuration to another, and which of those
//! changes a running controller applies at once (`standby config reload`,
//! SIGHUP) rather than at its next start.

use std::collections::BTreeSet;

use serde_json::Value;

/// One change, by section (`vms`, `controller`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub section: String,
    /// `vm pbx1: changed (args)`, `group gold: removed`,
    /// `controller: changed (listen)`.
    pub text: String,
}

/// The sections a reload applies: read where they are used, from the
/// configuration in force at that moment.
pub const RELOADABLE: &[&str] = &[
    "vms",
    "groups",
    "probes",
    "receivers",
    "routes",
    "tenants",
    "plans",
];

/// The fields of `[controller]` a reload applies.
pub const RELOADABLE_CONTROLLER: &[&str] = &[
    "rules",
    "builtin_rules",
    "events_retention",
    "jobs_retention",
    "notifications_retention",
];

/// Why a change to `section` needs a controller restart, or None when a
/// reload applies it.
pub fn needs_restart(section: &str) -> Option<&'static str> {
    Some(match section {
        s if RELOADABLE.contains(&s) => return None,
        "controller" => "the controller's addresses, database and files are set when it starts",
        "sites" | "hosts" => "each host's agent is set up when the controller starts",
        "agents" => "the controller's clients of remote agents are set up when it starts",
        "datastores" => "datastores are opened (or created) when the controller starts",
        "services" | "dns" => "the front door binds its listeners when the controller starts",
        "pki" => "certificates are read when the controller starts",
        "ha" => "self-fencing is set up when the controller and the agents start",
        _ => "this section is read when the controller starts",
    })
}

/// One change per entry of the sections of named entries (sites, hosts,
/// VMs, ...), one per other section, from `old` to `new` (both as the
/// API shows a configuration, see [`super::redacted`]).
pub fn changes(old: &Value, new: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    let empty = serde_json::Map::new();
    let (r, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let keys: BTreeSet<&String> = r.keys().chain(n.keys()).collect();
    for k in keys {
        let (a, b) = (
            r.get(k).unwrap_or(&Value::Null),
            n.get(k).unwrap_or(&Value::Null),
        );
        if a == b {
            continue;
        }
        let mut push = |text: String| {
            out.push(Change {
                section: k.clone(),
                text,
            })
        };
        if is_entries(a) && is_entries(b) {
            let (ea, eb) = (
                a.as_object().unwrap_or(&empty),
                b.as_object().unwrap_or(&empty),
            );
            let names: BTreeSet<&String> = ea.keys().chain(eb.keys()).collect();
            let kind = k.trim_end_matches('s');
            for name in names {
                match (ea.get(name), eb.get(name)) {
                    (None, Some(_)) => push(format!("{kind} {name}: added")),
                    (Some(_), None) => push(format!("{kind} {name}: removed")),
                    (Some(x), Some(y)) if x != y => push(format!(
                        "{kind} {name}: changed ({})",
                        fields(x, y).join(", ")
                    )),
                    _ => {}
                }
            }
        } else {
            push(format!("{k}: changed ({})", fields(a, b).join(", ")));
        }
    }
    out
}

/// Why `change` needs a restart, or None when a reload applies it.
/// `[controller]` is looked at field by field: `old` and `new` as for
/// [`changes`].
pub fn restart_reason(change: &Change, old: &Value, new: &Value) -> Option<&'static str> {
    if change.section == "controller" {
        let (a, b) = (&old["controller"], &new["controller"]);
        if fields(a, b)
            .iter()
            .all(|f| RELOADABLE_CONTROLLER.contains(&f.as_str()))
        {
            return None;
        }
    }
    needs_restart(&change.section)
}

/// A table of named entries: an object whose values are all objects.
fn is_entries(v: &Value) -> bool {
    v.is_null()
        || v.as_object()
            .is_some_and(|m| m.values().all(Value::is_object))
}

/// The names of the fields that differ, or `value`.
fn fields(a: &Value, b: &Value) -> Vec<String> {
    match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .filter(|k| x.get(*k) != y.get(*k))
                .cloned()
                .collect()
        }
        _ => vec!["value".into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_are_named_by_entry_and_field() {
        let running = json!({
            "controller": {"listen": "a", "data_dir": "d"},
            "vms": {"pbx1": {"host": "h1", "args": ["x"]}},
            "groups": {"gold": {"schedule": "every 1h", "members": ["pbx1"]}},
            "sites": {"s1": {}},
        });
        let new = json!({
            "controller": {"listen": "b", "data_dir": "d"},
            "vms": {"pbx1": {"host": "h1", "args": ["y"]}, "pbx2": {"host": "h1"}},
            "groups": {},
            "sites": {"s1": {}},
        });
        let c = changes(&running, &new);
        let texts: Vec<&str> = c.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "controller: changed (listen)",
                "group gold: removed",
                "vm pbx1: changed (args)",
                "vm pbx2: added",
            ]
        );
        assert!(changes(&new, &new).is_empty());
        // The listen address needs a restart; VMs and groups do not.
        assert!(restart_reason(&c[0], &running, &new).is_some());
        assert!(
            c[1..]
                .iter()
                .all(|c| restart_reason(c, &running, &new).is_none())
        );
    }

    #[test]
    fn rule_files_reload_but_other_controller_fields_do_not() {
        let old = json!({"controller": {"rules": [], "listen": "a"}});
        let new = json!({"controller": {"rules": ["/r.yaml"], "listen": "a"}});
        let c = changes(&old, &new);
        assert_eq!(c.len(), 1);
        assert_eq!(restart_reason(&c[0], &old, &new), None);
        let moved = json!({"controller": {"rules": ["/r.yaml"], "listen": "b"}});
        let c = changes(&old, &moved);
        assert!(restart_reason(&c[0], &old, &moved).is_some());
        let hosts = changes(
            &json!({"hosts": {}}),
            &json!({"hosts": {"h9": {"site": "s"}}}),
        );
        assert_eq!(hosts[0].text, "host h9: added");
        assert!(needs_restart(&hosts[0].section).is_some());
    }
}
