//! The rules file: alert rules, inhibit rules and incident templates, in
//! YAML. Parsing is two passes: serde reads the shape (unknown fields,
//! types, durations and severities fail there, with serde_norway's mark),
//! then [`RuleSet::parse`] checks what serde cannot (unique names,
//! references, templates) and finds the offending node's line and column
//! again with [`locate`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use standby_types::watch::{Labels, Severity};

/// The rules shipped with standby; see `rules/builtin.yaml`.
const BUILTIN: &str = include_str!("../rules/builtin.yaml");
const BUILTIN_PATH: &str = "crates/monitor/rules/builtin.yaml";

/// A rules file that cannot be used. Displays as
/// `FILE:LINE:COLUMN: PATH: MESSAGE` (line and column when known).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct RuleError {
    pub file: PathBuf,
    /// 1-based line and column of the offending node.
    pub at: Option<(usize, usize)>,
    /// Field path such as `rules[0].for`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl RuleError {
    fn render(&self) -> String {
        let mut s = self.file.display().to_string();
        if let Some((line, col)) = self.at {
            s.push_str(&format!(":{line}:{col}"));
        }
        if !self.path.is_empty() {
            s.push_str(": ");
            s.push_str(&self.path);
        }
        s.push_str(": ");
        s.push_str(&self.message);
        s
    }
}

/// Label matchers: every named label must have one of the listed values
/// (a missing label has the value "").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matchers(pub BTreeMap<String, Vec<String>>);

impl Matchers {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|(k, allowed)| {
            let v = labels.get(k).map(String::as_str).unwrap_or("");
            allowed.iter().any(|a| a == v)
        })
    }
}

impl<'de> Deserialize<'de> for Matchers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Matchers(
            BTreeMap::<String, OneOrMany>::deserialize(d)?
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        ))
    }
}

/// A matcher value: a string or a list of strings.
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// What a rule watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Probe(ProbeCondition),
    Event(EventCondition),
}

impl Condition {
    pub fn group_by(&self) -> &[String] {
        match self {
            Condition::Probe(p) => &p.group_by,
            Condition::Event(e) => &e.group_by,
        }
    }
}

/// Holds for a group when at least `min_vantage_points` vantage points
/// see only failing fresh results among those matching `matchers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeCondition {
    pub matchers: Matchers,
    pub min_vantage_points: u32,
    /// A live vantage point that still reaches the target vetoes: the
    /// condition then holds only when every live vantage point agrees
    /// (hence a majority of them), and at least `min_vantage_points` do.
    /// A vantage point is live for a group while its results for it are
    /// fresh (they arrive with its heartbeats).
    pub veto: bool,
    pub group_by: Vec<String>,
}

/// Holds for a group when at least `count` matching events happened
/// within `within` of now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCondition {
    /// On the event's labels plus `kind`, `source`, `severity`, `vantage`.
    pub matchers: Matchers,
    pub count: u32,
    pub within: Duration,
    pub group_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub description: Option<String>,
    pub condition: Condition,
    /// How long the condition must hold before the alert fires.
    pub for_: Duration,
    /// How long the condition must be false before the alert resolves.
    pub clear_for: Duration,
    pub severity: Severity,
    pub labels: Labels,
    /// Template sources, rendered when the alert fires.
    pub annotations: Labels,
    pub incident: Option<String>,
    /// Where the rule was written, for messages.
    pub file: PathBuf,
    pub at: Option<(usize, usize)>,
}

/// Mutes alerts matching `target` while an alert matching `source` fires
/// with the same values of the `equal` labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InhibitRule {
    pub source: Matchers,
    pub target: Matchers,
    pub equal: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentTemplate {
    pub title: String,
    pub severity: Severity,
    pub description: String,
    pub group: String,
    /// Dedup key template; default: template name and the group labels.
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub inhibit: Vec<InhibitRule>,
    pub incident_templates: BTreeMap<String, IncidentTemplate>,
}

// The file's shape, as serde reads it.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    inhibit: Vec<RawInhibit>,
    #[serde(default)]
    incident_templates: BTreeMap<String, RawTemplate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    description: Option<String>,
    condition: RawCondition,
    #[serde(rename = "for", default, deserialize_with = "duration")]
    for_: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    clear_for: Option<Duration>,
    #[serde(deserialize_with = "severity")]
    severity: Severity,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    annotations: Labels,
    #[serde(default)]
    incident: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    #[serde(default)]
    probe: Option<Matchers>,
    #[serde(default)]
    min_vantage_points: Option<u32>,
    #[serde(default)]
    veto: Option<bool>,
    #[serde(default)]
    event: Option<Matchers>,
    #[serde(default)]
    count: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    within: Option<Duration>,
    #[serde(default)]
    group_by: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInhibit {
    source: Matchers,
    target: Matchers,
    #[serde(default)]
    equal: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    title: String,
    #[serde(deserialize_with = "severity")]
    severity: Severity,
    #[serde(default)]
    description: String,
    group: String,
    #[serde(default)]
    key: Option<String>,
}

/// Parses a scalar inside the deserializer's visit, so a failure carries
/// the scalar's own line and column.
fn parse_scalar<'de, D, T>(
    d: D,
    what: &'static str,
    f: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<T> {
        what: &'static str,
        f: fn(&str) -> Result<T, String>,
    }
    impl<'de, T> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, fm: &mut fmt::Formatter) -> fmt::Result {
            fm.write_str(self.what)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.f)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V { what, f })
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parse_scalar(d, "a duration such as 30s", |s| {
        humantime::parse_duration(s.trim())
            .map(Some)
            .map_err(|_| format!("bad duration '{s}'"))
    })
}

fn severity<'de, D: Deserializer<'de>>(d: D) -> Result<Severity, D::Error> {
    parse_scalar(d, "a severity", |s| s.parse())
}

/// One step of a field path.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_owned())
}

fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

const HERE: &str = "\u{0}standby-locate";

/// Line and column of the node at `path` in `src`: walks the document
/// and fails on purpose at that node, so the YAML parser stamps its mark
/// on the error.
fn locate(src: &str, path: &[Seg]) -> Option<(usize, usize)> {
    struct Seed<'a>(&'a [Seg]);
    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(Walk(self.0))
        }
    }
    struct Walk<'a>(&'a [Seg]);
    impl Walk<'_> {
        fn leaf<E: de::Error>(&self) -> Result<(), E> {
            if self.0.is_empty() {
                Err(E::custom(HERE))
            } else {
                Ok(())
            }
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("anything")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            self.leaf()
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            self.leaf()
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            self.leaf()
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            self.leaf()
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            self.leaf()
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            self.leaf()
        }
        fn visit_none<E: de::Error>(self) -> Result<(), E> {
            self.leaf()
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let Some((first, rest)) = self.0.split_first() else {
                return Err(de::Error::custom(HERE));
            };
            let Seg::Index(want) = first else {
                return Ok(());
            };
            for _ in 0..*want {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(());
                }
            }
            seq.next_element_seed(Seed(rest))?;
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let Some((first, rest)) = self.0.split_first() else {
                return Err(de::Error::custom(HERE));
            };
            let Seg::Key(want) = first else {
                return Ok(());
            };
            while let Some(k) = map.next_key::<String>()? {
                if &k == want {
                    return map.next_value_seed(Seed(rest));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let de = serde_norway::Deserializer::from_str(src);
    match Seed(path).deserialize(de) {
        Err(e) if e.to_string().contains(HERE) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks that a template compiles.
pub(crate) fn check_template(src: &str) -> Result<(), String> {
    let env = minijinja::Environment::new();
    env.template_from_str(src)
        .map(|_| ())
        .map_err(|e| format!("bad template: {e}"))
}

struct Ctx<'a> {
    src: &'a str,
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, path: &[Seg], message: impl Into<String>) -> RuleError {
        RuleError {
            file: self.file.to_owned(),
            at: locate(self.src, path),
            path: path_string(path),
            message: message.into(),
        }
    }
}

/// Turns a serde_norway error, `PATH: MESSAGE at line L column C`, into
/// its parts.
fn from_yaml_error(file: &Path, e: serde_norway::Error) -> RuleError {
    let at = e.location().map(|l| (l.line(), l.column()));
    let mut msg = e.to_string();
    if let Some((line, col)) = at
        && let Some(stripped) = msg.strip_suffix(&format!(" at line {line} column {col}"))
    {
        msg = stripped.to_owned();
    }
    let (path, message) = match msg.split_once(": ") {
        Some((p, m)) if !p.contains(char::is_whitespace) && p != "." => {
            (p.to_owned(), m.to_owned())
        }
        _ => (String::new(), msg),
    };
    RuleError {
        file: file.to_owned(),
        at,
        path,
        message,
    }
}

impl RuleSet {
    /// Parses and checks one rules file; `file` names it in errors.
    pub fn parse(src: &str, file: &Path) -> Result<RuleSet, RuleError> {
        let raw: RawFile = if src.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        }) {
            RawFile::default()
        } else {
            RawFile::deserialize(serde_norway::Deserializer::from_str(src))
                .map_err(|e| from_yaml_error(file, e))?
        };
        let cx = Ctx { src, file };

        let mut templates = BTreeMap::new();
        for (name, t) in raw.incident_templates {
            let at = |field: &str| [key("incident_templates"), key(&name), key(field)];
            if !valid_name(&name) {
                return Err(cx.err(
                    &[key("incident_templates"), key(&name)],
                    format!("bad template name '{name}' (use a-z, 0-9 and -)"),
                ));
            }
            for (field, src) in [
                ("title", Some(&t.title)),
                ("description", Some(&t.description)),
                ("group", Some(&t.group)),
                ("key", t.key.as_ref()),
            ] {
                if let Some(src) = src {
                    check_template(src).map_err(|m| cx.err(&at(field), m))?;
                }
            }
            templates.insert(
                name.clone(),
                IncidentTemplate {
                    title: t.title,
                    severity: t.severity,
                    description: t.description,
                    group: t.group,
                    key: t.key,
                },
            );
        }

        let mut rules: Vec<Rule> = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            let at = |field: &str| vec![key("rules"), Seg::Index(i), key(field)];
            let cond_at =
                |field: &str| vec![key("rules"), Seg::Index(i), key("condition"), key(field)];
            if !valid_name(&r.name) {
                return Err(cx.err(
                    &at("name"),
                    format!("bad rule name '{}' (use a-z, 0-9 and -)", r.name),
                ));
            }
            if let Some(j) = rules.iter().position(|o| o.name == r.name) {
                return Err(cx.err(
                    &at("name"),
                    format!("duplicate rule '{}' (also rules[{j}])", r.name),
                ));
            }
            let c = r.condition;
            let condition = match (c.probe, c.event) {
                (Some(matchers), None) => {
                    if c.count.is_some() {
                        return Err(
                            cx.err(&cond_at("count"), "count applies to event conditions only")
                        );
                    }
                    if c.within.is_some() {
                        return Err(cx.err(
                            &cond_at("within"),
                            "within applies to event conditions only",
                        ));
                    }
                    let min = c.min_vantage_points.unwrap_or(1);
                    if min < 1 {
                        return Err(cx.err(&cond_at("min_vantage_points"), "must be at least 1"));
                    }
                    Condition::Probe(ProbeCondition {
                        matchers,
                        min_vantage_points: min,
                        veto: c.veto.unwrap_or(false),
                        group_by: c.group_by,
                    })
                }
                (None, Some(matchers)) => {
                    if c.min_vantage_points.is_some() {
                        return Err(cx.err(
                            &cond_at("min_vantage_points"),
                            "min_vantage_points applies to probe conditions only",
                        ));
                    }
                    if c.veto.is_some() {
                        return Err(
                            cx.err(&cond_at("veto"), "veto applies to probe conditions only")
                        );
                    }
                    let count = c.count.unwrap_or(1);
                    if count < 1 {
                        return Err(cx.err(&cond_at("count"), "must be at least 1"));
                    }
                    let Some(within) = c.within else {
                        return Err(cx.err(&at("condition"), "event condition needs 'within'"));
                    };
                    if within.is_zero() {
                        return Err(cx.err(&cond_at("within"), "must be more than 0s"));
                    }
                    Condition::Event(EventCondition {
                        matchers,
                        count,
                        within,
                        group_by: c.group_by,
                    })
                }
                (Some(_), Some(_)) => {
                    return Err(cx.err(
                        &cond_at("event"),
                        "a condition has 'probe' or 'event', not both",
                    ));
                }
                (None, None) => {
                    return Err(cx.err(&at("condition"), "a condition needs 'probe' or 'event'"));
                }
            };
            for (k, v) in &r.annotations {
                let mut p = at("annotations");
                p.push(key(k));
                check_template(v).map_err(|m| cx.err(&p, m))?;
            }
            if let Some(t) = &r.incident
                && !templates.contains_key(t)
            {
                return Err(cx.err(&at("incident"), format!("unknown incident template '{t}'")));
            }
            let rule_at = locate(src, &[key("rules"), Seg::Index(i), key("name")]);
            rules.push(Rule {
                name: r.name,
                description: r.description,
                condition,
                for_: r.for_.unwrap_or(Duration::ZERO),
                clear_for: r.clear_for.unwrap_or(Duration::from_secs(5)),
                severity: r.severity,
                labels: r.labels,
                annotations: r.annotations,
                incident: r.incident,
                file: file.to_owned(),
                at: rule_at,
            });
        }

        let inhibit = raw
            .inhibit
            .into_iter()
            .map(|r| InhibitRule {
                source: r.source,
                target: r.target,
                equal: r.equal,
            })
            .collect();
        Ok(RuleSet {
            rules,
            inhibit,
            incident_templates: templates,
        })
    }

    /// The rules shipped with standby.
    pub fn builtin() -> RuleSet {
        // A test proves the shipped file parses.
        RuleSet::parse(BUILTIN, Path::new(BUILTIN_PATH)).expect("builtin rules parse")
    }

    /// Joins two rule sets (e.g. two files). Rule and template names must
    /// be unique across both; inhibit rules add up.
    pub fn merge(a: RuleSet, b: RuleSet) -> Result<RuleSet, RuleError> {
        let mut out = a;
        for (name, t) in b.incident_templates {
            if let Some(old) = out.incident_templates.get(&name)
                && old != &t
            {
                let file = b.rules.first().map(|r| r.file.clone()).unwrap_or_default();
                return Err(RuleError {
                    file,
                    at: None,
                    path: format!("incident_templates.{name}"),
                    message: format!("incident template '{name}' is defined twice, differently"),
                });
            }
            out.incident_templates.insert(name, t);
        }
        for r in b.rules {
            if let Some(old) = out.rules.iter().find(|o| o.name == r.name) {
                let where_ = match old.at {
                    Some((l, c)) => format!("{}:{l}:{c}", old.file.display()),
                    None => old.file.display().to_string(),
                };
                return Err(RuleError {
                    file: r.file.clone(),
                    at: r.at,
                    path: String::new(),
                    message: format!("duplicate rule '{}' (also in {where_})", r.name),
                });
            }
            out.rules.push(r);
        }
        out.inhibit.extend(b.inhibit);
        Ok(out)
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Rule names in file order.
    pub fn names(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.name.clone()).collect()
    }
}

#[cfg(test)]
mod tests;
