//! `[[sites.NAME.bandwidth]]`: how fast copies may leave a site, by time
//! of day in the site's own time zone (`[sites.NAME] timezone`).
//!
//! A [`BandwidthSchedule`] is a site's windows with its time zone; the
//! controller sends it with every copy that leaves the site, and the
//! sender asks it for the rate ([`BandwidthSchedule::limit_at`]) before
//! each batch, so a copy that runs past the end of a window speeds up.
//!
//! - Outside every window: unlimited.
//! - Overlapping windows: the lowest limit.
//! - `from` later than `to`: the window crosses midnight; `days` are the
//!   days it starts on (`fri 22:00 → 06:00` runs into Saturday).
//! - Times are wall-clock times of the zone: on the day clocks go
//!   forward an hour is skipped, on the day they go back one is lived
//!   twice, and a window covers what the clock on the wall says.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::units::ByteSize;

/// A day of the week, written `mon` … `sun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    pub const ALL: [Day; 7] = [
        Day::Mon,
        Day::Tue,
        Day::Wed,
        Day::Thu,
        Day::Fri,
        Day::Sat,
        Day::Sun,
    ];

    fn of(d: chrono::Weekday) -> Day {
        Day::ALL[d.num_days_from_monday() as usize]
    }

    fn before(self) -> Day {
        Day::ALL[(self as usize + 6) % 7]
    }
}

/// A wall-clock time `HH:MM`, `00:00` to `24:00` (the end of the day,
/// for `to`), kept as minutes since midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay(pub u16);

impl FromStr for TimeOfDay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad time '{s}': expected HH:MM, 00:00 to 24:00");
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if m > 59 || h > 24 || (h == 24 && m > 0) {
            return Err(bad());
        }
        Ok(TimeOfDay(h * 60 + m))
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn every_day() -> Vec<Day> {
    Day::ALL.to_vec()
}

/// `[[sites.NAME.bandwidth]]`: at most `limit` bytes per second leave
/// the site from `from` to `to` on `days` (default every day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthWindow {
    pub limit: ByteSize,
    #[serde(default = "every_day")]
    pub days: Vec<Day>,
    pub from: TimeOfDay,
    pub to: TimeOfDay,
}

impl BandwidthWindow {
    /// Whether local time `minute` (since midnight) of `day` is inside.
    fn covers(&self, day: Day, minute: u16) -> bool {
        let (from, to) = (self.from.0, self.to.0);
        if from < to {
            self.days.contains(&day) && (from..to).contains(&minute)
        } else {
            (self.days.contains(&day) && minute >= from)
                || (self.days.contains(&day.before()) && minute < to)
        }
    }

    /// The problem with this window, as (field, message).
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        if self.limit.0 == 0 {
            return Err(("limit", "a limit of 0 would stop every copy".into()));
        }
        if self.days.is_empty() {
            return Err(("days", "no days: the window would never apply".into()));
        }
        if self.from == self.to {
            return Err((
                "to",
                format!(
                    "'from' and 'to' are both {}: write from = \"00:00\", to = \"24:00\" for a whole day",
                    self.from
                ),
            ));
        }
        if self.from.0 == 24 * 60 {
            return Err(("from", "a window cannot start at 24:00".into()));
        }
        Ok(())
    }
}

/// A site's bandwidth windows in its time zone: what a copy leaving the
/// site carries (it travels in copy calls to the agents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandwidthSchedule {
    /// IANA name, e.g. `Europe/Berlin`.
    pub timezone: String,
    pub windows: Vec<BandwidthWindow>,
}

impl BandwidthSchedule {
    /// Bytes per second allowed at `now`: the lowest limit of the
    /// windows covering it, none outside every window.
    pub fn limit_at(&self, now: DateTime<Utc>) -> Option<u64> {
        // Checked at load; a bad name from elsewhere counts as UTC.
        let tz: chrono_tz::Tz = parse_timezone(&self.timezone).unwrap_or(chrono_tz::UTC);
        let local = now.with_timezone(&tz);
        let (day, minute) = (
            Day::of(local.weekday()),
            (local.hour() * 60 + local.minute()) as u16,
        );
        self.windows
            .iter()
            .filter(|w| w.covers(day, minute))
            .map(|w| w.limit.0)
            .min()
    }

    /// Whether any window limits the rate at some time.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

/// An IANA time zone name, or why it is not one.
pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        format!(
            "unknown time zone '{name}': give an IANA name such as \"Europe/Berlin\" or \"UTC\""
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn w(limit: u64, days: &[Day], from: &str, to: &str) -> BandwidthWindow {
        BandwidthWindow {
            limit: ByteSize(limit),
            days: days.to_vec(),
            from: from.parse().unwrap(),
            to: to.parse().unwrap(),
        }
    }

    fn sched(tz: &str, windows: Vec<BandwidthWindow>) -> BandwidthSchedule {
        BandwidthSchedule {
            timezone: tz.into(),
            windows,
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    const WEEKDAYS: [Day; 5] = [Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri];

    #[test]
    fn office_hours_on_weekdays_only() {
        let s = sched("UTC", vec![w(10, &WEEKDAYS, "08:00", "18:00")]);
        // 2026-12-07 is a Monday.
        assert_eq!(s.limit_at(utc(2026, 12, 7, 7, 59)), None);
        assert_eq!(s.limit_at(utc(2026, 12, 7, 8, 0)), Some(10));
        assert_eq!(s.limit_at(utc(2026, 12, 7, 17, 59)), Some(10));
        assert_eq!(
            s.limit_at(utc(2026, 12, 7, 18, 0)),
            None,
            "'to' is excluded"
        );
        assert_eq!(s.limit_at(utc(2026, 12, 11, 12, 0)), Some(10), "friday");
        assert_eq!(s.limit_at(utc(2026, 12, 12, 12, 0)), None, "saturday");
        assert_eq!(s.limit_at(utc(2026, 12, 13, 12, 0)), None, "sunday");
    }

    #[test]
    fn a_window_crossing_midnight_belongs_to_the_day_it_starts() {
        let s = sched("UTC", vec![w(5, &[Day::Fri], "22:00", "06:00")]);
        // Friday 2026-12-11 22:00 to Saturday 06:00.
        assert_eq!(s.limit_at(utc(2026, 12, 11, 21, 59)), None);
        assert_eq!(s.limit_at(utc(2026, 12, 11, 23, 30)), Some(5));
        assert_eq!(s.limit_at(utc(2026, 12, 12, 0, 0)), Some(5));
        assert_eq!(s.limit_at(utc(2026, 12, 12, 5, 59)), Some(5));
        assert_eq!(s.limit_at(utc(2026, 12, 12, 6, 0)), None);
        // Not Friday morning (the window starting Thursday is not listed),
        // nor Saturday night.
        assert_eq!(s.limit_at(utc(2026, 12, 11, 3, 0)), None);
        assert_eq!(s.limit_at(utc(2026, 12, 12, 23, 0)), None);
        // Sunday into Monday wraps the week.
        let s = sched("UTC", vec![w(5, &[Day::Sun], "20:00", "02:00")]);
        assert_eq!(s.limit_at(utc(2026, 12, 14, 1, 0)), Some(5), "monday 01:00");
    }

    #[test]
    fn overlapping_windows_give_the_lowest_limit() {
        let s = sched(
            "UTC",
            vec![
                w(100, &Day::ALL, "00:00", "24:00"),
                w(10, &WEEKDAYS, "08:00", "18:00"),
                w(50, &WEEKDAYS, "17:00", "20:00"),
            ],
        );
        assert_eq!(s.limit_at(utc(2026, 12, 7, 3, 0)), Some(100));
        assert_eq!(s.limit_at(utc(2026, 12, 7, 9, 0)), Some(10));
        assert_eq!(s.limit_at(utc(2026, 12, 7, 17, 30)), Some(10));
        assert_eq!(s.limit_at(utc(2026, 12, 7, 18, 30)), Some(50));
        assert_eq!(s.limit_at(utc(2026, 12, 7, 23, 59)), Some(100));
        assert_eq!(sched("UTC", vec![]).limit_at(utc(2026, 12, 7, 9, 0)), None);
    }

    #[test]
    fn windows_are_in_the_sites_time_zone() {
        let s = sched("Asia/Tokyo", vec![w(10, &WEEKDAYS, "08:00", "18:00")]);
        // Monday 08:00 in Tokyo (UTC+9, no DST) is Sunday 23:00 UTC.
        assert_eq!(s.limit_at(utc(2026, 12, 6, 23, 0)), Some(10));
        assert_eq!(s.limit_at(utc(2026, 12, 6, 22, 59)), None);
        // Friday 18:00 in Tokyo is Friday 09:00 UTC.
        assert_eq!(s.limit_at(utc(2026, 12, 11, 8, 59)), Some(10));
        assert_eq!(s.limit_at(utc(2026, 12, 11, 9, 0)), None);
    }

    #[test]
    fn daylight_saving_moves_the_window_in_utc() {
        let s = sched("Europe/Berlin", vec![w(10, &Day::ALL, "08:00", "18:00")]);
        // Winter (CET, UTC+1): 08:00 local is 07:00 UTC.
        assert_eq!(s.limit_at(utc(2026, 3, 28, 6, 59)), None);
        assert_eq!(s.limit_at(utc(2026, 3, 28, 7, 0)), Some(10));
        // Clocks go forward on Sunday 2026-03-29 at 01:00 UTC; from then
        // on (CEST, UTC+2) 08:00 local is 06:00 UTC.
        assert_eq!(s.limit_at(utc(2026, 3, 29, 6, 0)), Some(10));
        assert_eq!(s.limit_at(utc(2026, 3, 29, 5, 59)), None);
        assert_eq!(s.limit_at(utc(2026, 3, 29, 16, 0)), None, "18:00 CEST");
        // Back on Sunday 2026-10-25 at 01:00 UTC.
        assert_eq!(s.limit_at(utc(2026, 10, 25, 6, 30)), None, "07:30 CET");
        assert_eq!(s.limit_at(utc(2026, 10, 25, 7, 0)), Some(10));
    }

    #[test]
    fn a_window_in_the_skipped_or_repeated_hour() {
        // 02:00–03:00 local does not exist on 2026-03-29 in Berlin, and
        // happens twice on 2026-10-25.
        let s = sched("Europe/Berlin", vec![w(10, &Day::ALL, "02:00", "03:00")]);
        for m in [0, 30, 59] {
            assert_eq!(s.limit_at(utc(2026, 3, 29, 0, m)), None, "01:{m} CET");
            assert_eq!(s.limit_at(utc(2026, 3, 29, 1, m)), None, "03:{m} CEST");
        }
        assert_eq!(s.limit_at(utc(2026, 10, 25, 0, 30)), Some(10), "02:30 CEST");
        assert_eq!(s.limit_at(utc(2026, 10, 25, 1, 30)), Some(10), "02:30 CET");
        assert_eq!(s.limit_at(utc(2026, 10, 25, 2, 0)), None, "03:00 CET");
    }

    #[test]
    fn times_and_windows_are_checked() {
        assert_eq!("24:00".parse::<TimeOfDay>(), Ok(TimeOfDay(1440)));
        assert_eq!("07:05".parse::<TimeOfDay>().unwrap().to_string(), "07:05");
        for bad in ["7:00", "24:01", "12:60", "noon", "12-00", ""] {
            assert!(bad.parse::<TimeOfDay>().is_err(), "{bad}");
        }
        assert!(w(1, &Day::ALL, "08:00", "18:00").check().is_ok());
        assert_eq!(
            w(0, &Day::ALL, "08:00", "18:00").check().unwrap_err().0,
            "limit"
        );
        assert_eq!(w(1, &[], "08:00", "18:00").check().unwrap_err().0, "days");
        assert_eq!(
            w(1, &Day::ALL, "08:00", "08:00").check().unwrap_err().0,
            "to"
        );
        assert!(parse_timezone("Europe/Berlin").is_ok());
        let e = parse_timezone("Europe/Bonn").unwrap_err();
        assert!(e.contains("Europe/Bonn"), "{e}");
    }
}
