//! The POSIX TZ strings of TZif footers (`CET-1CEST,M3.5.0,M10.5.0/3`): the rule that gives
//! local time after the last transition a zone file lists.

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc};

use super::{LocalType, MAX_OFFSET};

/// The footer's POSIX TZ string: standard time and, optionally, a yearly DST rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Posix {
    pub(super) std: LocalType,
    pub(super) dst: Option<DstRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DstRule {
    pub(super) dst: LocalType,
    /// When DST starts (local standard time) and ends (local daylight time).
    pub(super) start: (RuleDay, i32),
    pub(super) end: (RuleDay, i32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RuleDay {
    /// `Jn`: day 1–365, February 29 never counted.
    Julian1(u16),
    /// `n`: day 0–365, February 29 counted in leap years.
    Julian0(u16),
    /// `Mm.w.d`: weekday `d` (0 = Sunday) of week `w` (1–5, 5 = the last) of month `m`.
    Month { month: u8, week: u8, weekday: u8 },
}

impl Posix {
    pub(super) fn at(&self, t: i64) -> LocalType {
        let Some(rule) = &self.dst else {
            return self.std.clone();
        };
        let year = year_of(t + i64::from(self.std.offset));
        let (start, end) = rule.instants(year, &self.std);
        let in_dst = if start < end {
            start <= t && t < end
        } else {
            // Southern hemisphere: DST spans the new year.
            !(end <= t && t < start)
        };
        if in_dst {
            rule.dst.clone()
        } else {
            self.std.clone()
        }
    }

    pub(super) fn next_transition(&self, t: i64) -> Option<i64> {
        let rule = self.dst.as_ref()?;
        let year = year_of(t);
        (year - 1..=year + 1)
            .flat_map(|y| {
                let (start, end) = rule.instants(y, &self.std);
                [start, end]
            })
            .filter(|&at| at > t)
            .min()
    }
}

impl DstRule {
    /// The UTC instants at which DST starts and ends in `year`.
    fn instants(&self, year: i32, std: &LocalType) -> (i64, i64) {
        let start = day_start(year, self.start.0) + i64::from(self.start.1) - i64::from(std.offset);
        let end = day_start(year, self.end.0) + i64::from(self.end.1) - i64::from(self.dst.offset);
        (start, end)
    }
}

/// The year (UTC calendar) of the POSIX second `t`, clamped to chrono's range.
fn year_of(t: i64) -> i32 {
    DateTime::<Utc>::from_timestamp(t, 0)
        .map_or(if t < 0 { -262_000 } else { 262_000 }, |d| d.year())
}

/// Seconds from the epoch to 00:00 of the rule's day in `year` (as if UTC).
pub(super) fn day_start(year: i32, day: RuleDay) -> i64 {
    let jan1 = NaiveDate::from_ymd_opt(year, 1, 1).unwrap_or_default();
    let leap = NaiveDate::from_ymd_opt(year, 2, 29).is_some();
    let date = match day {
        RuleDay::Julian1(n) => {
            let skip_leap_day = leap && n >= 60;
            jan1 + chrono::Days::new(u64::from(n) - 1 + u64::from(skip_leap_day))
        }
        RuleDay::Julian0(n) => jan1 + chrono::Days::new(u64::from(n)),
        RuleDay::Month {
            month,
            week,
            weekday,
        } => {
            let first = NaiveDate::from_ymd_opt(year, u32::from(month), 1).unwrap_or(jan1);
            let first_weekday = first.weekday().num_days_from_sunday();
            let mut day =
                1 + (u32::from(weekday) + 7 - first_weekday) % 7 + 7 * (u32::from(week) - 1);
            let days_in_month = first
                .checked_add_months(chrono::Months::new(1))
                .map_or(31, |next| (next - first).num_days() as u32);
            while day > days_in_month {
                day -= 7;
            }
            first + chrono::Days::new(u64::from(day - 1))
        }
    };
    date.and_time(NaiveTime::MIN).and_utc().timestamp()
}

/// A POSIX TZ string as in TZif footers: `CET-1CEST,M3.5.0,M10.5.0/3`,
/// `<+0330>-3:30`, `EST5EDT,M3.2.0,M11.1.0`.
pub(super) fn parse_posix(text: &str) -> Result<Posix, String> {
    let mut cursor = Cursor { text, at: 0 };
    let std_abbr = cursor.abbreviation()?;
    let std_offset = -cursor.time(false)?;
    let std = LocalType {
        offset: std_offset,
        dst: false,
        abbr: std_abbr.into(),
    };
    if cursor.done() {
        return Ok(Posix { std, dst: None });
    }
    let dst_abbr = cursor.abbreviation()?;
    let dst_offset = if cursor.peek() == Some(b',') || cursor.done() {
        std_offset + 3600
    } else {
        -cursor.time(false)?
    };
    // Without a rule POSIX leaves the dates to the implementation; zic always writes one.
    let (start, end) = if cursor.done() {
        (
            (
                RuleDay::Month {
                    month: 3,
                    week: 2,
                    weekday: 0,
                },
                7200,
            ),
            (
                RuleDay::Month {
                    month: 11,
                    week: 1,
                    weekday: 0,
                },
                7200,
            ),
        )
    } else {
        cursor.expect(b',')?;
        let start = cursor.rule()?;
        cursor.expect(b',')?;
        let end = cursor.rule()?;
        (start, end)
    };
    if !cursor.done() {
        return Err(format!("unexpected {:?}", &text[cursor.at..]));
    }
    if !(-MAX_OFFSET..=MAX_OFFSET).contains(&std_offset)
        || !(-MAX_OFFSET..=MAX_OFFSET).contains(&dst_offset)
    {
        return Err("offset out of range".into());
    }
    Ok(Posix {
        std,
        dst: Some(DstRule {
            dst: LocalType {
                offset: dst_offset,
                dst: true,
                abbr: dst_abbr.into(),
            },
            start,
            end,
        }),
    })
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.at >= self.text.len()
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", byte as char, self.at))
        }
    }

    fn abbreviation(&mut self) -> Result<String, String> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        if self.peek() == Some(b'<') {
            let close = self.text[start..]
                .find('>')
                .ok_or("unclosed < in an abbreviation")?;
            self.at = start + close + 1;
            return Ok(self.text[start + 1..start + close].to_string());
        }
        while self.at < bytes.len() && bytes[self.at].is_ascii_alphabetic() {
            self.at += 1;
        }
        if self.at - start < 3 {
            return Err(format!("abbreviation too short at {start}"));
        }
        Ok(self.text[start..self.at].to_string())
    }

    fn number(&mut self, max_digits: usize) -> Result<i32, String> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        while self.at < bytes.len()
            && bytes[self.at].is_ascii_digit()
            && self.at - start < max_digits
        {
            self.at += 1;
        }
        self.text[start..self.at]
            .parse()
            .map_err(|_| format!("expected a number at {start}"))
    }

    /// `[+-]hh[:mm[:ss]]` in seconds; hours up to 167 for rule times (TZif v3).
    fn time(&mut self, rule: bool) -> Result<i32, String> {
        let sign = match self.peek() {
            Some(b'-') => {
                self.at += 1;
                -1
            }
            Some(b'+') => {
                self.at += 1;
                1
            }
            _ => 1,
        };
        let hours = self.number(3)?;
        if hours > if rule { 167 } else { 24 } {
            return Err(format!("{hours} hours is out of range"));
        }
        let mut seconds = hours * 3600;
        for unit in [60, 1] {
            if self.peek() != Some(b':') {
                break;
            }
            self.at += 1;
            let part = self.number(2)?;
            if part > 59 {
                return Err(format!("{part} is out of range"));
            }
            seconds += part * unit;
        }
        Ok(sign * seconds)
    }

    /// `date[/time]`.
    fn rule(&mut self) -> Result<(RuleDay, i32), String> {
        let day = match self.peek() {
            Some(b'J') => {
                self.at += 1;
                let n = self.number(3)?;
                if !(1..=365).contains(&n) {
                    return Err(format!("J{n} is out of range"));
                }
                RuleDay::Julian1(n as u16)
            }
            Some(b'M') => {
                self.at += 1;
                let month = self.number(2)?;
                self.expect(b'.')?;
                let week = self.number(1)?;
                self.expect(b'.')?;
                let weekday = self.number(1)?;
                if !(1..=12).contains(&month) || !(1..=5).contains(&week) || weekday > 6 {
                    return Err(format!("M{month}.{week}.{weekday} is out of range"));
                }
                RuleDay::Month {
                    month: month as u8,
                    week: week as u8,
                    weekday: weekday as u8,
                }
            }
            _ => {
                let n = self.number(3)?;
                if !(0..=365).contains(&n) {
                    return Err(format!("day {n} is out of range"));
                }
                RuleDay::Julian0(n as u16)
            }
        };
        let time = if self.peek() == Some(b'/') {
            self.at += 1;
            self.time(true)?
        } else {
            7200
        };
        Ok((day, time))
    }
}
