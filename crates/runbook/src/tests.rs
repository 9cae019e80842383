use serde_json::{Map, Value, json};

use crate::template::{self, render};
use crate::{Runbook, parse, plan, resolve_params};

const SHIPPED: &[(&str, &str)] = &[
    (
        "protect.yaml",
        include_str!("../../../runbooks/protect.yaml"),
    ),
    (
        "failover-site.yaml",
        include_str!("../../../runbooks/failover-site.yaml"),
    ),
    (
        "move-vm.yaml",
        include_str!("../../../runbooks/move-vm.yaml"),
    ),
    (
        "failback.yaml",
        include_str!("../../../runbooks/failback.yaml"),
    ),
    ("drill.yaml", include_str!("../../../runbooks/drill.yaml")),
];

fn errors(file: &str, text: &str) -> Vec<String> {
    match parse(file, text) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

const GOOD: &str = r#"
name: demo
params:
  site: { type: string, required: true }
steps:
  - id: vms
    action: vm.list
    with: { site: "{{ params.site }}" }
  - id: restore
    action: point.restore
    for_each: "{{ steps.vms.output.vms }}"
    parallel: 2
    when: "{{ item.dr_site is not none }}"
    with: { vm: "{{ item.name }}", site: "{{ item.dr_site }}", start: true }
    retry: { attempts: 3, backoff: 2s }
    timeout: 10m
    on_failure: continue
"#;

#[test]
fn a_good_runbook_parses() {
    let rb = parse("demo.yaml", GOOD).unwrap();
    assert_eq!(rb.steps.len(), 2);
    assert_eq!(rb.steps[1].parallel, Some(2));
    assert!(rb.trigger.manual, "manual defaults to true");
}

#[test]
fn errors_name_file_step_and_field() {
    let bad = GOOD.replace("item.name", "itm.name");
    assert_eq!(
        errors("demo.yaml", &bad),
        vec!["demo.yaml: steps[1].with.vm: undefined value 'itm'"]
    );
}

#[test]
fn unknown_action_inputs_and_missing_inputs() {
    let text = r#"
name: x
steps:
  - id: a
    action: vm.teleport
  - id: b
    action: vm.start
    with: { machine: pbx }
"#;
    assert_eq!(
        errors("x.yaml", text),
        vec![
            "x.yaml: steps[0].action: unknown action 'vm.teleport' (see `standby runbook actions`)",
            "x.yaml: steps[1].with.machine: unknown input 'machine' of action vm.start (inputs: vm)",
            "x.yaml: steps[1].with: missing input 'vm' of action vm.start",
        ]
    );
}

#[test]
fn duplicate_ids_and_references_to_later_or_unknown_steps() {
    let text = r#"
name: x
steps:
  - id: a
    action: sleep
    with: { duration: "{{ steps.b.output.seconds }}s" }
  - id: b
    action: sleep
    with: { duration: "{{ steps.zz.output }}" }
  - id: b
    action: sleep
    with: { duration: 1s }
"#;
    assert_eq!(
        errors("x.yaml", text),
        vec![
            "x.yaml: steps[0].with.duration: step 'b' has not run yet here (only earlier steps' outputs can be used)",
            "x.yaml: steps[1].with.duration: unknown step 'zz'",
            "x.yaml: steps[2].id: duplicate step id 'b'",
        ]
    );
}

#[test]
fn bad_durations_cron_and_names() {
    let text = r#"
name: y
trigger:
  schedule: { cron: "not a cron" }
steps:
  - id: Bad
    action: sleep
    with: { duration: soon }
    timeout: forever
    retry: { attempts: 0 }
"#;
    let e = errors("x.yaml", text);
    assert_eq!(e.len(), 6, "{e:#?}");
    assert_eq!(
        e[0],
        "x.yaml: name: name 'y' does not match the file name 'x'"
    );
    assert!(e[1].starts_with("x.yaml: trigger.schedule.cron: bad cron expression 'not a cron'"));
    assert_eq!(e[2], "x.yaml: steps[0].id: 'Bad' is not [a-z0-9_-]+");
    assert!(e[3].starts_with("x.yaml: steps[0].with.duration: bad duration 'soon'"));
    assert_eq!(
        e[4],
        "x.yaml: steps[0].retry.attempts: attempts must be at least 1"
    );
    assert!(e[5].starts_with("x.yaml: steps[0].timeout: bad duration 'forever'"));
}

#[test]
fn serde_errors_carry_line_and_column() {
    let text = "name: x\nsteps:\n  - id: a\n    action: sleep\n    wiht: {}\n";
    let e = errors("x.yaml", text);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("x.yaml:5:5: steps[0]: unknown field `wiht`"),
        "{}",
        e[0]
    );
}

#[test]
fn template_syntax_errors_are_reported() {
    let text = r#"
name: x
steps:
  - id: a
    action: sleep
    with: { duration: "{{ 1 + }}" }
"#;
    let e = errors("x.yaml", text);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("x.yaml: steps[0].with.duration: syntax error"),
        "{}",
        e[0]
    );
}

#[test]
fn a_lone_expression_keeps_its_type_other_strings_render_as_text() {
    let ctx = template::context(&json!({
        "steps": {"vms": {"output": {"vms": [{"name": "a"}, {"name": "b"}]}}},
        "params": {"n": 3}
    }));
    let v = json!({
        "list": "{{ steps.vms.output.vms }}",
        "n": "{{ params.n * 2 }}",
        "text": "n={{ params.n }}",
        "plain": "no template",
        "nested": ["{{ params.n }}", 1]
    });
    assert_eq!(
        render(&v, &ctx, "with").unwrap(),
        json!({
            "list": [{"name": "a"}, {"name": "b"}],
            "n": 6,
            "text": "n=3",
            "plain": "no template",
            "nested": [3, 1]
        })
    );
    let err = render(&json!({"vm": "{{ itm.name }}"}), &ctx, "with").unwrap_err();
    assert_eq!(err.path, "with.vm");
    assert!(
        err.message.starts_with("undefined value"),
        "{}",
        err.message
    );
}

#[test]
fn when_conditions() {
    let ctx = template::context(&json!({"item": {"dr_site": null, "name": "a"}}));
    assert!(!template::eval_condition("{{ item.dr_site is not none }}", &ctx).unwrap());
    assert!(template::eval_condition("{{ item.name == 'a' }}", &ctx).unwrap());
}

#[test]
fn params_from_defaults_trigger_and_the_command_line() {
    let rb: Runbook = parse(
        "p.yaml",
        r#"
name: p
params:
  site: { type: string, required: true, default: "{{ trigger.alert.labels.site }}" }
  n: { type: number, default: 2 }
  dry: { type: bool }
steps:
  - id: a
    action: sleep
    with: { duration: 1s }
"#,
    )
    .unwrap();
    let job = json!({"id": 1});
    let trig = json!({"kind": "alert", "alert": {"labels": {"site": "site1"}}});
    let p = resolve_params(&rb, &Map::new(), &trig, &job).unwrap();
    assert_eq!(
        Value::Object(p),
        json!({"site": "site1", "n": 2, "dry": null})
    );
    let mut given = Map::new();
    given.insert("site".into(), json!("s2"));
    given.insert("n".into(), json!("5"));
    given.insert("dry".into(), json!("true"));
    let p = resolve_params(&rb, &given, &json!({"kind": "manual"}), &job).unwrap();
    assert_eq!(Value::Object(p), json!({"site": "s2", "n": 5, "dry": true}));
    assert_eq!(
        resolve_params(&rb, &Map::new(), &json!({"kind": "manual"}), &job).unwrap_err(),
        "missing parameter 'site' of runbook p"
    );
    given.insert("nope".into(), json!(1));
    assert_eq!(
        resolve_params(&rb, &given, &json!({}), &job).unwrap_err(),
        "unknown parameter 'nope' of runbook p (parameters: dry, n, site)"
    );
}

#[test]
fn the_plan_renders_what_it_can_and_defers_the_rest() {
    let rb = parse("demo.yaml", GOOD).unwrap();
    let mut given = Map::new();
    given.insert("site".into(), json!("site1"));
    let p = plan(&rb, &given, &json!({"kind": "manual"})).unwrap();
    assert_eq!(p.steps[0].with, json!({"site": "site1"}));
    assert!(p.steps[0].deferred.is_empty());
    assert_eq!(p.steps[1].deferred, vec!["site", "vm"]);
    let text = p.describe();
    assert!(
        text.contains("2. restore (point.restore) for each"),
        "{text}"
    );
}

#[test]
fn shipped_runbooks_validate_and_match_the_schema() {
    let schema = crate::schema();
    let defs = &schema["$defs"];
    let step_props = defs["Step"]["properties"].as_object().unwrap();
    let top_props = schema["properties"].as_object().unwrap();
    for (file, text) in SHIPPED {
        let rb = parse(file, text).unwrap_or_else(|e| panic!("{e}"));
        // Every key the file uses is one the schema declares, and the
        // schema's required keys are there.
        let raw: Value = serde_norway::from_str(text).unwrap();
        for k in raw.as_object().unwrap().keys() {
            assert!(top_props.contains_key(k), "{file}: {k} not in the schema");
        }
        for r in schema["required"].as_array().unwrap() {
            assert!(
                raw.get(r.as_str().unwrap()).is_some(),
                "{file}: {r} missing"
            );
        }
        for step in raw["steps"].as_array().unwrap() {
            for k in step.as_object().unwrap().keys() {
                assert!(
                    step_props.contains_key(k),
                    "{file}: step key {k} not in the schema"
                );
            }
        }
        assert!(!rb.steps.is_empty());
    }
}

#[test]
fn the_schema_describes_the_format() {
    let s = crate::schema();
    assert_eq!(s["title"], "Runbook");
    assert_eq!(
        s["required"],
        json!(["name", "steps"]),
        "name and steps are required"
    );
    assert!(s["$defs"]["Step"]["properties"]["for_each"].is_object());
    assert!(s["$defs"]["OnFailure"].is_object());
}

#[test]
fn failover_site_resolves_with_the_measured_rto_and_data_loss_window() {
    let rb = parse("failover-site.yaml", SHIPPED[1].1).unwrap();
    let resolve = rb.steps.iter().find(|s| s.id == "resolve").unwrap();
    let raw = json!({
        "params": {"site": "site1"},
        "trigger": {"kind": "alert", "at": "2026-01-01T00:00:00Z", "at_epoch": 100.0,
                    "alert": {"active_since_epoch": 98.0}},
        "job": {"id": 3, "runbook": "failover-site"},
        "incident": 9,
        "steps": {
            "restore": {"output": [
                {"vm": "pbx1", "site": "site2", "point": "pbx1@t", "data_age_seconds": 4.26, "point_time_epoch": 95.74, "seconds": 2.0, "at_epoch": 106.0},
                null
            ]},
            "probes": {"output": [{"seconds": 1.0, "at_epoch": 108.34}, null]}
        }
    });
    let ctx = template::context(&raw);
    let with = Value::Object(resolve.with.clone().into_iter().collect());
    let note = render(&with, &ctx, "with").unwrap()["note"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        note.starts_with("site site1 failed over. RTO 8.3 s"),
        "{note}"
    );
    assert!(note.contains("to the probes passing"), "{note}");
    // At most from the restored point to the site's first failing probe.
    assert!(note.contains("data-loss window at most 2.3 s"), "{note}");
    assert!(note.contains("pbx1 at site2 from point pbx1@t"), "{note}");
    // A restore that skipped newer points says which and why.
    let mut skipping = raw.clone();
    skipping["steps"]["restore"]["output"][0]["skipped"] = json!([
        {"point": "pbx1@new", "time": "2026-01-01T00:00:00Z", "reasons": ["site2-store: corrupt chunk", "site1-store: point missing"]}
    ]);
    let note = render(&with, &template::context(&skipping), "with").unwrap()["note"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        note.contains("after skipping 1 newer point(s) that did not restore: pbx1@new (site2-store: corrupt chunk; site1-store: point missing)"),
        "{note}"
    );
    // A recovery plan: each tier's start from the trigger, and the target.
    let mut planned = raw.clone();
    planned["steps"]["restore"]["output"][1] = json!(
        {"vm": "fe1", "site": "site2", "point": "fe1@t", "data_age_seconds": 5.0, "point_time_epoch": 96.0, "seconds": 3.0, "at_epoch": 109.5, "tier": 2}
    );
    planned["steps"]["vms"] = json!({"output": {"plans": [
        {"name": "pbx", "rto_target_seconds": 9.0, "tiers": [["pbx1"], ["fe1"]]}
    ]}});
    let note = render(&with, &template::context(&planned), "with").unwrap()["note"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        note.contains("Plan pbx: tier 1 (pbx1) started at 6.0 s, tier 2 (fe1) started at 9.5 s; its last tier started AFTER the plan's RTO target of 9.0 s."),
        "{note}"
    );
}

#[test]
fn fail_stops_a_template_with_its_own_message() {
    let ctx = template::context(&json!({"params": {"vm": null}}));
    assert_eq!(
        template::render_str("{{ fail('give params.vm') if not params.vm else 1 }}", &ctx),
        Err("give params.vm".to_string())
    );
    assert_eq!(
        template::render_str("x{{ fail('no ' ~ 'luck') }}", &ctx),
        Err("no luck".to_string())
    );
    // A runbook may use it: it is no undefined variable.
    let vars = template::variables("{{ fail('x') if params.a else params.b }}").unwrap();
    assert_eq!(
        vars.into_iter().collect::<std::collections::BTreeSet<_>>(),
        ["params.a", "params.b"].map(String::from).into()
    );
}

#[test]
fn drill_takes_a_site_or_one_vm_and_locks_each() {
    let rb = parse("drill.yaml", SHIPPED[4].1).unwrap();
    let lock = |given: Value| {
        let given = given.as_object().unwrap().clone();
        plan(&rb, &given, &json!({"kind": "manual"})).map(|p| p.lock.unwrap())
    };
    assert_eq!(lock(json!({"site": "site1"})), Ok("drill:site1".into()));
    assert_eq!(lock(json!({"vm": "web1"})), Ok("drill:vm:web1".into()));
    for (given, why) in [
        (json!({}), "neither"),
        (json!({"site": "site1", "vm": "web1"}), "both"),
    ] {
        let e = lock(given).unwrap_err();
        assert!(
            e.starts_with("lock: runbook drill needs exactly one of params.site"),
            "{e}"
        );
        assert!(
            e.contains("params.vm") && e.ends_with(&format!("not {why}")),
            "{e}"
        );
    }
    // A VM drill of a VM with nothing to boot fails with a reason; a site
    // drill with nothing to boot goes on (and reports nothing drilled).
    let copies = rb.steps.iter().find(|s| s.id == "copies").unwrap();
    let text = |params: Value, vms: Value| {
        let ctx = template::context(&json!({
            "params": params,
            "steps": {"vms": {"output": {"vms": vms}}},
        }));
        template::render_str(copies.with["text"].as_str().unwrap(), &ctx)
    };
    let web1 = json!([{"name": "web1", "site": "site1", "dr_site": "site2"}]);
    let no_dr = json!([{"name": "web1", "site": "site1", "dr_site": null}]);
    assert_eq!(
        text(json!({"vm": "web1", "site": null}), web1),
        Ok(json!("copies to boot: web1"))
    );
    assert_eq!(
        text(json!({"vm": "web1", "site": null}), no_dr.clone()),
        Err(
            "VM web1 is in no protection group or has no DR site: there is nothing to drill".into()
        )
    );
    assert_eq!(
        text(json!({"vm": "web1", "site": null}), json!([])),
        Err(
            "VM web1 is in no protection group or has no DR site: there is nothing to drill".into()
        )
    );
    assert_eq!(
        text(json!({"vm": null, "site": "site1"}), no_dr),
        Ok(json!("copies to boot: none"))
    );
}

#[test]
fn a_bad_input_names_the_action_and_the_field() {
    use crate::catalog::{Call, InputError};
    let e = Call::parse("sleep", &json!({"duration": "soon"})).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("action sleep: input 'duration': "),
        "{e}"
    );
    let e = Call::parse("vm.start", &json!({"vm": "a", "vms": "b"})).unwrap_err();
    assert!(e.to_string().contains("unknown field `vms`"), "{e}");
    let e = Call::parse("point.restore", &json!({"vm": "a"})).unwrap_err();
    assert!(e.to_string().contains("missing field `site`"), "{e}");
    let e = Call::parse("shell", &json!({"command": "ls"})).unwrap_err();
    assert!(e.to_string().contains("input 'command'"), "{e}");
    assert!(matches!(
        Call::parse("vm.explode", &json!({})),
        Err(InputError::Unknown(_))
    ));
    // Rendered templates may give text where a bool, a number or a
    // duration is meant.
    let Call::PointRestore(r) = Call::parse(
        "point.restore",
        &json!({"vm": "a", "site": "s", "start": "true"}),
    )
    .unwrap() else {
        panic!("not a point.restore")
    };
    assert_eq!(r.start.map(|s| s.0), Some(true));
    let Call::DrillProbe(p) = Call::parse(
        "drill.probe",
        &json!({"id": 7, "port": "5060", "timeout": 1.5}),
    )
    .unwrap() else {
        panic!("not a drill.probe")
    };
    assert_eq!(p.id.as_str(), "7");
    assert_eq!(p.port.map(|p| p.0), Some(5060));
}

#[test]
fn the_catalog_is_the_types_each_action_once() {
    let all = crate::catalog::actions();
    let mut names: Vec<&str> = all.iter().map(|a| a.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all.len(), "an action listed twice");
    for a in all {
        assert!(
            !a.summary.is_empty() && !a.idempotency.is_empty(),
            "{}",
            a.name
        );
        // The fields the catalog says are required are what its type needs:
        // a value of each one's kind parses.
        let mut input = serde_json::Map::new();
        for f in a.inputs.iter().filter(|f| f.required) {
            let v = match f.kind {
                "bool" => json!(true),
                "number" => json!(1),
                "duration" => json!("1s"),
                "list" => json!(["x"]),
                "map" => json!({}),
                _ => json!("x"),
            };
            input.insert(f.name.clone(), v);
        }
        crate::catalog::Call::parse(a.name, &Value::Object(input))
            .unwrap_or_else(|e| panic!("{}: {e}", a.name));
        assert!(
            a.inputs.iter().all(|f| !f.doc.is_empty()),
            "{}: an input without a description",
            a.name
        );
    }
    let restore = crate::action("point.restore").unwrap();
    let kind = |name: &str| {
        restore
            .inputs
            .iter()
            .find(|f| f.name == name)
            .map(|f| (f.kind, f.required))
    };
    assert_eq!(kind("vm"), Some(("string", true)));
    assert_eq!(kind("start"), Some(("bool", false)));
    assert!(restore.outputs.iter().any(|f| f.name == "host"));
    let sleep = crate::action("sleep").unwrap();
    assert_eq!(sleep.inputs[0].kind, "duration");
    let text = crate::catalog::describe();
    assert!(text.contains("point.create\n"), "{text}");
}
