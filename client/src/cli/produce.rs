//! `cairn produce TOPIC`: one record per stdin line (or per `--delimiter`, from `--file`),
//! streamed through a [`Producer`].
//!
//! A reader thread cuts the input into chunks of records and passes them over a bounded
//! channel, so memory holds a few chunks plus the producer's bounded buffer, never the whole
//! input; one record of input longer than [`RECORD_INPUT_BYTES_MAX`] is refused. Each
//! record's delivery future goes (over another bounded channel) to a task that counts
//! acknowledgements; the command exits 0 only when every record was acknowledged.

use super::format::{parse_time, split_key};
use super::report;
use crate::{
    Acks, ClientConfig, ClientError, Compression, DeliveryFuture, Producer, ProducerConfig, Record,
};
use bytes::Bytes;
use cairn_protocol::error::plural;
use clap::{Args, ValueEnum};
use std::io::{BufRead, Read};
use std::time::Instant;
use tokio::sync::mpsc;

/// Lines the reader thread hands over at once.
const LINES_PER_CHUNK_MAX: usize = 1024;
/// Chunks waiting between the reader thread and the producer.
const CHUNKS_QUEUED_MAX: usize = 4;
/// Delivery futures waiting to be counted.
const DELIVERIES_QUEUED_MAX: usize = 65_536;
/// Longest record the reader takes from the input (key, separator and value): far above any
/// record a cluster accepts, so the cluster's own limit is what a user meets, but a stream
/// without delimiters cannot fill memory.
pub const RECORD_INPUT_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// After a majority of replicas flushed the record (no loss while a majority lives).
    All,
    /// After the leader flushed it (lost if the leader dies first).
    Leader,
    /// Without waiting (may be lost; no offsets).
    None,
}

impl From<AcksArg> for Acks {
    fn from(acks: AcksArg) -> Acks {
        match acks {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
            AcksArg::None => Acks::None,
        }
    }
}

/// Kafka's codecs (`compression.type`), for `--compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl From<CompressionArg> for Compression {
    fn from(compression: CompressionArg) -> Compression {
        match compression {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Snappy => Compression::Snappy,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub topic: super::TopicArg,
    /// Split each line at the first SEP into key and value (a line without SEP has no key).
    #[arg(short = 'K', long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Send every record to this partition instead of partitioning by key.
    #[arg(short, long)]
    pub partition: Option<u32>,
    /// A header for every record, `key=value` (repeatable; kcat's `-H`).
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    /// Compress each batch's records with this codec (kcat's `-z`); Kafka clients and
    /// `cairn consume` read every one. A batch that would not get smaller goes uncompressed.
    #[arg(
        short = 'z',
        long,
        value_enum,
        default_value = "none",
        value_name = "CODEC"
    )]
    pub compression: CompressionArg,
    /// Read records from this file instead of stdin (kcat's `-l`).
    #[arg(short = 'l', long, value_name = "PATH")]
    pub file: Option<std::path::PathBuf>,
    /// What ends a record instead of a newline (kcat's `-D`), so values may hold newlines;
    /// escapes \n \t \r \0 \\ (e.g. `-D '\0'` for `find -print0` style input).
    #[arg(short = 'D', long, value_name = "DELIM", value_parser = parse_delimiter)]
    pub delimiter: Option<Delimiter>,
    /// The timestamp of every record: ms since the epoch, RFC 3339 (2026-12-03T07:00:00Z), or
    /// a duration before now (15m). Default: the time each record is sent.
    #[arg(long, value_name = "TIME", value_parser = parse_timestamp, allow_hyphen_values = true)]
    pub timestamp: Option<i64>,
    /// Send a record with an empty value as a tombstone (a null value, which deletes its key
    /// on a compacted topic): `-K: -Z` turns the line `user-1:` into a tombstone for
    /// `user-1` (kcat's `-Z`).
    #[arg(short = 'Z', long = "null")]
    pub empty_as_null: bool,
}

/// The bytes `--delimiter` names (a newtype: clap reads a bare `Vec` as many values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delimiter(pub Vec<u8>);

fn parse_delimiter(text: &str) -> Result<Delimiter, String> {
    let mut delimiter = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut utf8 = [0u8; 4];
            delimiter.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            continue;
        }
        delimiter.push(match chars.next() {
            Some('n') => b'\n',
            Some('t') => b'\t',
            Some('r') => b'\r',
            Some('0') => 0,
            Some('\\') => b'\\',
            other => {
                let shown = other.map_or(String::new(), String::from);
                return Err(format!(
                    "unknown escape \\{shown} (known: \\n \\t \\r \\0 \\\\)"
                ));
            }
        });
    }
    if delimiter.is_empty() {
        return Err("the delimiter is empty".into());
    }
    Ok(Delimiter(delimiter))
}

fn parse_timestamp(text: &str) -> Result<i64, String> {
    match text.parse::<i64>() {
        Ok(ms) if ms >= 0 => Ok(ms),
        Ok(_) => Err("a timestamp is not negative".into()),
        Err(_) => parse_time(text),
    }
}

/// Turns one input line (without its line ending) into a record.
pub fn line_to_record(line: &[u8], separator: Option<&[u8]>) -> Record {
    let (key, value) = match separator {
        Some(separator) => split_key(line, separator),
        None => (None, line),
    };
    Record {
        key: key.map(Bytes::copy_from_slice),
        value: Some(Bytes::copy_from_slice(value)),
        headers: Vec::new(),
        timestamp_ms: None,
    }
}

/// `--null`: an empty value becomes a tombstone.
pub fn empty_value_as_null(record: &mut Record) {
    if record.value.as_ref().is_some_and(Bytes::is_empty) {
        record.value = None;
    }
}

/// Strips a trailing `\n` or `\r\n`.
fn trim_line_end(mut line: &[u8]) -> &[u8] {
    if let Some(rest) = line.strip_suffix(b"\n") {
        line = rest;
        if let Some(rest) = line.strip_suffix(b"\r") {
            line = rest;
        }
    }
    line
}

/// Cuts `input` into records: lines (a trailing `\r\n` or `\n` removed) without a
/// `delimiter`, else the bytes between delimiters (a last record without one counts too).
pub struct RecordReader<R> {
    input: R,
    delimiter: Option<Vec<u8>>,
    pending: Vec<u8>,
    ended: bool,
}

impl<R: BufRead> RecordReader<R> {
    pub fn new(input: R, delimiter: Option<Vec<u8>>) -> Self {
        RecordReader {
            input,
            delimiter,
            pending: Vec::new(),
            ended: false,
        }
    }

    /// The next record's bytes into `record` (cleared first); false at the end of the input.
    pub fn next_into(&mut self, record: &mut Vec<u8>) -> std::io::Result<bool> {
        record.clear();
        let Some(delimiter) = &self.delimiter else {
            let read = (&mut self.input)
                .take(RECORD_INPUT_BYTES_MAX as u64 + 2)
                .read_until(b'\n', record)?;
            if read == 0 {
                return Ok(false);
            }
            // A line longer than the limit stops the read before its end: refused here.
            let kept = trim_line_end(record).len();
            check_record_size(kept)?;
            record.truncate(kept);
            return Ok(true);
        };
        loop {
            if let Some(at) = find(&self.pending, delimiter) {
                record.extend_from_slice(&self.pending[..at]);
                self.pending.drain(..at + delimiter.len());
                return Ok(true);
            }
            check_record_size(self.pending.len().saturating_sub(delimiter.len()))?;
            if self.ended {
                if self.pending.is_empty() {
                    return Ok(false);
                }
                record.append(&mut self.pending);
                return Ok(true);
            }
            let available = self.input.fill_buf()?;
            if available.is_empty() {
                self.ended = true;
                continue;
            }
            let taken = available.len();
            self.pending.extend_from_slice(available);
            self.input.consume(taken);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn check_record_size(bytes: usize) -> std::io::Result<()> {
    if bytes > RECORD_INPUT_BYTES_MAX {
        return Err(too_long());
    }
    Ok(())
}

fn too_long() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("a record of more than {RECORD_INPUT_BYTES_MAX} bytes (is the delimiter right?)"),
    )
}

/// Reads the input on a plain thread (reads block) and sends chunks of records.
fn spawn_reader<R: BufRead + Send + 'static>(
    input: R,
    delimiter: Option<Vec<u8>>,
    separator: Option<Vec<u8>>,
    chunks: mpsc::Sender<std::io::Result<Vec<Record>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = RecordReader::new(input, delimiter);
        let mut bytes = Vec::new();
        let mut chunk = Vec::with_capacity(LINES_PER_CHUNK_MAX);
        loop {
            match reader.next_into(&mut bytes) {
                Ok(false) => break,
                Ok(true) => {
                    chunk.push(line_to_record(&bytes, separator.as_deref()));
                    if chunk.len() == LINES_PER_CHUNK_MAX {
                        let full =
                            std::mem::replace(&mut chunk, Vec::with_capacity(LINES_PER_CHUNK_MAX));
                        if chunks.blocking_send(Ok(full)).is_err() {
                            return;
                        }
                    }
                }
                Err(error) => {
                    let _ = chunks.blocking_send(Err(error));
                    return;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = chunks.blocking_send(Ok(chunk));
        }
    })
}

#[derive(Debug, Default)]
struct Tally {
    acknowledged: u64,
    failed: u64,
    first_error: Option<ClientError>,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// The topic exists, and so does the partition if one was named.
async fn check_target(config: &ClientConfig, args: &ProduceArgs) -> Result<(), ClientError> {
    let topic = crate::Admin::new(config.clone())?
        .topic_metadata(args.topic.name())
        .await?;
    let partitions = topic.partitions.len() as u32;
    match args.partition {
        Some(partition) if partition >= partitions => Err(ClientError::Api(
            cairn_protocol::ApiError::UnknownPartition {
                topic: args.topic.name().to_owned(),
                partition,
                partitions,
            },
        )),
        _ => Ok(()),
    }
}

pub async fn run(config: ClientConfig, args: ProduceArgs, output: super::Output) -> i32 {
    let started = Instant::now();
    let producer_config = ProducerConfig {
        acks: args.acks.into(),
        compression: args.compression.into(),
        ..ProducerConfig::default()
    };
    // An unknown topic or partition is refused before any input is read, so it fails even
    // with empty input (it printed "produced 0 records" and exited 0).
    if let Err(error) = check_target(&config, &args).await {
        return report(&error);
    }
    let producer = match Producer::new(config, producer_config).await {
        Ok(producer) => producer,
        Err(error) => return report(&error),
    };
    let (chunk_tx, mut chunk_rx) = mpsc::channel(CHUNKS_QUEUED_MAX);
    let separator = args.key_separator.clone().map(String::into_bytes);
    let delimiter = args.delimiter.clone().map(|delimiter| delimiter.0);
    let input_name = match &args.file {
        Some(path) => path.display().to_string(),
        None => "stdin".to_owned(),
    };
    let _reader = match &args.file {
        Some(path) => match std::fs::File::open(path) {
            Ok(file) => {
                let input = std::io::BufReader::new(file);
                spawn_reader(input, delimiter, separator, chunk_tx)
            }
            Err(error) => {
                return report(&ClientError::invalid(format!(
                    "--file {}: {error}",
                    path.display()
                )))
            }
        },
        None => {
            let input = std::io::BufReader::new(std::io::stdin());
            spawn_reader(input, delimiter, separator, chunk_tx)
        }
    };
    let (delivery_tx, mut delivery_rx) = mpsc::channel::<DeliveryFuture>(DELIVERIES_QUEUED_MAX);
    let counter = tokio::spawn(async move {
        let mut tally = Tally::default();
        while let Some(delivery) = delivery_rx.recv().await {
            match delivery.await {
                Ok(_) => tally.acknowledged += 1,
                Err(error) => {
                    tally.failed += 1;
                    tally.first_error.get_or_insert(error);
                }
            }
        }
        tally
    });

    let mut sent = 0u64;
    let mut failure: Option<ClientError> = None;
    'input: while let Some(chunk) = chunk_rx.recv().await {
        let records = match chunk {
            Ok(records) => records,
            Err(error) => {
                failure = Some(ClientError::invalid(format!(
                    "reading {input_name}: {error}"
                )));
                break;
            }
        };
        for mut record in records {
            record.timestamp_ms = args.timestamp;
            if args.empty_as_null {
                empty_value_as_null(&mut record);
            }
            for (key, value) in &args.headers {
                record = record.with_header(key.clone(), Bytes::from(value.clone()));
            }
            let sending = match args.partition {
                Some(partition) => producer.send_to(args.topic.name(), partition, record).await,
                None => producer.send(args.topic.name(), record).await,
            };
            match sending {
                Ok(delivery) => {
                    sent += 1;
                    if delivery_tx.send(delivery).await.is_err() {
                        break 'input;
                    }
                }
                Err(error) => {
                    failure = Some(error);
                    break 'input;
                }
            }
        }
    }
    drop(delivery_tx);
    let flushed = producer.close().await;
    let tally = counter.await.unwrap_or_default();
    let elapsed = started.elapsed().as_secs_f64();
    let error = failure.or(tally.first_error).or(flushed.err());
    if output == super::Output::Json {
        super::print_json(&serde_json::json!({
            "topic": args.topic.name(),
            "sent": sent,
            "acknowledged": tally.acknowledged,
            "failed": tally.failed,
            "seconds": elapsed,
        }));
    }
    match error {
        None if tally.acknowledged == sent => {
            eprintln!(
                "produced {} to '{}' in {elapsed:.2}s",
                plural(sent, "record"),
                args.topic.name()
            );
            0
        }
        None => {
            eprintln!(
                "error: {} of {} not acknowledged",
                sent - tally.acknowledged,
                plural(sent, "record")
            );
            super::EXIT_FAILURE
        }
        Some(error) => {
            eprintln!(
                "{} of {} acknowledged, {} failed",
                tally.acknowledged,
                plural(sent, "record"),
                tally.failed
            );
            report(&error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_records() {
        let record = line_to_record(b"user-1\tclicked", Some(b"\t"));
        assert_eq!(record.key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(record.value.as_deref(), Some(&b"clicked"[..]));
        let record = line_to_record(b"user-1\tclicked", None);
        assert_eq!(record.key, None);
        assert_eq!(record.value.as_deref(), Some(&b"user-1\tclicked"[..]));
        let mut tombstone = line_to_record(b"user-1\t", Some(b"\t"));
        assert_eq!(tombstone.value.as_deref(), Some(&b""[..]));
        empty_value_as_null(&mut tombstone);
        assert_eq!(tombstone.key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(tombstone.value, None);
        let mut kept = line_to_record(b"user-1\tclicked", Some(b"\t"));
        empty_value_as_null(&mut kept);
        assert_eq!(kept.value.as_deref(), Some(&b"clicked"[..]));
        assert_eq!(trim_line_end(b"abc\r\n"), b"abc");
        assert_eq!(trim_line_end(b"abc\n"), b"abc");
        assert_eq!(trim_line_end(b"abc"), b"abc");
        assert_eq!(trim_line_end(b"abc\r"), b"abc\r");
    }

    fn records(input: &[u8], delimiter: Option<&[u8]>) -> Vec<Vec<u8>> {
        let mut reader = RecordReader::new(input, delimiter.map(<[u8]>::to_vec));
        let mut out = Vec::new();
        let mut record = Vec::new();
        while reader.next_into(&mut record).unwrap() {
            out.push(record.clone());
        }
        out
    }

    #[test]
    fn input_is_cut_at_lines_or_at_the_delimiter() {
        assert_eq!(
            records(b"a\nb\r\n\nc", None),
            vec![&b"a"[..], b"b", b"", b"c"]
        );
        assert_eq!(records(b"", None), Vec::<Vec<u8>>::new());
        assert_eq!(
            records(b"one\nline\0two\0", Some(b"\0")),
            vec![&b"one\nline"[..], b"two"]
        );
        assert_eq!(
            records(b"a--b----c", Some(b"--")),
            vec![&b"a"[..], b"b", b"", b"c"]
        );
        // A delimiter split across reads of a small buffer is still found.
        let input = std::io::BufReader::with_capacity(3, &b"xx||yy||zz"[..]);
        let mut reader = RecordReader::new(input, Some(b"||".to_vec()));
        let mut record = Vec::new();
        let mut out = Vec::new();
        while reader.next_into(&mut record).unwrap() {
            out.push(String::from_utf8(record.clone()).unwrap());
        }
        assert_eq!(out, vec!["xx", "yy", "zz"]);
    }

    #[test]
    fn delimiters_and_timestamps_parse() {
        assert_eq!(parse_delimiter("\\0"), Ok(Delimiter(vec![0])));
        assert_eq!(parse_delimiter("--\\n"), Ok(Delimiter(b"--\n".to_vec())));
        assert!(parse_delimiter("").is_err());
        assert!(parse_delimiter("\\q").is_err());
        assert_eq!(parse_timestamp("1700000000123"), Ok(1_700_000_000_123));
        assert_eq!(
            parse_timestamp("2023-11-14T22:13:20.123Z"),
            Ok(1_700_000_000_123)
        );
        assert!(parse_timestamp("-5").is_err());
        assert!(parse_timestamp("soon").is_err());
    }
}
