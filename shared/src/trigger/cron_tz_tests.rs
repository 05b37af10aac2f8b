//! Tests of [`super::Zone`] against the machine's real zoneinfo files (the `tzdata` package)
//! and against hand-built TZif bytes.

use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDate, Offset, TimeZone, Utc};

use super::posix::{RuleDay, day_start};
use super::*;

fn real(name: &str) -> Zone {
    Zone::named(name).unwrap_or_else(|e| panic!("{name}: {e} (the tests need tzdata installed)"))
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// The UTC offset in force at `at`, in hours (fractions for :30 zones).
fn offset_hours(zone: &Zone, at: DateTime<Utc>) -> f64 {
    f64::from(at.with_timezone(zone).offset().fix().local_minus_utc()) / 3600.0
}

#[test]
fn paris_changes_at_the_eu_instants() {
    let paris = real("Europe/Paris");
    // 2026: summer time from 29 March 01:00 UTC to 25 October 01:00 UTC.
    assert_eq!(offset_hours(&paris, utc(2026, 3, 29, 0, 59)), 1.0);
    assert_eq!(offset_hours(&paris, utc(2026, 3, 29, 1, 0)), 2.0);
    assert_eq!(offset_hours(&paris, utc(2026, 10, 25, 0, 59)), 2.0);
    assert_eq!(offset_hours(&paris, utc(2026, 10, 25, 1, 0)), 1.0);
    let summer = utc(2026, 7, 1, 12, 0).with_timezone(&paris);
    assert_eq!(summer.offset().abbreviation(), "CEST");
    assert!(summer.offset().is_dst());
    assert_eq!(summer.to_rfc3339(), "2026-07-01T14:00:00+02:00");
    // Far past the file's table (fat files stop at 2037): the footer's rule answers.
    assert_eq!(offset_hours(&paris, utc(2100, 7, 1, 0, 0)), 2.0);
    assert_eq!(offset_hours(&paris, utc(2100, 1, 1, 0, 0)), 1.0);
    assert_eq!(offset_hours(&paris, utc(2100, 3, 28, 0, 59)), 1.0);
    assert_eq!(offset_hours(&paris, utc(2100, 3, 28, 1, 0)), 2.0);
    // Before 1911 Paris kept its local mean time (+00:09:21).
    let old = utc(1900, 1, 1, 0, 0).with_timezone(&paris).offset().fix();
    assert_eq!(old.local_minus_utc(), 561);
}

#[test]
fn new_york_and_sydney_follow_their_own_rules() {
    let new_york = real("America/New_York");
    // 2026: EDT from 8 March 07:00 UTC to 1 November 06:00 UTC.
    assert_eq!(offset_hours(&new_york, utc(2026, 3, 8, 6, 59)), -5.0);
    assert_eq!(offset_hours(&new_york, utc(2026, 3, 8, 7, 0)), -4.0);
    assert_eq!(offset_hours(&new_york, utc(2026, 11, 1, 5, 59)), -4.0);
    assert_eq!(offset_hours(&new_york, utc(2026, 11, 1, 6, 0)), -5.0);
    let sydney = real("Australia/Sydney");
    // Southern hemisphere: AEDT ends 5 April 03:00 local, starts 4 October 02:00 local.
    assert_eq!(offset_hours(&sydney, utc(2026, 4, 4, 15, 59)), 11.0);
    assert_eq!(offset_hours(&sydney, utc(2026, 4, 4, 16, 0)), 10.0);
    assert_eq!(offset_hours(&sydney, utc(2026, 10, 3, 15, 59)), 10.0);
    assert_eq!(offset_hours(&sydney, utc(2026, 10, 3, 16, 0)), 11.0);
    assert_eq!(offset_hours(&sydney, utc(2150, 1, 15, 0, 0)), 11.0);
    assert_eq!(
        offset_hours(&real("Asia/Kolkata"), utc(2026, 6, 1, 0, 0)),
        5.5
    );
}

#[test]
fn local_times_in_a_gap_or_a_fold() {
    let paris = real("Europe/Paris");
    let local = |d: u32, mo: u32, h: u32, mi: u32| {
        NaiveDate::from_ymd_opt(2026, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, 0)
            .unwrap()
    };
    // 29 March 02:30 does not exist (02:00 → 03:00).
    assert!(matches!(
        paris.from_local_datetime(&local(29, 3, 2, 30)),
        LocalResult::None
    ));
    // 25 October 02:30 happens twice: first in CEST, then in CET.
    match paris.from_local_datetime(&local(25, 10, 2, 30)) {
        LocalResult::Ambiguous(first, second) => {
            assert_eq!(first.with_timezone(&Utc), utc(2026, 10, 25, 0, 30));
            assert_eq!(second.with_timezone(&Utc), utc(2026, 10, 25, 1, 30));
        }
        other => panic!("{other:?}"),
    }
    let single = paris
        .from_local_datetime(&local(1, 7, 9, 0))
        .single()
        .unwrap();
    assert_eq!(single.with_timezone(&Utc), utc(2026, 7, 1, 7, 0));
}

#[test]
fn a_cron_schedule_walks_across_dst_in_the_zone() {
    let paris = real("Europe/Paris");
    // Every day at 09:00 Paris: 08:00 UTC in winter, 07:00 UTC in summer.
    let daily = cron::Schedule::from_str("0 0 9 * * *").unwrap();
    let ticks: Vec<DateTime<Utc>> = daily
        .after(&utc(2026, 3, 27, 12, 0).with_timezone(&paris))
        .take(3)
        .map(|t| t.with_timezone(&Utc))
        .collect();
    assert_eq!(
        ticks,
        [
            utc(2026, 3, 28, 8, 0),
            utc(2026, 3, 29, 7, 0),
            utc(2026, 3, 30, 7, 0)
        ]
    );
    // 02:30 every day: skipped on the day it does not exist, twice on the day it repeats.
    let night = cron::Schedule::from_str("0 30 2 * * *").unwrap();
    let spring: Vec<DateTime<Utc>> = night
        .after(&utc(2026, 3, 28, 12, 0).with_timezone(&paris))
        .take(2)
        .map(|t| t.with_timezone(&Utc))
        .collect();
    assert_eq!(spring, [utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)]);
    let autumn: Vec<DateTime<Utc>> = night
        .after(&utc(2026, 10, 24, 12, 0).with_timezone(&paris))
        .take(3)
        .map(|t| t.with_timezone(&Utc))
        .collect();
    assert_eq!(
        autumn,
        [
            utc(2026, 10, 25, 0, 30),
            utc(2026, 10, 25, 1, 30),
            utc(2026, 10, 26, 1, 30)
        ]
    );
}

/// A version-2 TZif file with no transitions, one type and `footer`: what zic `-b slim`
/// writes for a zone whose rules the footer covers.
fn slim(footer: &str, offset: i32, abbr: &str) -> Vec<u8> {
    let mut chars = abbr.as_bytes().to_vec();
    chars.push(0);
    let header = |bytes: &mut Vec<u8>| {
        bytes.extend_from_slice(b"TZif2");
        bytes.extend_from_slice(&[0; 15]);
        for count in [0u32, 0, 0, 0, 1, chars.len() as u32] {
            bytes.extend_from_slice(&count.to_be_bytes());
        }
    };
    let mut bytes = Vec::new();
    for _ in 0..2 {
        header(&mut bytes);
        bytes.extend_from_slice(&offset.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&chars);
    }
    bytes.push(b'\n');
    bytes.extend_from_slice(footer.as_bytes());
    bytes.push(b'\n');
    bytes
}

#[test]
fn a_slim_file_agrees_with_the_real_one() {
    // The footer alone must give the same offsets as zic's table, hour by hour.
    for (name, footer, offset, abbr) in [
        ("Europe/Paris", "CET-1CEST,M3.5.0,M10.5.0/3", 3600, "CET"),
        ("America/New_York", "EST5EDT,M3.2.0,M11.1.0", -18000, "EST"),
        (
            "Australia/Sydney",
            "AEST-10AEDT,M10.1.0,M4.1.0/3",
            36000,
            "AEST",
        ),
        (
            "America/Santiago",
            "<-04>4<-03>,M9.1.6/24,M4.1.6/24",
            -14400,
            "-04",
        ),
    ] {
        let fat = real(name);
        let slim = Zone::from_tzif(name, &slim(footer, offset, abbr)).unwrap();
        let mut at = utc(2024, 1, 1, 0, 30);
        while at < utc(2028, 1, 1, 0, 0) {
            assert_eq!(
                offset_hours(&slim, at),
                offset_hours(&fat, at),
                "{name} at {at}"
            );
            at += chrono::Duration::minutes(60);
        }
    }
}

#[test]
fn posix_strings_in_every_form() {
    let iran = parse_posix("<+0330>-3:30").unwrap();
    assert_eq!(iran.std.offset, 3 * 3600 + 1800);
    assert_eq!(&*iran.std.abbr, "+0330");
    assert!(iran.dst.is_none());
    let julian = parse_posix("XST5XDT,J60/1,300").unwrap();
    let rule = julian.dst.unwrap();
    assert_eq!(rule.dst.offset, -4 * 3600, "DST defaults to one hour ahead");
    assert_eq!(rule.start, (RuleDay::Julian1(60), 3600));
    assert_eq!(rule.end, (RuleDay::Julian0(300), 7200));
    // J60 is 1 March in every year; day 59 (0-based) is 29 February in a leap year.
    assert_eq!(
        day_start(2028, RuleDay::Julian1(60)),
        utc(2028, 3, 1, 0, 0).timestamp()
    );
    assert_eq!(
        day_start(2028, RuleDay::Julian0(59)),
        utc(2028, 2, 29, 0, 0).timestamp()
    );
    // M10.5.0: the last Sunday of October.
    let last_sunday = RuleDay::Month {
        month: 10,
        week: 5,
        weekday: 0,
    };
    assert_eq!(
        day_start(2026, last_sunday),
        utc(2026, 10, 25, 0, 0).timestamp()
    );
    for bad in [
        "",
        "C",
        "CET",
        "CET-1CEST,M13.1.0,M10.5.0",
        "CET-1CEST,M3.5.0",
        "CET-1x",
    ] {
        assert!(parse_posix(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn utc_and_fixed_zones_need_no_files() {
    let nowhere = Path::new("/nonexistent/zoneinfo");
    let at = utc(2026, 7, 1, 12, 0);
    for (name, hours) in [
        ("UTC", 0.0),
        ("Etc/UTC", 0.0),
        ("GMT", 0.0),
        ("Etc/GMT+5", -5.0),
        ("Etc/GMT-14", 14.0),
    ] {
        let zone = Zone::named_in(name, nowhere).unwrap();
        assert_eq!(offset_hours(&zone, at), hours, "{name}");
        assert_eq!(zone.name(), name);
    }
    let zone = Zone::named_in("Etc/GMT+5", nowhere).unwrap();
    assert_eq!(
        at.with_timezone(&zone).to_rfc3339(),
        "2026-07-01T07:00:00-05:00"
    );
    assert!(matches!(
        Zone::named_in("Etc/GMT+13", nowhere),
        Err(ZoneError::NoDatabase { .. })
    ));
}

#[test]
fn missing_bad_and_corrupt_zones_are_clear_errors() {
    let dir = zoneinfo_dir();
    let error = Zone::named_in("Europe/Pariss", &dir).unwrap_err();
    assert!(matches!(error, ZoneError::NotFound { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("unknown time zone \"Europe/Pariss\"")
    );
    let error = Zone::named_in("Europe/Paris", Path::new("/nonexistent/zoneinfo")).unwrap_err();
    assert!(
        error.to_string().contains("install the tzdata package"),
        "{error}"
    );
    for bad in [
        "../../etc/passwd",
        "/etc/localtime",
        "Europe//Paris",
        "Europe/Paris ",
        "",
    ] {
        assert!(
            matches!(Zone::named_in(bad, &dir), Err(ZoneError::BadName(_))),
            "{bad:?}"
        );
    }
    // A folder is not a zone.
    assert!(matches!(
        Zone::named_in("Europe", &dir),
        Err(ZoneError::NotFound { .. })
    ));
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("Broken"), b"TZif2 not really").unwrap();
    let error = Zone::named_in("Broken", scratch.path()).unwrap_err();
    assert!(matches!(error, ZoneError::Invalid { .. }), "{error}");
}

#[test]
fn no_prefix_or_corruption_of_a_real_file_panics() {
    let bytes = std::fs::read(zoneinfo_dir().join("America/New_York")).unwrap();
    assert!(Zone::from_tzif("x", &bytes).is_ok());
    for len in 0..bytes.len() {
        // A version-2 file cut anywhere (even just before the footer's last newline) is refused.
        assert!(Zone::from_tzif("x", &bytes[..len]).is_err(), "cut at {len}");
    }
    let at = utc(2026, 1, 1, 0, 0);
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut corrupt = bytes.clone();
            corrupt[i] ^= flip;
            if let Ok(zone) = Zone::from_tzif("x", &corrupt) {
                // Whatever was read answers without panicking.
                let _ = at.with_timezone(&zone).to_rfc3339();
                let _ = zone.from_local_datetime(&at.naive_utc());
            }
        }
    }
}

#[test]
fn names_for_suggestions_come_from_the_folder() {
    let names = zone_names(&zoneinfo_dir());
    assert!(names.iter().any(|n| n == "Europe/Paris"), "{}", names.len());
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("posix/") && !n.starts_with("right/"))
    );
    assert!(zone_names(Path::new("/nonexistent/zoneinfo")).is_empty());
}
