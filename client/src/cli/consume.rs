//! `cairn consume TOPIC`: records to stdout, one formatted record per line.
//!
//! Starts at the high watermark of each partition (only new records, like
//! kafka-console-consumer) unless `--from-beginning`, `--offset` (kcat's forms: `beginning`,
//! `end`, `N`, `-N` from the end, `s@MS`) or `--from-time`. An absolute offset outside a
//! partition's log is refused with its range, rather than silently reset. Stops after
//! `--max-messages` records, at the end with `-e`, or after `--idle-timeout-ms` without new
//! records, else runs until killed. A closed stdout (piped into `head`) ends the command
//! quietly with exit code 0. Records print in a kcat-style `--format`, or as JSON lines (`-J`).
//!
//! With `--group G` the command is a member of group `G`: the coordinator assigns the
//! partitions, each starts at the group's committed offset (else the high watermark, or the
//! log start with `--from-beginning`), and what was printed is committed when partitions are
//! revoked and on exit (end of `--max-messages`, idle timeout, Ctrl-C), so a rerun continues
//! with no record printed twice. A record printed just before a crash (SIGKILL) is printed
//! again by the next run: at-least-once.

use super::format::{parse_time, render_json, OutputFormat};
use super::{report, EXIT_USAGE};
use crate::{
    AutoOffsetReset, ClientConfig, ClientError, CommitPositionsOnRevoke, Consumer, ConsumerConfig,
    ConsumerRecord, Offset, SeekTo, TopicPartition,
};
use cairn_protocol::messages::OffsetSpec;
use clap::Args;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

/// Longest single wait in `poll`, so the idle timeout is checked often enough.
const POLL_WAIT_MAX: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub topic: super::TopicArg,
    /// Read only this partition (default: all partitions of the topic).
    #[arg(short, long, conflicts_with = "group")]
    pub partition: Option<u32>,
    /// Read as a member of this consumer group, committing what was printed.
    #[arg(short = 'G', long)]
    pub group: Option<String>,
    /// With `--group`: a static instance id. A rerun with the same id within the session
    /// timeout gets its partitions back without a rebalance.
    #[arg(long, requires = "group")]
    pub instance_id: Option<String>,
    /// With `--group`: how long the coordinator waits for a heartbeat before it gives this
    /// member's partitions to the others (within the node's `groups.session_timeout_ms_*`).
    #[arg(long, requires = "group")]
    pub session_timeout_ms: Option<u32>,
    /// Start at the first offset still in the log (the same as `-o beginning`).
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    pub from_beginning: bool,
    /// Where to start in every partition read: `beginning`, `end`, an offset `N`, `-N` (N
    /// records before the end), or `s@MS` (the first record at or after MS ms since the epoch).
    #[arg(
        short,
        long,
        conflicts_with_all = ["group", "from_time"],
        allow_hyphen_values = true,
        value_parser = parse_start,
        value_name = "OFFSET"
    )]
    pub offset: Option<Start>,
    /// Start at the first record written at or after TIME: RFC 3339 (2026-12-03T07:00:00Z)
    /// or a duration before now (15m, 2h, 1day).
    #[arg(long, conflicts_with = "group", value_parser = parse_time, value_name = "TIME")]
    pub from_time: Option<i64>,
    /// Exit after printing this many records.
    #[arg(short = 'c', long)]
    pub max_messages: Option<u64>,
    /// Exit after this many milliseconds without new records.
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Exit once every partition read is consumed up to where it ended when reading started
    /// (kcat's `-e`), instead of waiting for new records.
    #[arg(short = 'e', long, conflicts_with = "group")]
    pub exit_at_end: bool,
    /// Output per record, followed by a newline. Tokens (kcat's): %k key, %K key length, %s or
    /// %v value, %S value length, %t topic, %p partition, %o offset, %T timestamp (ms), %d
    /// timestamp (RFC 3339, UTC), %h headers, %% percent; escapes \n \t \r \\. A trailing \n
    /// (as kcat's formats end) is that newline, not a second one.
    #[arg(short, long, default_value = "%v")]
    pub format: String,
    /// Print each record as one JSON object per line: topic, partition, offset, timestamp_ms,
    /// timestamp, key, value, headers (bytes that are not UTF-8 as key_base64/value_base64).
    #[arg(short = 'J', long, conflicts_with = "format")]
    pub json: bool,
}

/// Where `consume` starts reading a partition (`--offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Beginning,
    End,
    At(u64),
    /// This many records before the end (never before the log start).
    BeforeEnd(u64),
    /// The first record at or after this timestamp (ms since the epoch).
    Time(i64),
}

fn parse_start(text: &str) -> Result<Start, String> {
    let number = |digits: &str| digits.parse::<u64>().ok();
    match text {
        "beginning" | "earliest" => return Ok(Start::Beginning),
        "end" | "latest" => return Ok(Start::End),
        _ => {}
    }
    if let Some(ms) = text.strip_prefix("s@") {
        if let Ok(ms) = ms.parse::<i64>() {
            return Ok(Start::Time(ms));
        }
    } else if let Some(back) = text.strip_prefix('-').and_then(number) {
        return Ok(Start::BeforeEnd(back));
    } else if let Some(offset) = number(text) {
        return Ok(Start::At(offset));
    }
    Err(format!(
        "'{text}' is not an offset: use beginning, end, N, -N (N before the end) or s@MS"
    ))
}

enum Stop {
    Done,
    StdoutClosed,
    /// Writing to stdout failed for another reason (disk full, ...).
    StdoutFailed(std::io::Error),
}

/// How each record is printed.
enum Output {
    Format(OutputFormat),
    Json,
}

impl Output {
    fn render(&self, record: &ConsumerRecord, out: &mut Vec<u8>) {
        match self {
            Output::Format(format) => format.render(record, out),
            Output::Json => render_json(record, out),
        }
    }
}

/// How long a group member's requests may retry: long enough to ride out a coordinator's
/// failover (an election and the new coordinator's load), which the CLI's short default for
/// one-shot commands would turn into an exit.
const GROUP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(mut config: ClientConfig, args: ConsumeArgs) -> i32 {
    if args.group.is_some() {
        config.request_timeout = config.request_timeout.max(GROUP_REQUEST_TIMEOUT);
    }
    let format = if args.json {
        Output::Json
    } else {
        match OutputFormat::parse(&args.format) {
            Ok(format) => Output::Format(format),
            Err(error) => {
                eprintln!("error: --format: {error}");
                return EXIT_USAGE;
            }
        }
    };
    match consume(config, &args, &format).await {
        Ok(Stop::Done) | Ok(Stop::StdoutClosed) => 0,
        Ok(Stop::StdoutFailed(error)) => {
            eprintln!("error: writing to stdout: {error}");
            super::EXIT_FAILURE
        }
        Err(error) => report(&error),
    }
}

async fn consume(
    config: ClientConfig,
    args: &ConsumeArgs,
    format: &Output,
) -> Result<Stop, ClientError> {
    let max_messages = args.max_messages.unwrap_or(u64::MAX);
    let consumer_config = ConsumerConfig {
        auto_offset_reset: if args.from_beginning {
            AutoOffsetReset::Earliest
        } else {
            AutoOffsetReset::Latest
        },
        max_poll_records: 10_000,
        group_instance_id: args.instance_id.clone(),
        ..ConsumerConfig::default()
    };
    let consumer_config = match args.session_timeout_ms {
        Some(session_timeout_ms) => {
            consumer_config.session_timeout(Duration::from_millis(u64::from(session_timeout_ms)))
        }
        None => consumer_config,
    };
    let mut consumer = Consumer::new(config, consumer_config)?;
    if let Some(group) = &args.group {
        return consume_in_group(consumer, group, args, format, max_messages).await;
    }
    let partitions = match args.partition {
        Some(partition) => {
            consumer.assign(&[(args.topic.name(), partition)]).await?;
            vec![partition]
        }
        None => consumer.assign_topic(args.topic.name()).await?,
    };
    let start = if args.from_beginning {
        Start::Beginning
    } else if let Some(ms) = args.from_time {
        Start::Time(ms)
    } else {
        args.offset.unwrap_or(Start::End)
    };
    for &partition in &partitions {
        seek_start(&mut consumer, args.topic.name(), partition, start).await?;
    }
    if max_messages == 0 {
        return Ok(Stop::Done);
    }
    // `-e`: each partition's end (its high watermark) when reading started.
    let mut ends = BTreeMap::new();
    if args.exit_at_end {
        for &partition in &partitions {
            let end = consumer
                .list_offset(args.topic.name(), partition, OffsetSpec::Latest)
                .await?;
            ends.insert(partition, end);
        }
    }
    let at_end = |consumer: &Consumer| {
        args.exit_at_end
            && ends.iter().all(|(&partition, &end)| {
                consumer
                    .position(args.topic.name(), partition)
                    .is_some_and(|position| position >= end)
            })
    };

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut line = Vec::with_capacity(4096);
    let mut printed = 0u64;
    let idle_timeout = args.idle_timeout_ms.map(Duration::from_millis);
    let mut last_record = Instant::now();
    loop {
        let wait = match idle_timeout {
            Some(idle) => {
                let left = idle.saturating_sub(last_record.elapsed());
                if left.is_zero() {
                    return Ok(Stop::Done);
                }
                left.min(POLL_WAIT_MAX)
            }
            None => POLL_WAIT_MAX,
        };
        if at_end(&consumer) {
            return Ok(Stop::Done);
        }
        let records = consumer.poll(wait).await?;
        if records.is_empty() {
            continue;
        }
        last_record = Instant::now();
        line.clear();
        for record in &records {
            format.render(record, &mut line);
            line.push(b'\n');
            printed += 1;
            if printed == max_messages {
                break;
            }
        }
        if let Err(error) = out.write_all(&line).and_then(|()| out.flush()) {
            return Ok(stdout_error(error));
        }
        if printed >= max_messages || at_end(&consumer) {
            return Ok(Stop::Done);
        }
    }
}

/// Moves `partition` to `start`. An absolute offset outside the partition's log is refused
/// with the range it holds (a consumer would silently reset it, printing nothing).
async fn seek_start(
    consumer: &mut Consumer,
    topic: &str,
    partition: u32,
    start: Start,
) -> Result<(), ClientError> {
    let to = match start {
        Start::Beginning => SeekTo::Earliest,
        Start::End => SeekTo::Latest,
        Start::Time(ms) => SeekTo::Timestamp(ms),
        Start::At(offset) => {
            let (first, end) = log_range(consumer, topic, partition).await?;
            if offset < first.0 || offset > end.0 {
                let holds = if first == end {
                    format!("it holds no records (the next one gets offset {end})")
                } else {
                    format!("it holds offsets {first} to {}", end.0 - 1)
                };
                return Err(ClientError::invalid(format!(
                    "offset {offset} is out of range for {topic}/{partition}: {holds}; \
                     -o end waits for new records"
                )));
            }
            SeekTo::Offset(Offset(offset))
        }
        Start::BeforeEnd(back) => {
            let (first, end) = log_range(consumer, topic, partition).await?;
            SeekTo::Offset(Offset(end.0.saturating_sub(back).max(first.0)))
        }
    };
    consumer.seek(topic, partition, to).await?;
    Ok(())
}

/// A partition's log start and high watermark.
async fn log_range(
    consumer: &Consumer,
    topic: &str,
    partition: u32,
) -> Result<(Offset, Offset), ClientError> {
    let first = consumer
        .list_offset(topic, partition, OffsetSpec::Earliest)
        .await?;
    let end = consumer
        .list_offset(topic, partition, OffsetSpec::Latest)
        .await?;
    Ok((first, end))
}

/// `consume --group`: prints as a group member; commits what was printed on revocation (the
/// listener commits positions, which are what was printed since every polled record is
/// printed before the next poll) and on exit.
async fn consume_in_group(
    mut consumer: Consumer,
    group: &str,
    args: &ConsumeArgs,
    format: &Output,
    max_messages: u64,
) -> Result<Stop, ClientError> {
    consumer
        .subscribe_with_listener(
            &[args.topic.name()],
            group,
            Box::new(CommitPositionsOnRevoke),
        )
        .await?;
    let stop = if max_messages == 0 {
        Ok(Stop::Done)
    } else {
        print_group(&mut consumer, args, format, max_messages).await
    };
    // `close` reports the partitions revoked, and the listener commits the positions: what
    // was printed (the loop moved positions back over anything polled but not printed).
    let closed = consumer.close().await;
    match (stop, closed) {
        (Err(error), _) => Err(error),
        (Ok(stop), Ok(())) => Ok(stop),
        (Ok(_), Err(error)) => Err(error),
    }
}

async fn print_group(
    consumer: &mut Consumer,
    args: &ConsumeArgs,
    format: &Output,
    max_messages: u64,
) -> Result<Stop, ClientError> {
    let stdout = std::io::stdout();
    let mut line = Vec::with_capacity(4096);
    let mut printed = 0u64;
    let idle_timeout = args.idle_timeout_ms.map(Duration::from_millis);
    let mut last_record = Instant::now();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let wait = match idle_timeout {
            Some(idle) => {
                let left = idle.saturating_sub(last_record.elapsed());
                if left.is_zero() {
                    return Ok(Stop::Done);
                }
                left.min(POLL_WAIT_MAX)
            }
            None => POLL_WAIT_MAX,
        };
        let records = tokio::select! {
            records = consumer.poll(wait) => records?,
            _ = &mut interrupted => return Ok(Stop::Done),
        };
        if records.is_empty() {
            continue;
        }
        last_record = Instant::now();
        line.clear();
        let mut next: BTreeMap<TopicPartition, Offset> = BTreeMap::new();
        for record in &records {
            format.render(record, &mut line);
            line.push(b'\n');
            printed += 1;
            next.insert(partition_of(record), record.offset.plus(1));
            if printed == max_messages {
                break;
            }
        }
        let written = {
            let mut out = stdout.lock();
            out.write_all(&line).and_then(|()| out.flush())
        };
        if let Err(error) = written {
            // Nothing of this batch reached the reader for sure: commit only up to the
            // previous batch, so the next run prints it again.
            rewind(consumer, &records, &BTreeMap::new()).await?;
            return Ok(stdout_error(error));
        }
        if printed >= max_messages {
            // Polled but not printed records must not count as printed.
            rewind(consumer, &records, &next).await?;
            return Ok(Stop::Done);
        }
    }
}

/// Moves each partition of `records` back to just after its last printed record (`printed`
/// holds those next offsets), or to its first record in `records` when none was printed.
async fn rewind(
    consumer: &mut Consumer,
    records: &[ConsumerRecord],
    printed: &BTreeMap<TopicPartition, Offset>,
) -> Result<(), ClientError> {
    let mut to: BTreeMap<TopicPartition, Offset> = BTreeMap::new();
    for record in records {
        to.entry(partition_of(record)).or_insert(record.offset);
    }
    to.extend(
        printed
            .iter()
            .map(|(partition, offset)| (partition.clone(), *offset)),
    );
    for (partition, offset) in to {
        consumer
            .seek(
                &partition.topic,
                partition.partition,
                SeekTo::Offset(offset),
            )
            .await?;
    }
    Ok(())
}

fn partition_of(record: &ConsumerRecord) -> TopicPartition {
    TopicPartition {
        topic: std::sync::Arc::clone(&record.topic),
        partition: record.partition,
    }
}

/// A reader that went away (`head`) is a normal end; anything else is an error.
fn stdout_error(error: std::io::Error) -> Stop {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        Stop::StdoutClosed
    } else {
        Stop::StdoutFailed(error)
    }
}
