//! One emoji reaction as a client sends it, parsed once and validated.
//!
//! Two field styles are accepted because both exist in the wild: `emoji` / `client_id` (the original
//! Python client) and `emoji_type` / `user_id` (the course spec). The timestamp is optional; windows
//! are over the server's receive time, so a client's clock never moves an emoji between windows.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::emoji::{EmojiId, EmojiSet};

/// Longest client id accepted, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 64;

/// A validated event: which emoji, from whom, and the client's own timestamp if it sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub emoji: EmojiId,
    pub client_id: Cow<'a, str>,
    /// Client-side time in ms since the epoch; informational only.
    pub client_ts_ms: Option<i64>,
}

/// Why an event was refused. The message names the field; `reason()` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("the event must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("missing field `emoji` (or `emoji_type`)")]
    MissingEmoji,
    #[error("missing field `client_id` (or `user_id`)")]
    MissingClientId,
    #[error("field `{field}` must be {expected}, got {got}")]
    WrongType { field: &'static str, expected: &'static str, got: &'static str },
    #[error("give only one of `emoji` and `emoji_type`")]
    BothEmojiFields,
    #[error("give only one of `client_id` and `user_id`")]
    BothClientFields,
    #[error("emoji “{0}” is not in the accepted set")]
    UnknownEmoji(String),
    #[error("field `{0}` must not be empty")]
    EmptyClientId(&'static str),
    #[error("field `{field}` is {len} bytes; the limit is {MAX_CLIENT_ID_BYTES}")]
    ClientIdTooLong { field: &'static str, len: usize },
    #[error("field `timestamp` {0}")]
    BadTimestamp(String),
}

impl EventError {
    /// A short, stable label for `emostream_events_rejected_total{reason=...}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Json(_) | Self::NotAnObject(_) => "malformed",
            Self::MissingEmoji | Self::MissingClientId => "missing_field",
            Self::WrongType { .. } | Self::BothEmojiFields | Self::BothClientFields => "wrong_type",
            Self::UnknownEmoji(_) => "unknown_emoji",
            Self::EmptyClientId(_) | Self::ClientIdTooLong { .. } => "bad_client_id",
            Self::BadTimestamp(_) => "bad_timestamp",
        }
    }
}

/// Any JSON value, kept only as far as validation needs: strings borrowed when unescaped, numbers,
/// and the type name of everything else for the error message.
#[derive(Debug)]
enum Field<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Other(&'static str),
}

impl Field<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Field::Str(_) => "a string",
            Field::Int(_) | Field::Float(_) => "a number",
            Field::Other(t) => t,
        }
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Field::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(Field::Float(v as f64), Field::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Field::Float(v))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Field::Other("a boolean"))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Other("null"))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Other("null"))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Other("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A key of the event object, matched without allocating.
#[derive(Debug, Clone, Copy)]
enum Key {
    Emoji,
    EmojiType,
    ClientId,
    UserId,
    Timestamp,
    Other,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Emoji => "emoji",
            Key::EmojiType => "emoji_type",
            Key::ClientId => "client_id",
            Key::UserId => "user_id",
            Key::Timestamp => "timestamp",
            Key::Other => "?",
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "emoji" => Key::Emoji,
                    "emoji_type" => Key::EmojiType,
                    "client_id" => Key::ClientId,
                    "user_id" => Key::UserId,
                    "timestamp" => Key::Timestamp,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// The event object with every field optional; unknown fields are ignored so clients may send more.
#[derive(Debug, Default)]
struct RawEvent<'a> {
    emoji: Option<Field<'a>>,
    emoji_type: Option<Field<'a>>,
    client_id: Option<Field<'a>>,
    user_id: Option<Field<'a>>,
    timestamp: Option<Field<'a>>,
    not_object: Option<&'static str>,
}

impl<'de> Deserialize<'de> for RawEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEvent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut raw = RawEvent::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let slot = match key {
                        Key::Emoji => &mut raw.emoji,
                        Key::EmojiType => &mut raw.emoji_type,
                        Key::ClientId => &mut raw.client_id,
                        Key::UserId => &mut raw.user_id,
                        Key::Timestamp => &mut raw.timestamp,
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(de::Error::custom(format_args!("duplicate field `{}`", key.name())));
                    }
                    *slot = Some(map.next_value()?);
                }
                Ok(raw)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawEvent { not_object: Some("an array"), ..Default::default() })
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(RawEvent { not_object: Some("a string"), ..Default::default() })
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(RawEvent { not_object: Some("a number"), ..Default::default() })
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(RawEvent { not_object: Some("a number"), ..Default::default() })
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(RawEvent { not_object: Some("a number"), ..Default::default() })
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(RawEvent { not_object: Some("a boolean"), ..Default::default() })
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(RawEvent { not_object: Some("null"), ..Default::default() })
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses and validates one event from JSON bytes.
///
/// # Errors
/// [`EventError`] naming the field at fault; nothing about a refused event is kept.
pub fn parse_event<'a>(json: &'a [u8], set: &EmojiSet) -> Result<Event<'a>, EventError> {
    let raw: RawEvent<'a> = serde_json::from_slice(json).map_err(|e| EventError::Json(e.to_string()))?;
    validate(raw, set)
}

/// Parses a JSON array of events; each item is judged on its own.
///
/// # Errors
/// Only when the body as a whole is not a JSON array; bad items come back as `Err` in the vector.
pub fn parse_event_array<'a>(json: &'a [u8], set: &EmojiSet, max_items: usize) -> Result<Vec<Result<Event<'a>, EventError>>, BatchError> {
    struct Items<'s>(&'s EmojiSet, usize);
    impl<'de> de::DeserializeSeed<'de> for Items<'_> {
        type Value = Vec<Result<Event<'de>, EventError>>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Items<'_> {
        type Value = Vec<Result<Event<'de>, EventError>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON array of events")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(64).min(self.1));
            while let Some(raw) = seq.next_element::<RawEvent<'de>>()? {
                if out.len() == self.1 {
                    return Err(de::Error::custom(format_args!("more than {} events in one batch", self.1)));
                }
                out.push(validate(raw, self.0));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let items = de::DeserializeSeed::deserialize(Items(set, max_items), &mut de).and_then(|v| de.end().map(|()| v)).map_err(|e| {
        if e.to_string().starts_with("more than") { BatchError::TooMany(max_items) } else { BatchError::Json(e.to_string()) }
    })?;
    Ok(items)
}

/// Parses NDJSON: one event per non-blank line. A line that is not valid JSON is an item error, not
/// a batch error, so one bad line does not cost the others.
///
/// # Errors
/// When the batch holds more than `max_items` events.
pub fn parse_event_ndjson<'a>(body: &'a [u8], set: &EmojiSet, max_items: usize) -> Result<Vec<Result<Event<'a>, EventError>>, BatchError> {
    let mut out = Vec::new();
    for line in body.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if out.len() == max_items {
            return Err(BatchError::TooMany(max_items));
        }
        out.push(parse_event(line, set));
    }
    Ok(out)
}

/// Why a whole batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("invalid JSON batch: {0} (send a JSON array of events, or NDJSON with Content-Type: application/x-ndjson)")]
    Json(String),
    #[error("a batch holds at most {0} events; split it")]
    TooMany(usize),
}

fn one_of<'a>(
    a: Option<Field<'a>>,
    a_name: &'static str,
    b: Option<Field<'a>>,
    b_name: &'static str,
    both: EventError,
) -> Result<Option<(Field<'a>, &'static str)>, EventError> {
    match (a, b) {
        (Some(_), Some(_)) => Err(both),
        (Some(f), None) => Ok(Some((f, a_name))),
        (None, Some(f)) => Ok(Some((f, b_name))),
        (None, None) => Ok(None),
    }
}

fn validate<'a>(raw: RawEvent<'a>, set: &EmojiSet) -> Result<Event<'a>, EventError> {
    if let Some(t) = raw.not_object {
        return Err(EventError::NotAnObject(t));
    }
    let (emoji, emoji_field) =
        one_of(raw.emoji, "emoji", raw.emoji_type, "emoji_type", EventError::BothEmojiFields)?.ok_or(EventError::MissingEmoji)?;
    let (client, client_field) =
        one_of(raw.client_id, "client_id", raw.user_id, "user_id", EventError::BothClientFields)?.ok_or(EventError::MissingClientId)?;
    let emoji = match emoji {
        Field::Str(s) => set.lookup(&s).ok_or_else(|| EventError::UnknownEmoji(truncate(&s, 80)))?,
        other => return Err(wrong_type(emoji_field, "a string", &other)),
    };
    let client_id = match client {
        Field::Str(s) => s,
        other => return Err(wrong_type(client_field, "a string", &other)),
    };
    if client_id.is_empty() {
        return Err(EventError::EmptyClientId(client_field));
    }
    if client_id.len() > MAX_CLIENT_ID_BYTES {
        return Err(EventError::ClientIdTooLong { field: client_field, len: client_id.len() });
    }
    let client_ts_ms = raw.timestamp.map(parse_timestamp).transpose()?;
    Ok(Event { emoji, client_id, client_ts_ms })
}

fn wrong_type(field: &'static str, expected: &'static str, got: &Field<'_>) -> EventError {
    EventError::WrongType { field, expected, got: got.type_name() }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Integers at or above this are milliseconds; below, seconds (1e11 s is the year 5138, 1e11 ms is 1973).
const MS_THRESHOLD: i64 = 100_000_000_000;

fn parse_timestamp(f: Field<'_>) -> Result<i64, EventError> {
    let ms = match f {
        Field::Int(i) if i.abs() >= MS_THRESHOLD => Some(i),
        Field::Int(i) => i.checked_mul(1000),
        Field::Float(x) if x.is_finite() && x.abs() < 1e14 => Some((x * 1000.0).round() as i64),
        Field::Float(_) => None,
        Field::Str(s) => {
            return parse_time_string(&s).ok_or_else(|| {
                EventError::BadTimestamp(format!(
                    "{:?} is not RFC 3339 (e.g. 2024-11-20T10:15:00Z) nor epoch seconds or milliseconds",
                    truncate(&s, 40)
                ))
            });
        }
        Field::Other(t) => {
            return Err(EventError::BadTimestamp(format!("must be epoch seconds, epoch milliseconds or an RFC 3339 string, got {t}")));
        }
    };
    ms.filter(|ms| *ms >= 0).ok_or_else(|| EventError::BadTimestamp("is out of range".into()))
}

fn parse_time_string(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    // Python's `datetime.now().isoformat()` (the original client) has no offset: read it as UTC.
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> EmojiSet {
        EmojiSet::default()
    }

    #[test]
    fn both_field_styles_parse() {
        let s = set();
        let a = parse_event(br#"{"emoji":"\u00f0","client_id":"c1"}"#, &s);
        assert!(matches!(a, Err(EventError::UnknownEmoji(_))));
        let a = parse_event(r#"{"emoji":"😂","client_id":"c1"}"#.as_bytes(), &s).unwrap();
        let b = parse_event(r#"{"emoji_type":"😂","user_id":"c1","timestamp":"2024-11-20T10:15:00Z"}"#.as_bytes(), &s).unwrap();
        assert_eq!(a.emoji, b.emoji);
        assert_eq!(b.client_ts_ms, Some(1_732_097_700_000));
    }

    #[test]
    fn timestamps_in_every_accepted_form() {
        let s = set();
        let ev =
            |ts: &str| parse_event(format!(r#"{{"emoji":"😀","client_id":"c","timestamp":{ts}}}"#).as_bytes(), &s).map(|e| e.client_ts_ms);
        assert_eq!(ev("1700000000").unwrap(), Some(1_700_000_000_000));
        assert_eq!(ev("1700000000.5").unwrap(), Some(1_700_000_000_500));
        assert_eq!(ev("1700000000123").unwrap(), Some(1_700_000_000_123));
        assert_eq!(ev(r#""2023-11-14T22:13:20+00:00""#).unwrap(), Some(1_700_000_000_000));
        assert_eq!(ev(r#""2023-11-14T22:13:20.250""#).unwrap(), Some(1_700_000_000_250));
        assert!(matches!(ev(r#""yesterday""#), Err(EventError::BadTimestamp(_))));
        assert!(matches!(ev("true"), Err(EventError::BadTimestamp(_))));
        assert!(matches!(ev("-5"), Err(EventError::BadTimestamp(_))));
    }

    #[test]
    fn errors_name_the_field() {
        let s = set();
        let err = |body: &str| parse_event(body.as_bytes(), &s).unwrap_err().to_string();
        assert_eq!(err(r#"{"emoji":5,"client_id":"c"}"#), "field `emoji` must be a string, got a number");
        assert_eq!(err(r#"{"emoji_type":"😀","user_id":[1]}"#), "field `user_id` must be a string, got an array");
        assert_eq!(err(r#"{"client_id":"c"}"#), "missing field `emoji` (or `emoji_type`)");
        assert_eq!(err(r#"{"emoji":"😀"}"#), "missing field `client_id` (or `user_id`)");
        assert_eq!(err(r#"{"emoji":"😀","client_id":""}"#), "field `client_id` must not be empty");
        assert!(err(&format!(r#"{{"emoji":"😀","client_id":"{}"}}"#, "x".repeat(65))).contains("65 bytes"));
        assert!(err(r#"{"emoji":"😀","#).starts_with("invalid JSON"));
        assert_eq!(err("[1,2]"), "the event must be a JSON object, got an array");
        assert!(err(r#"{"emoji":"😀","emoji":"😂","client_id":"c"}"#).contains("duplicate field `emoji`"));
        assert!(parse_event(b"\xff\xfe", &s).is_err());
    }

    #[test]
    fn client_id_of_64_bytes_is_accepted() {
        let body = format!(r#"{{"emoji":"😀","client_id":"{}"}}"#, "x".repeat(64));
        assert!(parse_event(body.as_bytes(), &set()).is_ok());
    }

    #[test]
    fn arrays_and_ndjson_judge_each_item() {
        let s = set();
        let items = parse_event_array(r#"[{"emoji":"😀","client_id":"a"},{"emoji":"x","client_id":"a"},3]"#.as_bytes(), &s, 10).unwrap();
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[1].is_err() && items[2].is_err());
        let nd = parse_event_ndjson("{\"emoji\":\"😀\",\"client_id\":\"a\"}\n\n{oops\n".as_bytes(), &s, 10).unwrap();
        assert_eq!(nd.len(), 2);
        assert!(nd[0].is_ok() && nd[1].is_err());
        assert_eq!(parse_event_array(b"[{},{}]", &s, 1).unwrap_err(), BatchError::TooMany(1));
        assert!(matches!(parse_event_array(b"{}", &s, 1).unwrap_err(), BatchError::Json(_)));
    }
}
