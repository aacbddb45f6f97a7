//! When cron triggers fire: the next run times a workflow shows, and which
//! fires a scheduler starts at a given moment. Pure: the clock is an
//! argument, so that the scheduler and its tests agree on every instant.
//!
//! Schedules are read in their trigger's time zone (IANA names, `chrono-tz`)
//! with `croner`, the parser validation uses, so that a schedule that
//! validates is the schedule that fires. Daylight-saving changes follow the
//! zone's rules as Vixie cron does: a time that does not exist on a
//! spring-forward day fires at the first instant after the gap; a time that
//! happens twice on a fall-back day fires once, at its first occurrence;
//! interval schedules (`*/15 * * * *`) keep their interval across both.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::workflow::{parse_cron, Trigger};

/// What a scheduler does with the fires of a schedule that passed while no
/// scheduler ran (everything down, or the trigger's workflow archived).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedFires {
    /// They are skipped; the schedule resumes with its next fire.
    #[default]
    Skip,
    /// One execution runs for the latest of them, however many there were
    /// (never a burst).
    RunOnce,
}

impl MissedFires {
    /// Whether this is the default, which recorded triggers leave out.
    pub fn is_skip(&self) -> bool {
        *self == Self::Skip
    }
}

/// A cron trigger's schedule, parsed, in its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// The parsed expression.
    cron: croner::Cron,
    /// The zone the expression reads in.
    zone: Tz,
    /// What to do with missed fires.
    missed: MissedFires,
}

/// Parses an IANA time-zone name (`Europe/Paris`, `UTC`).
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("`{name}` is not an IANA time zone (such as `Europe/Paris` or `UTC`)"))
}

impl CronSchedule {
    /// The schedule of a cron trigger; `None` for other triggers and for a
    /// recorded trigger that no longer parses (validation refuses those).
    pub fn of(trigger: &Trigger) -> Option<Self> {
        let Trigger::Cron {
            schedule,
            timezone,
            missed,
            ..
        } = trigger
        else {
            return None;
        };
        let zone = match timezone {
            Some(name) => parse_timezone(name).ok()?,
            None => Tz::UTC,
        };
        Some(Self {
            cron: parse_cron(schedule).ok()?,
            zone,
            missed: *missed,
        })
    }

    /// The first fire strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.zone), false)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    /// The last fire at or before `until`.
    fn last_until(&self, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&until.with_timezone(&self.zone), true)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    /// The fires to start at `now` for a schedule last checked at `since`
    /// (fires at or before `since` are done): at most one.
    ///
    /// The latest fire in `(since, now]` runs when it is at most `late_after`
    /// old (a scheduler that took over from one that died, a slow tick).
    /// Any older fire in that range was missed: with
    /// [`MissedFires::RunOnce`], and when no fire is on time, one execution
    /// runs for the latest of them; with [`MissedFires::Skip`] nothing does.
    pub fn due(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        late_after: Duration,
    ) -> Option<DateTime<Utc>> {
        if now <= since {
            return None;
        }
        let last = self.last_until(now).filter(|last| *last > since)?;
        if now - last <= late_after || self.missed == MissedFires::RunOnce {
            Some(last)
        } else {
            None
        }
    }
}

/// The next `count` fire times of `triggers`' cron schedules after `after`,
/// merged and ascending; an instant two schedules share appears once.
pub fn next_runs(triggers: &[Trigger], after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
    let schedules: Vec<CronSchedule> = triggers.iter().filter_map(CronSchedule::of).collect();
    let mut heads: Vec<Option<DateTime<Utc>>> =
        schedules.iter().map(|s| s.next_after(after)).collect();
    let mut runs = Vec::with_capacity(count.min(1_000));
    while runs.len() < count {
        let Some(next) = heads.iter().flatten().min().copied() else {
            break;
        };
        runs.push(next);
        for (head, schedule) in heads.iter_mut().zip(&schedules) {
            if *head == Some(next) {
                *head = schedule.next_after(next);
            }
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn cron(schedule: &str, timezone: Option<&str>, missed: MissedFires) -> Trigger {
        Trigger::Cron {
            schedule: schedule.into(),
            timezone: timezone.map(Into::into),
            input: None,
            missed,
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn schedule(s: &str, tz: Option<&str>, missed: MissedFires) -> CronSchedule {
        CronSchedule::of(&cron(s, tz, missed)).unwrap()
    }

    #[test]
    fn weekday_mornings_in_paris_follow_the_zone_offset() {
        // 2026-01-05 is a Monday; Paris is UTC+1 in winter, UTC+2 in summer.
        let s = schedule("0 9 * * MON-FRI", Some("Europe/Paris"), MissedFires::Skip);
        assert_eq!(
            s.next_after(utc(2026, 1, 5, 0, 0)),
            Some(utc(2026, 1, 5, 8, 0))
        );
        assert_eq!(
            s.next_after(utc(2026, 7, 6, 0, 0)),
            Some(utc(2026, 7, 6, 7, 0))
        );
        // Friday 9:00 is followed by Monday 9:00.
        assert_eq!(
            s.next_after(utc(2026, 1, 9, 8, 0)),
            Some(utc(2026, 1, 12, 8, 0))
        );
    }

    #[test]
    fn a_time_skipped_by_spring_forward_fires_once_right_after_the_gap() {
        // Paris jumps from 02:00 to 03:00 on 2026-03-29 (01:00 UTC).
        let s = schedule("30 2 * * *", Some("Europe/Paris"), MissedFires::Skip);
        let runs: Vec<_> =
            std::iter::successors(s.next_after(utc(2026, 3, 27, 12, 0)), |t| s.next_after(*t))
                .take(3)
                .collect();
        assert_eq!(
            runs,
            vec![
                utc(2026, 3, 28, 1, 30), // 02:30 CET
                utc(2026, 3, 29, 1, 0),  // 03:00 CEST, the first instant after the gap
                utc(2026, 3, 30, 0, 30), // 02:30 CEST
            ]
        );
    }

    #[test]
    fn a_time_repeated_by_fall_back_fires_once() {
        // Paris goes from 03:00 back to 02:00 on 2026-10-25 (01:00 UTC).
        let s = schedule("30 2 * * *", Some("Europe/Paris"), MissedFires::Skip);
        let runs: Vec<_> =
            std::iter::successors(s.next_after(utc(2026, 10, 24, 12, 0)), |t| s.next_after(*t))
                .take(2)
                .collect();
        assert_eq!(
            runs,
            vec![
                utc(2026, 10, 25, 0, 30), // 02:30 CEST, the first of the two
                utc(2026, 10, 26, 1, 30), // 02:30 CET
            ]
        );
    }

    #[test]
    fn an_interval_keeps_its_interval_across_fall_back() {
        let s = schedule("0 * * * *", Some("Europe/Paris"), MissedFires::Skip);
        let runs: Vec<_> = std::iter::successors(s.next_after(utc(2026, 10, 24, 23, 30)), |t| {
            s.next_after(*t)
        })
        .take(4)
        .collect();
        // Hourly in absolute time, through the repeated hour.
        assert_eq!(
            runs,
            vec![
                utc(2026, 10, 25, 0, 0),
                utc(2026, 10, 25, 1, 0),
                utc(2026, 10, 25, 2, 0),
                utc(2026, 10, 25, 3, 0),
            ]
        );
    }

    #[test]
    fn the_fire_just_passed_is_due_once() {
        let s = schedule("*/5 * * * *", None, MissedFires::Skip);
        let late = Duration::minutes(1);
        let since = utc(2026, 1, 1, 10, 4);
        assert_eq!(
            s.due(since, utc(2026, 1, 1, 10, 4) + Duration::seconds(59), late),
            None
        );
        assert_eq!(
            s.due(since, utc(2026, 1, 1, 10, 5), late),
            Some(utc(2026, 1, 1, 10, 5))
        );
        // Checked at 10:05, it is done.
        assert_eq!(
            s.due(
                utc(2026, 1, 1, 10, 5),
                utc(2026, 1, 1, 10, 5) + Duration::seconds(30),
                late
            ),
            None
        );
        // A scheduler that takes over 40 s late still starts it.
        assert_eq!(
            s.due(since, utc(2026, 1, 1, 10, 5) + Duration::seconds(40), late),
            Some(utc(2026, 1, 1, 10, 5))
        );
    }

    #[test]
    fn missed_fires_are_skipped_by_default_and_run_once_on_request() {
        let late = Duration::minutes(1);
        // Down from 10:04 to 11:02: eleven fires of */5 passed.
        let (since, now) = (utc(2026, 1, 1, 10, 4), utc(2026, 1, 1, 11, 2));
        let skip = schedule("*/5 * * * *", None, MissedFires::Skip);
        assert_eq!(skip.due(since, now, late), None);
        let once = schedule("*/5 * * * *", None, MissedFires::RunOnce);
        assert_eq!(once.due(since, now, late), Some(utc(2026, 1, 1, 11, 0)));
        // And once only: checked at 11:02, nothing more until 11:05.
        assert_eq!(once.due(now, utc(2026, 1, 1, 11, 4), late), None);
    }

    #[test]
    fn next_runs_merge_every_cron_trigger_in_order_and_ignore_webhooks() {
        let triggers = vec![
            cron("0 9 * * *", None, MissedFires::Skip),
            cron("0 */6 * * *", None, MissedFires::Skip),
            Trigger::Webhook { key: "k".into() },
        ];
        assert_eq!(
            next_runs(&triggers, utc(2026, 1, 1, 7, 0), 4),
            vec![
                utc(2026, 1, 1, 9, 0),
                utc(2026, 1, 1, 12, 0),
                utc(2026, 1, 1, 18, 0),
                utc(2026, 1, 2, 0, 0),
            ]
        );
        // An instant both schedules fire at appears once.
        let both = vec![
            cron("0 12 * * *", None, MissedFires::Skip),
            cron("0 */6 * * *", None, MissedFires::Skip),
        ];
        assert_eq!(
            next_runs(&both, utc(2026, 1, 1, 7, 0), 2),
            vec![utc(2026, 1, 1, 12, 0), utc(2026, 1, 1, 18, 0)]
        );
        assert!(next_runs(
            &[Trigger::Webhook { key: "k".into() }],
            utc(2026, 1, 1, 0, 0),
            3
        )
        .is_empty());
    }

    #[test]
    fn time_zones_are_iana_names() {
        assert!(parse_timezone("Europe/Paris").is_ok());
        assert!(parse_timezone("UTC").is_ok());
        assert!(parse_timezone("Mars/Olympus").is_err());
        assert!(parse_timezone("").is_err());
    }
}
