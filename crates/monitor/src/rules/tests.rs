//! Tests of rule files: parsing, validation and their errors.
use super::*;

fn err(src: &str) -> String {
    RuleSet::parse(src, Path::new("rules/x.yaml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn builtin_parses() {
    let rs = RuleSet::builtin();
    let names: Vec<_> = rs.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "vnf-down",
            "vm-crashed",
            "host-down",
            "site-down",
            "rpo-missed",
            "point-damaged"
        ]
    );
    let site = rs.rule("site-down").unwrap();
    let Condition::Probe(p) = &site.condition else {
        panic!()
    };
    assert_eq!(p.min_vantage_points, 2);
    assert!(
        p.veto,
        "a vantage point that reaches the site vetoes site-down"
    );
    assert_eq!(site.for_, Duration::from_secs(2));
    assert_eq!(site.clear_for, Duration::from_secs(5));
    assert_eq!(rs.inhibit.len(), 1);
    assert!(rs.incident_templates.contains_key("vnf-outage"));
    assert!(rs.incident_templates.contains_key("site-outage"));
}

const GOOD: &str = "\
rules:
  - name: a
    condition:
      probe: { kind: tcp }
    severity: warning
";

#[test]
fn bad_duration_names_line_column_and_field() {
    let src = "\
rules:
  - name: a
    condition:
      probe: { kind: tcp }
    severity: warning
  - name: b
    for: soon
    condition:
      probe: { kind: tcp }
    severity: warning
";
    assert_eq!(
        err(src),
        "rules/x.yaml:7:10: rules[1].for: bad duration 'soon'"
    );
}

#[test]
fn unknown_incident_template() {
    let src = "\
rules:
  - name: a
    incident: foo
    condition:
      probe: { kind: tcp }
    severity: warning
";
    assert_eq!(
        err(src),
        "rules/x.yaml:3:15: rules[0].incident: unknown incident template 'foo'"
    );
}

#[test]
fn unknown_field() {
    let src = "\
rules:
  - name: a
    condition:
      probe: { kind: tcp }
    severity: warning
    fro: 2s
";
    let e = err(src);
    assert!(
        e.starts_with("rules/x.yaml:6:5: rules[0]: unknown field `fro`"),
        "{e}"
    );
}

#[test]
fn bad_severity_and_syntax() {
    let e = err(&GOOD.replace("warning", "loud"));
    assert!(
        e.starts_with("rules/x.yaml:5:15: rules[0].severity: unknown severity 'loud'"),
        "{e}"
    );
    let e = err("rules:\n  - name: [a\n");
    assert!(e.starts_with("rules/x.yaml:"), "{e}");
    assert!(e.contains(":3:") || e.contains(":2:"), "{e}");
}

#[test]
fn duplicate_names_and_bad_values() {
    let dup = format!("{GOOD}{}", &GOOD["rules:\n".len()..]);
    assert_eq!(
        err(&dup),
        "rules/x.yaml:6:11: rules[1].name: duplicate rule 'a' (also rules[0])"
    );

    let src = GOOD.replace(
        "probe: { kind: tcp }",
        "probe: { kind: tcp }\n      min_vantage_points: 0",
    );
    assert_eq!(
        err(&src),
        "rules/x.yaml:5:27: rules[0].condition.min_vantage_points: must be at least 1"
    );

    let src = GOOD.replace(
        "probe: { kind: tcp }",
        "event: { kind: x }\n      count: 0\n      within: 10s",
    );
    assert_eq!(
        err(&src),
        "rules/x.yaml:5:14: rules[0].condition.count: must be at least 1"
    );

    let src = GOOD.replace(
        "probe: { kind: tcp }",
        "event: { kind: x }\n      within: 0s",
    );
    assert_eq!(
        err(&src),
        "rules/x.yaml:5:15: rules[0].condition.within: must be more than 0s"
    );

    let src = format!("{GOOD}    annotations:\n      summary: \"{{{{ labels.vm \"\n");
    let e = err(&src);
    assert!(
        e.starts_with("rules/x.yaml:7:16: rules[0].annotations.summary: bad template"),
        "{e}"
    );

    let e = err(&GOOD.replace("name: a", "name: Bad_Name"));
    assert_eq!(
        e,
        "rules/x.yaml:2:11: rules[0].name: bad rule name 'Bad_Name' (use a-z, 0-9 and -)"
    );
}

#[test]
fn merge_rejects_duplicates_naming_both_files() {
    let a = RuleSet::parse(GOOD, Path::new("a.yaml")).unwrap();
    let b = RuleSet::parse(GOOD, Path::new("b.yaml")).unwrap();
    let e = RuleSet::merge(a.clone(), b).unwrap_err().to_string();
    assert_eq!(e, "b.yaml:2:11: duplicate rule 'a' (also in a.yaml:2:11)");
    let c = RuleSet::parse(&GOOD.replace("name: a", "name: c"), Path::new("c.yaml")).unwrap();
    let m = RuleSet::merge(a, c).unwrap();
    assert_eq!(m.rules.len(), 2);
}

#[test]
fn matcher_values_are_one_or_many_and_empty_files_are_empty() {
    let rs = RuleSet::parse(
            "rules:\n  - name: a\n    condition:\n      probe: { scope: [vm, service], kind: sip }\n    severity: info\n",
            Path::new("x"),
        )
        .unwrap();
    let Condition::Probe(p) = &rs.rules[0].condition else {
        panic!()
    };
    assert_eq!(p.matchers.0["scope"], ["vm", "service"]);
    assert_eq!(p.matchers.0["kind"], ["sip"]);
    assert_eq!(
        RuleSet::parse("# nothing\n", Path::new("x")).unwrap(),
        RuleSet::default()
    );
}

#[test]
fn veto_belongs_to_probe_conditions() {
    let e = err(
        "rules:\n  - name: a\n    condition:\n      event: { kind: x }\n      veto: true\n    severity: warning\n",
    );
    assert!(e.contains("veto applies to probe conditions only"), "{e}");
}
