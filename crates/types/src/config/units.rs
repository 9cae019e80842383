//! Value types written as strings in the file: schedules, byte sizes and
//! durations.

use std::fmt;
use std::time::Duration;

use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

pub(super) fn yes() -> bool {
    true
}

/// The longest duration standby takes, anywhere (a timeout, a retention,
/// an interval): ten years. Longer ones are refused with a clear error:
/// a deadline past it would overflow a clock and panic.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// A duration written as text (`90s`, `1h 30m`), at most
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("bad duration '{s}': {e}"))?;
    within_limit(d).map_err(|e| format!("'{s}': {e}"))
}

/// `d` when it is at most [`MAX_DURATION`].
pub fn within_limit(d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(format!(
            "a duration is at most {} (ten years)",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

/// When a protection group runs: `every 30s` or a cron expression
/// (`*/5 * * * *`, five or six fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    Cron(String),
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("every ") {
            let d = super::units::parse_duration(rest).map_err(|e| format!("bad interval: {e}"))?;
            if d < Duration::from_secs(1) {
                return Err(format!("interval '{rest}' is shorter than 1s"));
            }
            return Ok(Schedule::Every(d));
        }
        croner::Cron::new(s)
            .with_seconds_optional()
            .parse()
            .map_err(|e| format!("bad cron expression '{s}': {e}"))?;
        Ok(Schedule::Cron(s.to_string()))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
            Schedule::Cron(c) => f.write_str(c),
        }
    }
}

impl Schedule {
    /// The first run strictly after `after`.
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        match self {
            Schedule::Every(d) => Some(after + chrono::Duration::from_std(*d).ok()?),
            Schedule::Cron(c) => {
                let cron = croner::Cron::new(c).with_seconds_optional().parse().ok()?;
                cron.find_next_occurrence(&after, false).ok()
            }
        }
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A size in bytes, written `65536`, `"64KiB"`, `"64 MiB"`, `"2GiB"`
/// (K/M/G alone mean KiB/MiB/GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("bad size '{s}': expected a number with an optional unit"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" | "kb" => 1 << 10,
            "m" | "mib" | "mb" => 1 << 20,
            "g" | "gib" | "gb" => 1 << 30,
            "t" | "tib" | "tb" => 1 << 40,
            other => return Err(format!("bad size '{s}': unknown unit '{other}'")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size '{s}' is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if v >= 1 << shift && v.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", v >> shift);
            }
        }
        write!(f, "{v}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

pub(crate) mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod opt_duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A huge `shutdown_timeout` or interval in the file used to reach a
    /// deadline computation and overflow it (a panic): now the file is
    /// refused, naming the field.
    #[test]
    fn hardening_a_huge_duration_in_the_file_is_refused() {
        assert!(
            parse_duration("1000000000y")
                .unwrap_err()
                .contains("at most")
        );
        assert!("every 100000y".parse::<Schedule>().is_err());
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        let e = super::super::Config::parse(
            "[sites.s]\n[hosts.h]\nsite = \"s\"\ndriver = \"process\"\ndisk_dir = \"/d\"\n[vms.v]\nhost = \"h\"\ncommand = \"true\"\nshutdown_timeout = \"900000000y\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        assert!(e.to_string().contains("t.toml:"), "{e}");
    }
}
