//! Slack's search query syntax, parsed into its parts (no I/O).
//!
//! Supported: free words (all must match), `"quoted phrases"`, `-word` exclusion,
//! `in:#channel` / `in:C123` / `in:<#C123|name>`, `from:@user` / `from:U123` / `from:<@U123>`,
//! `before:YYYY-MM-DD`, `after:YYYY-MM-DD`, `on:YYYY-MM-DD` (also `today`, `yesterday`),
//! `during:` a day (as `on:`), a month (`YYYY-MM`, or its name: the latest such month that
//! has begun) or a year (`YYYY`), `has:link`, `has:pin`, `has::name:` (messages with that
//! reaction), `hasmy::name:` (messages the caller reacted to so), `is:thread` (thread replies), `in:@user` (the
//! direct message with that user) and `to:@user` / `to:me` (direct messages sent to that
//! user: in a direct conversation of theirs, by someone else). `from:me` and `to:me` name the
//! caller. Dates are UTC days; `before` and `after` are exclusive, like Slack's.

use crate::ids::Ts;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedQuery {
    pub words: Vec<String>,
    pub phrases: Vec<String>,
    pub excluded: Vec<String>,
    /// Channel references as written, without `#`/`<#…>` decoration: ids or names.
    pub in_channels: Vec<String>,
    /// User references as written, without `@`/`<@…>` decoration: ids or names (`me`: the
    /// caller).
    pub from_users: Vec<String>,
    /// `in:@user`: the direct messages with these users, as written (ids or names).
    pub in_users: Vec<String>,
    /// `to:@user`: direct messages sent to these users (ids, names or `me`).
    pub to_users: Vec<String>,
    /// `is:thread`: only thread replies.
    pub is_thread: bool,
    /// Messages strictly after this instant.
    pub after: Option<Ts>,
    /// Messages strictly before this instant.
    pub before: Option<Ts>,
    pub has_link: bool,
    /// `has:pin`: only messages pinned to their channel.
    pub has_pin: bool,
    /// `has::name:`: only messages with each of these reactions (names without colons).
    pub has_reactions: Vec<String>,
    /// `hasmy::name:`: only messages the caller reacted to with each of these.
    pub my_reactions: Vec<String>,
}

/// The reaction name of `:name:` (as in `has::tada:`): without its colons, in emoji-name
/// characters (a skin tone's `::` included).
fn reaction_of(v: &str) -> Option<String> {
    let name = v.strip_prefix(':')?.strip_suffix(':')?;
    crate::protocol::is_emoji_name(name, false).then(|| name.to_string())
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query is empty")]
    Empty,
    #[error("the query is too long")]
    TooLong,
    #[error("invalid date {0:?} (expected YYYY-MM-DD)")]
    BadDate(String),
    #[error("invalid period {0:?} (expected a year YYYY, a month YYYY-MM or its name, a day YYYY-MM-DD, today or yesterday)")]
    BadPeriod(String),
    #[error("unsupported modifier {0:?}")]
    UnsupportedModifier(String),
    #[error("unterminated quote")]
    UnterminatedQuote,
}

const MAX_QUERY_LEN: usize = 1000;
const DAY_MICROS: u64 = 86_400 * 1_000_000;

/// Days since 1970-01-01 of a civil date (proleptic Gregorian), or `None` if invalid.
fn days_from_civil(y: i64, m: u32, d: u32) -> Option<i64> {
    if !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ][(m - 1) as usize];
    if d > dim {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The civil date `(year, month, day)` of a count of days since 1970-01-01 (the inverse of
/// [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// The span `[start, end)` that `during:` names: a day (`YYYY-MM-DD`, `today`,
/// `yesterday`), a month (`YYYY-MM`, or its name or first three letters: the latest such
/// month that has begun by `now`) or a year (`YYYY`), in UTC.
fn period(s: &str, now: Ts) -> Result<(Ts, Ts), QueryError> {
    let bad = || QueryError::BadPeriod(s.to_string());
    let lower = s.to_ascii_lowercase();
    let span = |from: Option<i64>, to: Option<i64>| match (from, to) {
        (Some(from), Some(to)) if from >= 0 => {
            Ok((Ts(from as u64 * DAY_MICROS), Ts(to as u64 * DAY_MICROS)))
        }
        _ => Err(bad()),
    };
    let month = |y: i64, m: u32| {
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        span(days_from_civil(y, m, 1), days_from_civil(ny, nm, 1))
    };
    if lower == "today" || lower == "yesterday" || lower.matches('-').count() == 2 {
        let start = day_start(&lower, now).map_err(|_| bad())?;
        return Ok((start, Ts(start.0 + DAY_MICROS)));
    }
    if let Some(i) = MONTHS
        .iter()
        .position(|name| lower == *name || (lower.len() == 3 && name.starts_with(&lower)))
    {
        let (year, this_month, _) = civil_from_days((now.0 / DAY_MICROS) as i64);
        let m = i as u32 + 1;
        return month(if m <= this_month { year } else { year - 1 }, m);
    }
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    match lower.split_once('-') {
        Some((y, m)) if y.len() == 4 && digits(y) && m.len() <= 2 && digits(m) => {
            month(y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?)
        }
        None if lower.len() == 4 && digits(&lower) => {
            let y: i64 = lower.parse().map_err(|_| bad())?;
            span(days_from_civil(y, 1, 1), days_from_civil(y + 1, 1, 1))
        }
        _ => Err(bad()),
    }
}

/// The start of the UTC day named by `s`, as a [`Ts`].
fn day_start(s: &str, now: Ts) -> Result<Ts, QueryError> {
    let today = now.0 / DAY_MICROS * DAY_MICROS;
    match s {
        "today" => return Ok(Ts(today)),
        "yesterday" => return Ok(Ts(today.saturating_sub(DAY_MICROS))),
        _ => {}
    }
    let bad = || QueryError::BadDate(s.to_string());
    let mut parts = s.splitn(3, '-');
    let (y, m, d) = (
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    if y.len() != 4 || m.is_empty() || m.len() > 2 || d.is_empty() || d.len() > 2 {
        return Err(bad());
    }
    let (y, m, d): (i64, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    let days = days_from_civil(y, m, d).ok_or_else(bad)?;
    if days < 0 {
        return Err(bad());
    }
    Ok(Ts(days as u64 * DAY_MICROS))
}

fn strip_channel(v: &str) -> String {
    let v = v
        .strip_prefix("<#")
        .and_then(|r| r.strip_suffix('>'))
        .map(|r| r.split('|').next().unwrap_or(r))
        .unwrap_or(v);
    v.strip_prefix('#').unwrap_or(v).to_string()
}

fn strip_user(v: &str) -> String {
    let v = v
        .strip_prefix("<@")
        .and_then(|r| r.strip_suffix('>'))
        .map(|r| r.split('|').next().unwrap_or(r))
        .unwrap_or(v);
    v.strip_prefix('@').unwrap_or(v).to_string()
}

/// Splits a query into tokens, keeping quoted phrases whole.
fn tokens(q: &str) -> Result<Vec<(bool, String)>, QueryError> {
    let mut out = Vec::new();
    let mut chars = q.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '"' || c == '\u{201c}' {
            chars.next();
            let mut phrase = String::new();
            let mut closed = false;
            for c in chars.by_ref() {
                if c == '"' || c == '\u{201d}' {
                    closed = true;
                    break;
                }
                phrase.push(c);
            }
            if !closed {
                return Err(QueryError::UnterminatedQuote);
            }
            out.push((true, phrase));
            continue;
        }
        let mut word = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            word.push(c);
            chars.next();
        }
        out.push((false, word));
    }
    Ok(out)
}

/// Parses `q`; `now` resolves `today` and `yesterday`.
pub fn parse(q: &str, now: Ts) -> Result<ParsedQuery, QueryError> {
    if q.len() > MAX_QUERY_LEN {
        return Err(QueryError::TooLong);
    }
    let mut p = ParsedQuery::default();
    for (quoted, tok) in tokens(q)? {
        if quoted {
            if !tok.trim().is_empty() {
                p.phrases.push(tok);
            }
            continue;
        }
        if let Some(rest) = tok.strip_prefix('-') {
            if !rest.is_empty() {
                p.excluded.push(rest.to_string());
            }
            continue;
        }
        match tok.split_once(':') {
            Some(("in", v)) if v.starts_with('@') || v.starts_with("<@") => {
                p.in_users.push(strip_user(v))
            }
            Some(("in", v)) if !v.is_empty() => p.in_channels.push(strip_channel(v)),
            Some(("from", v)) if !v.is_empty() => p.from_users.push(strip_user(v)),
            Some(("to", v)) if !v.is_empty() => p.to_users.push(strip_user(v)),
            Some(("is", "thread")) => p.is_thread = true,
            Some(("before", v)) => p.before = Some(day_start(v, now)?),
            Some(("after", v)) => p.after = Some(Ts(day_start(v, now)?.0 + DAY_MICROS - 1)),
            Some(("on", v)) => {
                let start = day_start(v, now)?;
                p.after = Some(Ts(start.0.saturating_sub(1)));
                p.before = Some(Ts(start.0 + DAY_MICROS));
            }
            Some(("during", v)) => {
                let (start, end) = period(v, now)?;
                p.after = Some(Ts(start.0.saturating_sub(1)));
                p.before = Some(end);
            }
            Some(("has", "link")) => p.has_link = true,
            Some(("has", "pin")) => p.has_pin = true,
            Some(("has", v)) if reaction_of(v).is_some() => p.has_reactions.extend(reaction_of(v)),
            Some(("hasmy", v)) if reaction_of(v).is_some() => p.my_reactions.extend(reaction_of(v)),
            Some(("has" | "hasmy" | "is" | "to" | "with", _)) => {
                return Err(QueryError::UnsupportedModifier(tok))
            }
            _ => p.words.push(tok),
        }
    }
    let positive = !p.words.is_empty()
        || !p.phrases.is_empty()
        || !p.in_channels.is_empty()
        || !p.from_users.is_empty()
        || !p.in_users.is_empty()
        || !p.to_users.is_empty()
        || p.is_thread
        || p.has_link
        || p.has_pin
        || !p.has_reactions.is_empty()
        || !p.my_reactions.is_empty()
        || p.before.is_some()
        || p.after.is_some();
    if !positive {
        return Err(QueryError::Empty);
    }
    Ok(p)
}

/// Whether a message text contains a link, the way `has:link` means it.
pub fn has_link(text: &str) -> bool {
    text.contains("http://") || text.contains("https://") || text.contains("<http")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Ts = Ts(1_795_600_000_000_000);

    #[test]
    fn modifiers_and_words_parse() {
        let p = parse(r#"deploy "release train" -flaky in:#general from:@alice has:link after:2026-01-02 before:2026-01-05"#, NOW).unwrap();
        assert_eq!(p.words, vec!["deploy"]);
        assert_eq!(p.phrases, vec!["release train"]);
        assert_eq!(p.excluded, vec!["flaky"]);
        assert_eq!(p.in_channels, vec!["general"]);
        assert_eq!(p.from_users, vec!["alice"]);
        assert!(p.has_link);
        let jan2 = days_from_civil(2026, 1, 2).unwrap() as u64 * DAY_MICROS;
        let jan5 = days_from_civil(2026, 1, 5).unwrap() as u64 * DAY_MICROS;
        assert_eq!(p.after, Some(Ts(jan2 + DAY_MICROS - 1)));
        assert_eq!(p.before, Some(Ts(jan5)));
    }

    #[test]
    fn slack_link_forms_are_unwrapped() {
        let p = parse("in:<#C0123|general> from:<@U0456>", NOW).unwrap();
        assert_eq!(p.in_channels, vec!["C0123"]);
        assert_eq!(p.from_users, vec!["U0456"]);
    }

    #[test]
    fn direct_messages_and_threads_have_modifiers() {
        let p = parse(
            "in:@bob in:<@U0456|carol> to:me to:@dave from:me is:thread",
            NOW,
        )
        .unwrap();
        assert_eq!(p.in_users, vec!["bob", "U0456"]);
        assert!(p.in_channels.is_empty(), "a user is not a channel");
        assert_eq!(p.to_users, vec!["me", "dave"]);
        assert_eq!(p.from_users, vec!["me"]);
        assert!(p.is_thread);
        assert!(parse("has:pin deploy", NOW).unwrap().has_pin);
        let p = parse(
            "has::tada: hasmy::+1: has::thumbsup::skin-tone-2: vote",
            NOW,
        )
        .unwrap();
        assert_eq!(p.has_reactions, vec!["tada", "thumbsup::skin-tone-2"]);
        assert_eq!(p.my_reactions, vec!["+1"]);
        assert_eq!(p.words, vec!["vote"]);
        // Each is a search of its own, with no words.
        for q in [
            "in:@bob",
            "to:me",
            "is:thread",
            "has:pin",
            "has::eyes:",
            "hasmy::eyes:",
        ] {
            assert!(parse(q, NOW).is_ok(), "{q}");
        }
        for q in [
            "is:starred x",
            "is:",
            "to: x",
            "with:@bob x",
            "has:reaction x",
            "has::: x",
            "has::Tada: x",
            "hasmy:eyes x",
        ] {
            assert!(
                matches!(parse(q, NOW), Err(QueryError::UnsupportedModifier(_))),
                "{q}"
            );
        }
    }

    #[test]
    fn on_covers_one_day() {
        let p = parse("on:1970-01-02 x", NOW).unwrap();
        assert_eq!(p.after, Some(Ts(DAY_MICROS - 1)));
        assert_eq!(p.before, Some(Ts(2 * DAY_MICROS)));
    }

    #[test]
    fn during_covers_a_day_a_month_or_a_year() {
        let day = |y, m, d| days_from_civil(y, m, d).unwrap() as u64 * DAY_MICROS;
        let range = |q: &str| {
            let p = parse(&format!("x during:{q}"), NOW).unwrap();
            (p.after.unwrap().0 + 1, p.before.unwrap().0)
        };
        // NOW is 2026-11-25.
        assert_eq!(civil_from_days((NOW.0 / DAY_MICROS) as i64), (2026, 11, 25));
        assert_eq!(range("2026"), (day(2026, 1, 1), day(2027, 1, 1)));
        assert_eq!(range("2026-02"), (day(2026, 2, 1), day(2026, 3, 1)));
        assert_eq!(range("2024-2"), (day(2024, 2, 1), day(2024, 3, 1)));
        assert_eq!(range("2025-12"), (day(2025, 12, 1), day(2026, 1, 1)));
        assert_eq!(range("2026-11-03"), (day(2026, 11, 3), day(2026, 11, 4)));
        assert_eq!(range("today"), (day(2026, 11, 25), day(2026, 11, 26)));
        assert_eq!(range("Yesterday"), (day(2026, 11, 24), day(2026, 11, 25)));
        // A month's name: the latest that has begun (this one, or last year's).
        assert_eq!(range("november"), (day(2026, 11, 1), day(2026, 12, 1)));
        assert_eq!(range("March"), (day(2026, 3, 1), day(2026, 4, 1)));
        assert_eq!(range("dec"), (day(2025, 12, 1), day(2026, 1, 1)));
        assert_eq!(range("may"), (day(2026, 5, 1), day(2026, 6, 1)));
        for bad in [
            "2026-13",
            "20266",
            "soon",
            "1969",
            "2026-1x",
            "",
            "ju",
            "2026-02-30",
        ] {
            assert_eq!(
                parse(&format!("x during:{bad}"), NOW),
                Err(QueryError::BadPeriod(bad.to_string())),
                "{bad}"
            );
        }
        // Alone it is a whole query, like `on:`.
        assert!(parse("during:2026", NOW).is_ok());
    }

    #[test]
    fn days_map_back_to_their_dates() {
        for days in [
            -1_000_000, -1, 0, 1, 59, 11_016, 11_017, 19_782, 20_417, 2_000_000,
        ] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), Some(days), "{days}: {y}-{m}-{d}");
        }
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_civil(2024, 2, 29), Some(19_782));
        assert_eq!(days_from_civil(2023, 2, 29), None);
    }

    #[test]
    fn bad_queries_are_errors_not_panics() {
        assert_eq!(parse("", NOW), Err(QueryError::Empty));
        assert_eq!(parse("   -only", NOW), Err(QueryError::Empty));
        assert_eq!(
            parse("x before:2026-13-01", NOW),
            Err(QueryError::BadDate("2026-13-01".into()))
        );
        assert_eq!(
            parse("x before:soon", NOW),
            Err(QueryError::BadDate("soon".into()))
        );
        assert_eq!(parse("\"open", NOW), Err(QueryError::UnterminatedQuote));
        assert!(matches!(
            parse("has:star x", NOW),
            Err(QueryError::UnsupportedModifier(_))
        ));
        assert_eq!(parse(&"x".repeat(2000), NOW), Err(QueryError::TooLong));
        assert!(parse("ü \u{201c}smart quotes\u{201d}", NOW).is_ok());
    }

    #[test]
    fn links_are_detected() {
        assert!(has_link("see https://example.com"));
        assert!(has_link("<http://x|x>"));
        assert!(!has_link("no link here"));
    }
}
