//! Time zones of `cron` triggers, read at run time from the system's zoneinfo database.
//!
//! The agent used to compile the whole IANA database in (chrono-tz: most of its 2.3 MB
//! `.rodata`, which kept the static binary over its 8 MiB budget). A device instead reads the
//! one zone a trigger names from `$TZDIR` (default [`DEFAULT_ZONEINFO`],
//! `/usr/share/zoneinfo`, the `tzdata` package) when the workflow is validated and when the
//! trigger starts. So:
//! - `UTC` (the default), `Etc/UTC`, `GMT`, `Etc/GMT` and the fixed `Etc/GMT+N` / `Etc/GMT-N`
//!   zones (POSIX signs: `Etc/GMT+5` is UTC−5) need no file;
//! - any other name needs its file; a name the device does not have is a validation error
//!   (with a suggestion from the names present), and a device without the database says so.
//!
//! Files are TZif (RFC 8536) versions 1 to 4: the 64-bit data block of version 2+ files, and
//! the POSIX TZ string of their footer for instants after the last transition, which is what
//! "slim" files (zic `-b slim`) rely on for every future DST change. Leap-second records
//! (`right/…` zones) are skipped: cron ticks count POSIX seconds.
//!
//! [`Zone`] implements chrono's [`TimeZone`], so the cron crate walks schedules in it. A local
//! time in a DST gap has no instant ([`chrono::LocalResult::None`]: the cron crate skips such a
//! tick) and one in a repeated hour has two (`Ambiguous`: the cron crate fires both), as with
//! chrono-tz before.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone};

use posix::{Posix, parse_posix};

/// Where the zone files are when `TZDIR` is not set.
pub const DEFAULT_ZONEINFO: &str = "/usr/share/zoneinfo";
/// Largest zone file read (the biggest IANA files are ~4 KB).
const MAX_FILE: u64 = 256 * 1024;
/// UTC offsets beyond ±26 h are refused (RFC 8536 allows −25:59:59 … +25:59:59).
const MAX_OFFSET: i32 = 26 * 3600;

/// Why a zone could not be had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneError {
    #[error("{0:?} is not a time zone name (IANA names look like Europe/Paris; UTC needs no file)")]
    BadName(String),
    #[error("unknown time zone {name:?}: this device has no {path}")]
    NotFound { name: String, path: String },
    #[error(
        "time zone {name:?}: this device has no time zone database at {dir} (install the tzdata package, or set TZDIR); UTC and Etc/GMT±N work without it"
    )]
    NoDatabase { name: String, dir: String },
    #[error("time zone {name:?}: {path}: {reason}")]
    Invalid {
        name: String,
        path: String,
        reason: String,
    },
}

/// The zoneinfo folder: `$TZDIR` when set and not empty, else [`DEFAULT_ZONEINFO`].
pub fn zoneinfo_dir() -> PathBuf {
    match std::env::var_os("TZDIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_ZONEINFO),
    }
}

/// A time zone: transitions and local time types of one TZif file (or a fixed offset).
#[derive(Clone)]
pub struct Zone(Arc<Rules>);

struct Rules {
    name: String,
    /// UTC instants (seconds) at which `types[index]` starts, ascending.
    transitions: Vec<(i64, u8)>,
    /// `types[0]` is in force before the first transition.
    types: Vec<LocalType>,
    /// After the last transition (or always, without transitions).
    footer: Option<Posix>,
}

/// An offset from UTC with its abbreviation (`CET`, `CEST`, `+0530`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct LocalType {
    /// Seconds east of UTC.
    offset: i32,
    dst: bool,
    abbr: Arc<str>,
}

impl Zone {
    /// The zone named `name`, from [`zoneinfo_dir`] unless it needs no file.
    pub fn named(name: &str) -> Result<Zone, ZoneError> {
        Zone::named_in(name, &zoneinfo_dir())
    }

    /// The zone named `name` from the folder `dir`.
    pub fn named_in(name: &str, dir: &Path) -> Result<Zone, ZoneError> {
        if let Some(offset) = fixed_zone(name) {
            return Ok(Zone::fixed(name, offset));
        }
        let valid = !name.is_empty()
            && name.len() <= 255
            && !name.starts_with('/')
            && name
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..")
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'));
        if !valid {
            return Err(ZoneError::BadName(name.to_string()));
        }
        let path = dir.join(name);
        let shown = path.display().to_string();
        let bytes = match read_small(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(if dir.is_dir() {
                    ZoneError::NotFound {
                        name: name.to_string(),
                        path: shown,
                    }
                } else {
                    ZoneError::NoDatabase {
                        name: name.to_string(),
                        dir: dir.display().to_string(),
                    }
                });
            }
            Err(error) => {
                return Err(ZoneError::Invalid {
                    name: name.to_string(),
                    path: shown,
                    reason: error.to_string(),
                });
            }
        };
        Zone::from_tzif(name, &bytes).map_err(|reason| ZoneError::Invalid {
            name: name.to_string(),
            path: shown,
            reason,
        })
    }

    /// A zone from the bytes of a TZif file.
    pub fn from_tzif(name: &str, bytes: &[u8]) -> Result<Zone, String> {
        let rules = parse_tzif(name, bytes)?;
        Ok(Zone(Arc::new(rules)))
    }

    fn fixed(name: &str, offset: i32) -> Zone {
        let abbr = if offset == 0 {
            name.rsplit('/').next().unwrap_or(name).to_string()
        } else {
            format_offset(offset)
        };
        Zone(Arc::new(Rules {
            name: name.to_string(),
            transitions: Vec::new(),
            types: vec![LocalType {
                offset,
                dst: false,
                abbr: abbr.into(),
            }],
            footer: None,
        }))
    }

    /// The name it was loaded by.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    fn offset_for(&self, local: LocalType) -> ZoneOffset {
        ZoneOffset {
            zone: self.clone(),
            local,
        }
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.name)
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.name == other.0.name
    }
}

/// The offset of a [`Zone`] at some instant.
#[derive(Clone)]
pub struct ZoneOffset {
    zone: Zone,
    local: LocalType,
}

impl ZoneOffset {
    /// The abbreviation in force (`CET`, `CEST`).
    pub fn abbreviation(&self) -> &str {
        &self.local.abbr
    }

    pub fn is_dst(&self) -> bool {
        self.local.dst
    }
}

impl Offset for ZoneOffset {
    fn fix(&self) -> FixedOffset {
        FixedOffset::east_opt(self.local.offset)
            .unwrap_or_else(|| FixedOffset::east_opt(0).unwrap())
    }
}

impl fmt::Debug for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.local.abbr)
    }
}

impl fmt::Display for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.local.abbr)
    }
}

impl TimeZone for Zone {
    type Offset = ZoneOffset;

    fn from_offset(offset: &ZoneOffset) -> Zone {
        offset.zone.clone()
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> LocalResult<ZoneOffset> {
        self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
    }

    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> LocalResult<ZoneOffset> {
        self.0
            .types_for_local(local.and_utc().timestamp())
            .map(|local| self.offset_for(local))
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> ZoneOffset {
        self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> ZoneOffset {
        self.offset_for(self.0.at(utc.and_utc().timestamp()))
    }
}

impl Rules {
    /// The local time type in force at the UTC instant `t`.
    fn at(&self, t: i64) -> LocalType {
        match self.transitions.last() {
            Some(&(last, _)) if t >= last => {
                if let Some(footer) = &self.footer {
                    return footer.at(t);
                }
            }
            None => {
                if let Some(footer) = &self.footer {
                    return footer.at(t);
                }
                return self.types[0].clone();
            }
            Some(_) => {}
        }
        let after = self.transitions.partition_point(|&(at, _)| at <= t);
        match after.checked_sub(1) {
            None => self.types[0].clone(),
            Some(i) => self.types[usize::from(self.transitions[i].1)].clone(),
        }
    }

    /// The first change of local time type strictly after `t`, if any.
    fn next_transition(&self, t: i64) -> Option<i64> {
        let after = self.transitions.partition_point(|&(at, _)| at <= t);
        if let Some(&(at, _)) = self.transitions.get(after) {
            return Some(at);
        }
        self.footer.as_ref()?.next_transition(t)
    }

    /// The local time types that make the local wall-clock second `local` real.
    fn types_for_local(&self, local: i64) -> LocalResult<LocalType> {
        // Every instant that can show `local` lies within ±MAX_OFFSET of it: collect the
        // types in force over that window and keep those that map back onto `local`.
        let low = local - i64::from(MAX_OFFSET) - 3600;
        let high = local + i64::from(MAX_OFFSET) + 3600;
        let mut candidates = vec![self.at(low)];
        let mut cursor = low;
        while let Some(next) = self.next_transition(cursor) {
            if next > high || candidates.len() > 64 {
                break;
            }
            candidates.push(self.at(next));
            cursor = next;
        }
        let mut found: Vec<(i64, LocalType)> = Vec::with_capacity(2);
        for candidate in candidates {
            let instant = local - i64::from(candidate.offset);
            let actual = self.at(instant);
            if actual.offset == candidate.offset && !found.iter().any(|(at, _)| *at == instant) {
                found.push((instant, actual));
            }
        }
        found.sort_by_key(|(at, _)| *at);
        let mut found = found.into_iter().map(|(_, local)| local);
        match (found.next(), found.next_back()) {
            (None, _) => LocalResult::None,
            (Some(only), None) => LocalResult::Single(only),
            (Some(first), Some(last)) => LocalResult::Ambiguous(first, last),
        }
    }
}

/// `UTC`, `GMT` and `Etc/GMT±N`: fixed offsets known without files.
fn fixed_zone(name: &str) -> Option<i32> {
    let name = name.strip_prefix("Etc/").unwrap_or(name);
    match name {
        "UTC" | "GMT" | "UCT" | "Zulu" | "Universal" | "Greenwich" | "GMT0" | "GMT+0" | "GMT-0" => {
            return Some(0);
        }
        _ => {}
    }
    let rest = name.strip_prefix("GMT")?;
    let (sign, hours) = match rest.as_bytes().first()? {
        b'+' => (-1, &rest[1..]),
        b'-' => (1, &rest[1..]),
        _ => return None,
    };
    if hours.is_empty() || hours.len() > 2 || !hours.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = hours.parse().ok()?;
    // The IANA database has Etc/GMT-14 … Etc/GMT+12.
    let east = sign * hours;
    (-12..=14).contains(&east).then_some(east * 3600)
}

/// `+05:30` style, for abbreviations of fixed zones.
fn format_offset(offset: i32) -> String {
    let sign = if offset < 0 { '-' } else { '+' };
    let offset = offset.unsigned_abs();
    format!("{sign}{:02}:{:02}", offset / 3600, offset % 3600 / 60)
}

fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "a folder, not a zone",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other("larger than any zone file"));
    }
    Ok(bytes)
}

/// Counts of one TZif header.
struct Header {
    version: u8,
    isutcnt: usize,
    isstdcnt: usize,
    leapcnt: usize,
    timecnt: usize,
    typecnt: usize,
    charcnt: usize,
}

const HEADER_LEN: usize = 44;

fn header(bytes: &[u8]) -> Result<Header, String> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != b"TZif" {
        return Err("not a TZif file".into());
    }
    let count = |i: usize| {
        let at = 20 + 4 * i;
        u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
    };
    let header = Header {
        version: bytes[4],
        isutcnt: count(0),
        isstdcnt: count(1),
        leapcnt: count(2),
        timecnt: count(3),
        typecnt: count(4),
        charcnt: count(5),
    };
    if !matches!(header.version, 0 | b'2' | b'3' | b'4') {
        return Err(format!("unknown TZif version {:?}", header.version));
    }
    if header.typecnt == 0 || header.typecnt > 256 || header.charcnt == 0 {
        return Err("no local time types".into());
    }
    if (header.isutcnt != 0 && header.isutcnt != header.typecnt)
        || (header.isstdcnt != 0 && header.isstdcnt != header.typecnt)
    {
        return Err("inconsistent counts in the header".into());
    }
    Ok(header)
}

impl Header {
    /// Length of the data block after the header, with `time` bytes per timestamp.
    fn data_len(&self, time: usize) -> usize {
        self.timecnt * time
            + self.timecnt
            + self.typecnt * 6
            + self.charcnt
            + self.leapcnt * (time + 4)
            + self.isstdcnt
            + self.isutcnt
    }
}

fn parse_tzif(name: &str, bytes: &[u8]) -> Result<Rules, String> {
    let first = header(bytes)?;
    let v1_end = HEADER_LEN
        .checked_add(first.data_len(4))
        .filter(|&end| end <= bytes.len())
        .ok_or("truncated")?;
    let (head, data, time_len, rest) = if first.version == 0 {
        (first, &bytes[HEADER_LEN..v1_end], 4, &[][..])
    } else {
        let second = header(&bytes[v1_end..])?;
        let start = v1_end + HEADER_LEN;
        let end = start
            .checked_add(second.data_len(8))
            .filter(|&end| end <= bytes.len())
            .ok_or("truncated")?;
        (second, &bytes[start..end], 8, &bytes[end..])
    };
    let times = &data[..head.timecnt * time_len];
    let indices = &data[head.timecnt * time_len..head.timecnt * (time_len + 1)];
    let types_at = head.timecnt * (time_len + 1);
    let type_bytes = &data[types_at..types_at + head.typecnt * 6];
    let chars = &data[types_at + head.typecnt * 6..types_at + head.typecnt * 6 + head.charcnt];

    let mut types = Vec::with_capacity(head.typecnt);
    for record in type_bytes.chunks_exact(6) {
        let offset = i32::from_be_bytes([record[0], record[1], record[2], record[3]]);
        if !(-MAX_OFFSET..=MAX_OFFSET).contains(&offset) {
            return Err(format!("UTC offset {offset} s out of range"));
        }
        let dst = match record[4] {
            0 => false,
            1 => true,
            other => return Err(format!("bad DST flag {other}")),
        };
        let at = usize::from(record[5]);
        let abbr = chars
            .get(at..)
            .and_then(|tail| tail.split(|&b| b == 0).next())
            .filter(|_| at < chars.len())
            .ok_or("abbreviation index out of range")?;
        types.push(LocalType {
            offset,
            dst,
            abbr: String::from_utf8_lossy(abbr).into(),
        });
    }
    let mut transitions = Vec::with_capacity(head.timecnt);
    for (i, &index) in indices.iter().enumerate() {
        let at = if time_len == 8 {
            i64::from_be_bytes(times[i * 8..i * 8 + 8].try_into().unwrap_or_default())
        } else {
            i64::from(i32::from_be_bytes(
                times[i * 4..i * 4 + 4].try_into().unwrap_or_default(),
            ))
        };
        if usize::from(index) >= types.len() {
            return Err(format!(
                "transition {i} names type {index} of {}",
                types.len()
            ));
        }
        if transitions.last().is_some_and(|&(before, _)| at <= before) {
            return Err("transitions out of order".into());
        }
        transitions.push((at, index));
    }
    let footer = if head.version == 0 {
        None
    } else {
        let text = rest
            .strip_prefix(b"\n")
            .and_then(|r| r.split(|&b| b == b'\n').next())
            .filter(|_| rest.len() > 1 && rest[1..].contains(&b'\n'))
            .ok_or("the footer is missing")?;
        let text = std::str::from_utf8(text).map_err(|_| "the footer is not text")?;
        if text.is_empty() {
            None
        } else {
            Some(parse_posix(text).map_err(|e| format!("footer {text:?}: {e}"))?)
        }
    };
    Ok(Rules {
        name: name.to_string(),
        transitions,
        types,
        footer,
    })
}

/// Zone names present in `dir` (for "did you mean" suggestions): files that start like TZif,
/// without the `posix/` and `right/` copies.
pub fn zone_names(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, depth: usize, names: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let name = format!("{prefix}{file_name}");
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if depth < 3 && !matches!(file_name, "posix" | "right") {
                    walk(&entry.path(), &format!("{name}/"), depth + 1, names);
                }
            } else if file_name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_uppercase())
            {
                let mut magic = [0u8; 4];
                let is_zone = std::fs::File::open(entry.path())
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                    .is_ok_and(|()| &magic == b"TZif");
                if is_zone {
                    names.push(name);
                }
            }
        }
    }
    let mut names = Vec::new();
    walk(dir, "", 0, &mut names);
    names.sort();
    names
}

#[path = "cron_tz_posix.rs"]
mod posix;

#[cfg(test)]
#[path = "cron_tz_tests.rs"]
mod tests;
