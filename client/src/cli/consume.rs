//! `cairn consume TOPIC`: records to stdout, one formatted record per line.
//!
//! Starts at the high watermark of each partition (only new records, like
//! kafka-console-consumer) unless `--from-beginning` or `--offset N`. Stops after
//! `--max-messages` records or `--idle-timeout-ms` without new records, else runs until
//! killed. A closed stdout (piped into `head`) ends the command quietly with exit code 0.

use super::format::OutputFormat;
use super::{report, EXIT_USAGE};
use crate::{AutoOffsetReset, ClientConfig, ClientError, Consumer, ConsumerConfig, Offset, SeekTo};
use clap::Args;
use std::io::Write;
use std::time::{Duration, Instant};

/// Longest single wait in `poll`, so the idle timeout is checked often enough.
const POLL_WAIT_MAX: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Read only this partition (default: all partitions of the topic).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Start at the first offset still in the log.
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Start at this offset (in every partition read).
    #[arg(long)]
    pub offset: Option<u64>,
    /// Exit after printing this many records.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Exit after this many milliseconds without new records.
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// Output per record, followed by a newline: %k key, %v value, %p partition, %o offset,
    /// %t timestamp (ms), %T topic, %% percent; escapes \n \t \r \\.
    #[arg(long, default_value = "%v")]
    pub format: String,
}

enum Stop {
    Done,
    StdoutClosed,
    /// Writing to stdout failed for another reason (disk full, ...).
    StdoutFailed(std::io::Error),
}

pub async fn run(config: ClientConfig, args: ConsumeArgs) -> i32 {
    let format = match OutputFormat::parse(&args.format) {
        Ok(format) => format,
        Err(error) => {
            eprintln!("error: --format: {error}");
            return EXIT_USAGE;
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
    format: &OutputFormat,
) -> Result<Stop, ClientError> {
    let max_messages = args.max_messages.unwrap_or(u64::MAX);
    let consumer_config = ConsumerConfig {
        auto_offset_reset: if args.from_beginning {
            AutoOffsetReset::Earliest
        } else {
            AutoOffsetReset::Latest
        },
        max_poll_records: 10_000,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(config, consumer_config)?;
    let partitions = match args.partition {
        Some(partition) => {
            consumer.assign(&[(&args.topic, partition)]).await?;
            vec![partition]
        }
        None => consumer.assign_topic(&args.topic).await?,
    };
    let start = if args.from_beginning {
        SeekTo::Earliest
    } else if let Some(offset) = args.offset {
        SeekTo::Offset(Offset(offset))
    } else {
        SeekTo::Latest
    };
    for partition in partitions {
        consumer.seek(&args.topic, partition, start).await?;
    }
    if max_messages == 0 {
        return Ok(Stop::Done);
    }

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
        if printed >= max_messages {
            return Ok(Stop::Done);
        }
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
