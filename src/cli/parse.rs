//! Value parsers of the flags: each turns one flag's text into its value, or says what is wrong with
//! an example of what to write (clap puts the flag's name in front).

use std::time::Duration;

use crate::core::emoji::{EmojiSet, SkinTones};
use crate::core::scale::ScaleRule;

/// Parses a duration such as `500ms`, `2s` or `1m`.
///
/// # Errors
/// A message with an example when the value is not a duration.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (write e.g. 500ms, 2s or 1m)"))
}

/// Parses a byte size such as `65536`, `64KiB` or `4MiB`.
///
/// # Errors
/// A message when the value is not a size.
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: usize = n.parse().map_err(|_| format!("{s:?} is not a size (write e.g. 65536, 64KiB or 4MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("unknown unit in {s:?} (use B, KiB or MiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

pub(crate) fn parse_scale(s: &str) -> Result<ScaleRule, String> {
    s.parse::<ScaleRule>().map_err(|e| e.to_string())
}

/// Kept as given: `--skin-tones` (which clap cannot show this parser) folds them afterwards, in
/// [`IngestFlags::emoji_set`].
pub(crate) fn parse_emojis(s: &str) -> Result<EmojiSet, String> {
    EmojiSet::parse_list_with(s, SkinTones::Keep).map_err(|e| e.to_string())
}

pub(crate) fn parse_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err(format!("{s} is out of range: windows are 10ms to 1h"));
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("{s} is not a whole number of milliseconds"));
    }
    Ok(d)
}

pub(crate) fn parse_brokers(s: &str) -> Result<String, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a list of Kafka brokers (write host:port, or host:port,host:port)");
    if s.is_empty() {
        return Err(bad());
    }
    for b in s.split(',') {
        let (host, port) = b.trim().rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(bad());
        }
    }
    Ok(s.to_string())
}

pub(crate) fn parse_url(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    if (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len() {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} must be an http:// or https:// URL, e.g. http://10.0.0.7:5101"))
    }
}


/// Parses an instance id: 1-100 characters of letters, digits, `.`, `_` and `-`.
///
/// # Errors
/// A message naming the characters allowed.
pub(crate) fn parse_instance_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty() && s.len() <= 100 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} must be 1-100 characters of letters, digits, '.', '_' and '-', e.g. aggregate-2"))
    }
}


pub(crate) fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s} must be longer than zero"));
    }
    Ok(d)
}


pub(crate) fn parse_positive_f64(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("{s:?} must be a positive number")),
    }
}

pub(crate) fn parse_alpha(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!("{s:?} must be a number in (0, 1]")),
    }
}
