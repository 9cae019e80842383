//! The scalar types of action inputs. A step's inputs are rendered from
//! templates, so a value may arrive as text where a bool, a number or a
//! duration is meant (`start: "{{ params.start }}"` with a string param):
//! each type here takes both forms, and its JSON Schema says so.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use standby_types::config::within_limit;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Text; a number or a bool is taken as its text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Text(pub String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.0
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl JsonSchema for Text {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Text".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

/// A bool; the text `true` or `false` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Flag, E> {
                match v {
                    "true" => Ok(Flag(true)),
                    "false" => Ok(Flag(false)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Flag {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Flag".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["boolean", "string"], "enum": [true, false, "true", "false"] })
    }
}

/// An integer; its decimal text too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Int, E> {
                v.trim()
                    .parse()
                    .map(Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Int {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Int".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["integer", "string"], "pattern": "^\\s*-?[0-9]+\\s*$" })
    }
}

/// A duration: text like `90s` or `1m 30s`, or a number of seconds; at
/// most ten years (a longer one is refused: its deadline would overflow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 90s, or seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Span, E> {
                crate::duration(v).map(Span).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Span, E> {
                within_limit(Duration::from_secs(v))
                    .map(Span)
                    .map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Span, E> {
                let s = u64::try_from(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))?;
                self.visit_u64(s)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Span, E> {
                let d = Duration::try_from_secs_f64(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Float(v), &self))?;
                within_limit(d).map(Span).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Span {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Span".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "number"], "format": "duration", "minimum": 0 })
    }
}

/// A list; no value is an empty list and one value a list of one (the
/// output of a step that ran once, where the outputs of a `for_each` step
/// are meant).
#[derive(Debug, Clone, PartialEq)]
pub struct Items<T>(pub Vec<T>);

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Items<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape<T> {
            Many(Vec<T>),
            One(T),
        }
        Ok(match Option::<Shape<T>>::deserialize(d)? {
            None => Items(Vec::new()),
            Some(Shape::Many(v)) => Items(v),
            Some(Shape::One(x)) => Items(vec![x]),
        })
    }
}

impl<T: JsonSchema> JsonSchema for Items<T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        format!("Items_{}", T::schema_name()).into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let item = g.subschema_for::<T>();
        json_schema!({ "anyOf": [{ "type": "array", "items": item }, item, { "type": "null" }] })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A templated timeout of a billion years used to overflow the
    /// deadline computed from it (a panic in the runbook's step).
    #[test]
    fn hardening_a_huge_duration_is_refused_not_a_panic() {
        for v in [json!("1000000000y"), json!(u64::MAX), json!(1e300)] {
            let e = serde_json::from_value::<Span>(v.clone()).unwrap_err();
            assert!(
                e.to_string().contains("at most") || e.to_string().contains("invalid value"),
                "{v}: {e}"
            );
        }
        let s: Span = serde_json::from_value(json!("3650d")).unwrap();
        assert!(std::time::Instant::now().checked_add(s.0).is_some());
        assert!(crate::duration("20000d").is_err());
    }

    #[test]
    fn scalars_take_their_text_forms() {
        let t: Text = serde_json::from_value(json!(42)).unwrap();
        assert_eq!(t.0, "42");
        let f: Flag = serde_json::from_value(json!("true")).unwrap();
        assert!(f.0);
        assert!(serde_json::from_value::<Flag>(json!("yes")).is_err());
        let i: Int = serde_json::from_value(json!(" 7 ")).unwrap();
        assert_eq!(i.0, 7);
        assert!(serde_json::from_value::<Int>(json!("7.5")).is_err());
        let s: Span = serde_json::from_value(json!("1m 30s")).unwrap();
        assert_eq!(s.0, Duration::from_secs(90));
        let s: Span = serde_json::from_value(json!(1.5)).unwrap();
        assert_eq!(s.0, Duration::from_millis(1500));
        assert!(serde_json::from_value::<Span>(json!(-1)).is_err());
        assert!(serde_json::from_value::<Span>(json!("soon")).is_err());
    }

    #[test]
    fn items_take_none_one_or_many() {
        let v: Items<Option<u8>> = serde_json::from_value(json!(null)).unwrap();
        assert!(v.0.is_empty());
        let v: Items<Option<u8>> = serde_json::from_value(json!([1, null])).unwrap();
        assert_eq!(v.0, vec![Some(1), None]);
        let v: Items<u8> = serde_json::from_value(json!(3)).unwrap();
        assert_eq!(v.0, vec![3]);
    }
}
