//! Text in and out of the CLI: kcat-style output formats and JSON lines for `consume`,
//! readable timestamps, and key/value splitting of input lines for `produce`.

use crate::consumer::ConsumerRecord;
use std::fmt;

/// One piece of a parsed output format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(Vec<u8>),
    Key,
    KeyLength,
    Value,
    ValueLength,
    Partition,
    Offset,
    Timestamp,
    ReadableTimestamp,
    Topic,
    Headers,
}

/// The tokens `--format` knows, for its help and its error message.
pub const FORMAT_TOKENS: &str = "%k key, %K key length, %s or %v value, %S value length, \
    %t topic, %p partition, %o offset, %T timestamp (ms), %d timestamp (RFC 3339, UTC), \
    %h headers, %% percent";

/// A parsed `--format`, with kcat's tokens: `%k` key, `%K` key length, `%s` (or `%v`) value,
/// `%S` value length, `%t` topic, `%p` partition, `%o` offset, `%T` timestamp (ms), `%d` the
/// timestamp as RFC 3339 in UTC, `%h` headers (`key=value` separated by commas, as kcat
/// prints them), `%%` a percent sign; escapes `\n`, `\t`, `\r`, `\\`. A trailing `\n` (kcat's
/// formats end with one) is the newline that follows every record, not a second one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFormat {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FormatError {}

impl OutputFormat {
    pub fn parse(format: &str) -> Result<OutputFormat, FormatError> {
        let mut tokens = Vec::new();
        let mut literal = Vec::new();
        let mut chars = format.chars();
        let flush = |literal: &mut Vec<u8>, tokens: &mut Vec<Token>| {
            if !literal.is_empty() {
                tokens.push(Token::Literal(std::mem::take(literal)));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    let token = match chars.next() {
                        Some('k') => Token::Key,
                        Some('K') => Token::KeyLength,
                        Some('s' | 'v') => Token::Value,
                        Some('S') => Token::ValueLength,
                        Some('p') => Token::Partition,
                        Some('o') => Token::Offset,
                        Some('T') => Token::Timestamp,
                        Some('d') => Token::ReadableTimestamp,
                        Some('t') => Token::Topic,
                        Some('h') => Token::Headers,
                        Some('%') => {
                            literal.push(b'%');
                            continue;
                        }
                        Some(other) => {
                            return Err(FormatError(format!(
                                "unknown format token %{other} (known: {FORMAT_TOKENS})"
                            )))
                        }
                        None => return Err(FormatError("format ends with a lone %".into())),
                    };
                    flush(&mut literal, &mut tokens);
                    tokens.push(token);
                }
                '\\' => match chars.next() {
                    Some('n') => literal.push(b'\n'),
                    Some('t') => literal.push(b'\t'),
                    Some('r') => literal.push(b'\r'),
                    Some('\\') => literal.push(b'\\'),
                    Some(other) => {
                        return Err(FormatError(format!(
                            "unknown escape \\{other} (known: \\n \\t \\r \\\\)"
                        )))
                    }
                    None => return Err(FormatError("format ends with a lone \\".into())),
                },
                other => {
                    let mut utf8 = [0u8; 4];
                    literal.extend_from_slice(other.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
        // Every record is followed by a newline; kcat's formats end with their own `\n`, which
        // is that newline, not a second one, so they print the same lines here.
        if literal.last() == Some(&b'\n') {
            literal.pop();
        }
        flush(&mut literal, &mut tokens);
        Ok(OutputFormat { tokens })
    }

    /// Appends the record rendered by this format to `out`. Keys and values are written as
    /// raw bytes; a missing key renders as nothing.
    pub fn render(&self, record: &ConsumerRecord, out: &mut Vec<u8>) {
        use std::io::Write;
        for token in &self.tokens {
            match token {
                Token::Literal(bytes) => out.extend_from_slice(bytes),
                Token::Key => {
                    if let Some(key) = &record.key {
                        out.extend_from_slice(key);
                    }
                }
                Token::KeyLength => {
                    // kcat prints -1 for a missing key.
                    let length = record.key.as_ref().map_or(-1, |key| key.len() as i64);
                    let _ = write!(out, "{length}");
                }
                // A tombstone prints as NULL (kcat's `-Z`), so it differs from an empty value.
                Token::Value => match &record.value {
                    Some(value) => out.extend_from_slice(value),
                    None => out.extend_from_slice(b"NULL"),
                },
                Token::ValueLength => {
                    // kcat prints -1 for a null value.
                    let length = record.value.as_ref().map_or(-1, |value| value.len() as i64);
                    let _ = write!(out, "{length}");
                }
                Token::ReadableTimestamp => {
                    out.extend_from_slice(readable_timestamp(record.timestamp_ms).as_bytes())
                }
                Token::Partition => {
                    let _ = write!(out, "{}", record.partition);
                }
                Token::Offset => {
                    let _ = write!(out, "{}", record.offset);
                }
                Token::Timestamp => {
                    let _ = write!(out, "{}", record.timestamp_ms);
                }
                Token::Topic => out.extend_from_slice(record.topic.as_bytes()),
                Token::Headers => {
                    for (index, header) in record.headers.iter().enumerate() {
                        if index > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(header.key.as_bytes());
                        // A header without a value prints as its key alone.
                        if let Some(value) = &header.value {
                            out.push(b'=');
                            out.extend_from_slice(value);
                        }
                    }
                }
            }
        }
    }
}

/// Latest instant RFC 3339 can write (9999-12-31T23:59:59.999Z), in ms since the Unix epoch.
const RFC3339_MS_MAX: i64 = 253_402_300_799_999;

/// A record timestamp as RFC 3339 in UTC with milliseconds (`2026-12-03T07:16:40.123Z`);
/// one outside what RFC 3339 can write (before 1970 or after 9999) as its number of ms.
pub fn readable_timestamp(timestamp_ms: i64) -> String {
    if !(0..=RFC3339_MS_MAX).contains(&timestamp_ms) {
        return timestamp_ms.to_string();
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(timestamp_ms as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// A point in time given on the command line: RFC 3339 (`2026-12-03T07:00:00Z`, also with a
/// space, without `Z` meaning UTC, or with fractions), or a duration before now (`90s`,
/// `15m`, `2h`, `1day`). Returns ms since the Unix epoch.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let at = match humantime::parse_rfc3339_weak(text) {
        Ok(at) => at,
        Err(_) => match humantime::parse_duration(text) {
            Ok(ago) => std::time::SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| format!("{text} ago is before the Unix epoch"))?,
            Err(_) => {
                return Err(format!(
                    "'{text}' is neither an RFC 3339 time (2026-12-03T07:00:00Z) nor a duration \
                     before now (15m, 2h, 1day)"
                ))
            }
        },
    };
    let since_epoch = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("'{text}' is before the Unix epoch"))?;
    i64::try_from(since_epoch.as_millis()).map_err(|_| format!("'{text}' is too far away"))
}

/// One record as a JSON object on one line (`consume -J`): topic, partition, offset,
/// timestamp (ms and RFC 3339), key, value and headers. Keys, values and header values that
/// are UTF-8 are JSON strings; others are given in base64 under `key_base64`,
/// `value_base64` or `value_base64` of the header, never altered.
pub fn render_json(record: &ConsumerRecord, out: &mut Vec<u8>) {
    use serde_json::{Map, Value};
    fn put_bytes(object: &mut Map<String, Value>, name: &str, bytes: Option<&[u8]>) {
        use base64::Engine;
        match bytes {
            None => {
                object.insert(name.to_owned(), Value::Null);
            }
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => {
                    object.insert(name.to_owned(), Value::String(text.to_owned()));
                }
                Err(_) => {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                    object.insert(format!("{name}_base64"), Value::String(encoded));
                }
            },
        }
    }
    let mut object = Map::new();
    object.insert("topic".into(), Value::from(record.topic.as_ref()));
    object.insert("partition".into(), Value::from(record.partition));
    object.insert("offset".into(), Value::from(record.offset.0));
    object.insert("timestamp_ms".into(), Value::from(record.timestamp_ms));
    object.insert(
        "timestamp".into(),
        Value::from(readable_timestamp(record.timestamp_ms)),
    );
    put_bytes(&mut object, "key", record.key.as_deref());
    put_bytes(&mut object, "value", record.value.as_deref());
    let headers = record
        .headers
        .iter()
        .map(|header| {
            let mut entry = Map::new();
            entry.insert("key".into(), Value::from(header.key.as_str()));
            put_bytes(&mut entry, "value", header.value.as_deref());
            Value::Object(entry)
        })
        .collect();
    object.insert("headers".into(), Value::Array(headers));
    serde_json::to_writer(&mut *out, &Value::Object(object))
        .expect("writing JSON to memory cannot fail");
}

/// Splits an input line into key and value at the first `separator`. A line without the
/// separator is all value, with no key.
pub fn split_key<'a>(line: &'a [u8], separator: &[u8]) -> (Option<&'a [u8]>, &'a [u8]) {
    if separator.is_empty() || separator.len() > line.len() {
        return (None, line);
    }
    match line
        .windows(separator.len())
        .position(|window| window == separator)
    {
        Some(at) => (Some(&line[..at]), &line[at + separator.len()..]),
        None => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cairn_protocol::Offset;
    use std::sync::Arc;

    fn record(key: Option<&'static str>) -> ConsumerRecord {
        ConsumerRecord {
            topic: Arc::from("orders"),
            partition: 2,
            offset: Offset(41),
            timestamp_ms: 1_700_000_000_123,
            key: key.map(|key| Bytes::from_static(key.as_bytes())),
            value: Some(Bytes::from_static(b"hello")),
            headers: Vec::new(),
        }
    }

    fn render(format: &str, record: &ConsumerRecord) -> String {
        let mut out = Vec::new();
        OutputFormat::parse(format)
            .unwrap()
            .render(record, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn tokens_and_escapes_render() {
        let keyed = record(Some("k1"));
        assert_eq!(render("%v", &keyed), "hello");
        assert_eq!(
            render("%t/%p@%o %T %k=%s\\n\\n%o", &keyed),
            "orders/2@41 1700000000123 k1=hello\n\n41"
        );
        // A trailing \n (kcat's formats end with one) is the newline every record gets.
        assert_eq!(render("%k=%s\\n", &keyed), "k1=hello");
        assert_eq!(render("%k\\n\\n", &keyed), "k1\n");
        assert_eq!(render("\\n", &keyed), "");
        assert_eq!(render("%K %S %v", &keyed), "2 5 hello");
        assert_eq!(render("%K", &record(None)), "-1");
        assert_eq!(render("%d", &keyed), "2023-11-14T22:13:20.123Z");
        assert_eq!(render("%k\\t%v 100%% é", &keyed), "k1\thello 100% é");
        assert_eq!(render("[%k]", &record(None)), "[]");
        assert_eq!(render("a\\\\b", &keyed), "a\\b");
    }

    #[test]
    fn headers_render_as_key_value_pairs() {
        let mut with_headers = record(None);
        assert_eq!(render("[%h]", &with_headers), "[]");
        with_headers.headers = vec![
            cairn_protocol::batch::Header {
                key: "trace".into(),
                value: Some(Bytes::from_static(b"abc")),
            },
            cairn_protocol::batch::Header {
                key: "flag".into(),
                value: None,
            },
        ];
        assert_eq!(render("%h", &with_headers), "trace=abc,flag");
    }

    #[test]
    fn timestamps_outside_rfc3339_print_as_numbers() {
        assert_eq!(readable_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(readable_timestamp(-1), "-1");
        assert_eq!(readable_timestamp(i64::MAX), i64::MAX.to_string());
        assert_eq!(
            readable_timestamp(RFC3339_MS_MAX),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn times_parse_as_rfc3339_or_a_duration_ago() {
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(parse_time("2023-11-14 22:13:20"), Ok(1_700_000_000_000));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let ago = parse_time("15m").unwrap();
        assert!((now - 15 * 60_000 - 1_000..=now - 15 * 60_000 + 1_000).contains(&ago));
        assert!(parse_time("yesterday-ish").is_err());
        assert!(parse_time("1969-12-31T23:59:59Z").is_err());
    }

    #[test]
    fn json_lines_keep_every_byte() {
        let mut keyed = record(Some("k1"));
        keyed.headers = vec![
            cairn_protocol::batch::Header {
                key: "trace".into(),
                value: Some(Bytes::from_static(b"abc")),
            },
            cairn_protocol::batch::Header {
                key: "bin".into(),
                value: Some(Bytes::from_static(&[0xff, 0x00])),
            },
        ];
        keyed.value = Some(Bytes::from_static(&[0xc3, 0x28]));
        let mut out = Vec::new();
        render_json(&keyed, &mut out);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "topic": "orders", "partition": 2, "offset": 41,
                "timestamp_ms": 1_700_000_000_123i64, "timestamp": "2023-11-14T22:13:20.123Z",
                "key": "k1", "value_base64": "wyg=",
                "headers": [{"key": "trace", "value": "abc"}, {"key": "bin", "value_base64": "/wA="}],
            })
        );
        assert!(!out.contains(&b'\n'), "one line per record");
        let mut out = Vec::new();
        render_json(&record(None), &mut out);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["key"], serde_json::Value::Null);
        assert_eq!(parsed["value"], "hello");
    }

    /// A tombstone is told apart from an empty value in every output: NULL and length -1 in
    /// a format (as kcat prints them), null in JSON.
    #[test]
    fn tombstones_render_distinguishably() {
        let mut tombstone = record(Some("k1"));
        tombstone.value = None;
        let mut empty = record(Some("k1"));
        empty.value = Some(Bytes::new());
        assert_eq!(render("%k=%s (%S)", &tombstone), "k1=NULL (-1)");
        assert_eq!(render("%k=%s (%S)", &empty), "k1= (0)");
        let mut out = Vec::new();
        render_json(&tombstone, &mut out);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["value"], serde_json::Value::Null);
        let mut out = Vec::new();
        render_json(&empty, &mut out);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["value"], "");
    }

    #[test]
    fn bad_formats_are_refused() {
        assert!(OutputFormat::parse("%x").is_err());
        assert!(OutputFormat::parse("abc%").is_err());
        assert!(OutputFormat::parse("\\q").is_err());
        assert!(OutputFormat::parse("abc\\").is_err());
    }

    #[test]
    fn key_separator_splits_at_the_first_occurrence() {
        assert_eq!(split_key(b"k:v:w", b":"), (Some(&b"k"[..]), &b"v:w"[..]));
        assert_eq!(split_key(b"novalue", b":"), (None, &b"novalue"[..]));
        assert_eq!(split_key(b":v", b":"), (Some(&b""[..]), &b"v"[..]));
        assert_eq!(split_key(b"k::v", b"::"), (Some(&b"k"[..]), &b"v"[..]));
        assert_eq!(split_key(b"k", b"::"), (None, &b"k"[..]));
        assert_eq!(split_key(b"k:v", b""), (None, &b"k:v"[..]));
    }
}
