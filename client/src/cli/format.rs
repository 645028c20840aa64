//! Text in and out of the CLI: kcat-style output formats for `consume`, and key/value
//! splitting of input lines for `produce`.

use crate::consumer::ConsumerRecord;
use std::fmt;

/// One piece of a parsed output format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(Vec<u8>),
    Key,
    Value,
    Partition,
    Offset,
    Timestamp,
    Topic,
    Headers,
}

/// A parsed `--format`: `%k` key, `%v` value, `%p` partition, `%o` offset, `%t` timestamp
/// (ms), `%T` topic, `%h` headers (`key=value` separated by commas, as kcat prints them),
/// `%%` a percent sign; escapes `\n`, `\t`, `\r`, `\\`.
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
                        Some('v') => Token::Value,
                        Some('p') => Token::Partition,
                        Some('o') => Token::Offset,
                        Some('t') => Token::Timestamp,
                        Some('T') => Token::Topic,
                        Some('h') => Token::Headers,
                        Some('%') => {
                            literal.push(b'%');
                            continue;
                        }
                        Some(other) => {
                            return Err(FormatError(format!(
                                "unknown format token %{other} (known: %k %v %p %o %t %T %h %%)"
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
                Token::Value => out.extend_from_slice(&record.value),
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
            value: Bytes::from_static(b"hello"),
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
            render("%T/%p@%o %t %k=%v\\n", &keyed),
            "orders/2@41 1700000000123 k1=hello\n"
        );
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
