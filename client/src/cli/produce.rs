//! `cairn produce TOPIC`: one record per stdin line, streamed through a [`Producer`].
//!
//! A reader thread cuts stdin into chunks of lines and passes them over a bounded channel, so
//! memory holds a few chunks plus the producer's bounded buffer, never the whole input. Each
//! record's delivery future goes (over another bounded channel) to a task that counts
//! acknowledgements; the command exits 0 only when every record was acknowledged.

use super::format::split_key;
use super::report;
use crate::{Acks, ClientConfig, ClientError, DeliveryFuture, Producer, ProducerConfig, Record};
use bytes::Bytes;
use cairn_protocol::error::plural;
use clap::{Args, ValueEnum};
use std::io::BufRead;
use std::time::Instant;
use tokio::sync::mpsc;

/// Lines the reader thread hands over at once.
const LINES_PER_CHUNK_MAX: usize = 1024;
/// Chunks waiting between the reader thread and the producer.
const CHUNKS_QUEUED_MAX: usize = 4;
/// Delivery futures waiting to be counted.
const DELIVERIES_QUEUED_MAX: usize = 65_536;

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

#[derive(Debug, Args)]
pub struct ProduceArgs {
    pub topic: String,
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
}

/// Turns one input line (without its line ending) into a record.
pub fn line_to_record(line: &[u8], separator: Option<&[u8]>) -> Record {
    let (key, value) = match separator {
        Some(separator) => split_key(line, separator),
        None => (None, line),
    };
    Record {
        key: key.map(Bytes::copy_from_slice),
        value: Bytes::copy_from_slice(value),
        headers: Vec::new(),
        timestamp_ms: None,
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

/// Reads stdin on a plain thread (stdin reads block) and sends chunks of records.
fn spawn_reader(
    separator: Option<Vec<u8>>,
    chunks: mpsc::Sender<std::io::Result<Vec<Record>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut line = Vec::new();
        let mut chunk = Vec::with_capacity(LINES_PER_CHUNK_MAX);
        loop {
            line.clear();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    chunk.push(line_to_record(trim_line_end(&line), separator.as_deref()));
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
        .topic_metadata(&args.topic)
        .await?;
    let partitions = topic.partitions.len() as u32;
    match args.partition {
        Some(partition) if partition >= partitions => Err(ClientError::Api(
            cairn_protocol::ApiError::UnknownPartition {
                topic: args.topic.clone(),
                partition,
                partitions,
            },
        )),
        _ => Ok(()),
    }
}

pub async fn run(config: ClientConfig, args: ProduceArgs) -> i32 {
    let started = Instant::now();
    let producer_config = ProducerConfig {
        acks: args.acks.into(),
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
    let _reader = spawn_reader(args.key_separator.map(String::into_bytes), chunk_tx);
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
                eprintln!("error: reading stdin: {error}");
                failure = Some(ClientError::invalid(format!("stdin: {error}")));
                break;
            }
        };
        for mut record in records {
            for (key, value) in &args.headers {
                record = record.with_header(key.clone(), Bytes::from(value.clone()));
            }
            let sending = match args.partition {
                Some(partition) => producer.send_to(&args.topic, partition, record).await,
                None => producer.send(&args.topic, record).await,
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
    match error {
        None if tally.acknowledged == sent => {
            eprintln!(
                "produced {} to '{}' in {elapsed:.2}s",
                plural(sent, "record"),
                args.topic
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
        assert_eq!(record.value.as_ref(), b"clicked");
        let record = line_to_record(b"user-1\tclicked", None);
        assert_eq!(record.key, None);
        assert_eq!(record.value.as_ref(), b"user-1\tclicked");
        assert_eq!(trim_line_end(b"abc\r\n"), b"abc");
        assert_eq!(trim_line_end(b"abc\n"), b"abc");
        assert_eq!(trim_line_end(b"abc"), b"abc");
        assert_eq!(trim_line_end(b"abc\r"), b"abc\r");
    }
}
