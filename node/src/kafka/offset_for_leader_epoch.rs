//! `OffsetForLeaderEpoch` (2-4): the end offset of a leader epoch, from the leader's epoch
//! history. A client that saw records of epoch E asks for E's end after a leader change; an
//! end below its position means the log it read from was cut (a truncation), and it resets.
//!
//! The answer follows Kafka's: for the leader's latest epoch, the log end; for an older
//! epoch, the largest epoch at or below it with the start offset of the first larger epoch
//! (the end of the asked epoch); for an epoch before the whole history, that epoch with the
//! start of the first epoch held; for an epoch above every epoch held, -1 and -1. The
//! `current_leader_epoch` fences as in Fetch and ListOffsets ([`check_current_epoch`]).

use super::errors::code;
use super::ids::leader_epoch;
use super::Call;
use crate::broker::Broker;
use crate::meta::META_TOPIC;
use cairn_protocol::{Epoch, Offset};
use cairn_storage::LogStore;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ResponseKind,
};

/// Kafka's "no epoch": in a request, no fencing; in an answer, an epoch not held.
const NO_EPOCH: i32 = -1;
const NO_OFFSET: i64 = -1;

pub async fn handle<S: LogStore>(
    broker: &Broker<S>,
    _call: Call,
    request: OffsetForLeaderEpochRequest,
) -> ResponseKind {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let mut answer = EpochEndOffset::default()
                .with_partition(partition.partition)
                .with_leader_epoch(NO_EPOCH)
                .with_end_offset(NO_OFFSET);
            match lookup(
                broker,
                &topic.topic.0,
                partition.partition,
                partition.current_leader_epoch,
                partition.leader_epoch,
            )
            .await
            {
                Ok((epoch, end_offset)) => {
                    answer.leader_epoch = epoch;
                    answer.end_offset = end_offset;
                }
                Err(error) => answer.error_code = error,
            }
            partitions.push(answer);
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions),
        );
    }
    ResponseKind::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse::default().with_topics(topics))
}

/// The answer for one partition (epoch, end offset), or a Kafka error code.
async fn lookup<S: LogStore>(
    broker: &Broker<S>,
    topic: &str,
    partition: i32,
    current_leader_epoch: i32,
    requested: i32,
) -> Result<(i32, i64), i16> {
    if topic == META_TOPIC {
        return Err(ResponseError::UnknownTopicOrPartition.code());
    }
    let index =
        u32::try_from(partition).map_err(|_| ResponseError::UnknownTopicOrPartition.code())?;
    let handle = broker
        .partition(topic, index)
        .map_err(|error| code(&error))?;
    let held = handle.epoch_history().await.map_err(|error| code(&error))?;
    check_current_epoch(current_leader_epoch, held.epoch).map_err(|error| error.code())?;
    let Ok(requested) = u64::try_from(requested) else {
        return Ok((NO_EPOCH, NO_OFFSET));
    };
    Ok(
        match end_offset_for_epoch(&held.history, Epoch(requested), held.log_end) {
            Some((epoch, end)) => (
                leader_epoch(epoch),
                i64::try_from(end.0).unwrap_or(i64::MAX),
            ),
            None => (NO_EPOCH, NO_OFFSET),
        },
    )
}

/// KIP-320's fencing of a request that names the leader epoch the client believes current:
/// -1 checks nothing; an older epoch is FENCED_LEADER_EPOCH (the client's metadata is stale:
/// it refreshes); a newer one is UNKNOWN_LEADER_EPOCH (this leader has not caught up with the
/// client's metadata yet: it retries).
pub fn check_current_epoch(current_leader_epoch: i32, leader: Epoch) -> Result<(), ResponseError> {
    if current_leader_epoch == NO_EPOCH {
        return Ok(());
    }
    let leader = leader_epoch(leader);
    match current_leader_epoch.cmp(&leader) {
        std::cmp::Ordering::Less => Err(ResponseError::FencedLeaderEpoch),
        std::cmp::Ordering::Greater => Err(ResponseError::UnknownLeaderEpoch),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// The end of `requested` in `history` (epochs with their start offsets, oldest first):
/// the epoch answered (the largest at or below `requested`, or `requested` itself when it
/// is older than the whole history) and the offset where the next larger epoch starts, or
/// `log_end` for the latest epoch. `None` when no epoch is held at or above `requested`.
pub fn end_offset_for_epoch(
    history: &[(Epoch, Offset)],
    requested: Epoch,
    log_end: Offset,
) -> Option<(Epoch, Offset)> {
    let &(latest, _) = history.last()?;
    if requested == latest {
        return Some((latest, log_end));
    }
    let (_, next_start) = *history.iter().find(|(epoch, _)| *epoch > requested)?;
    let floor = history
        .iter()
        .rev()
        .find(|(epoch, _)| *epoch <= requested)
        .map_or(requested, |(epoch, _)| *epoch);
    Some((floor, next_start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> Vec<(Epoch, Offset)> {
        vec![
            (Epoch(2), Offset(0)),
            (Epoch(3), Offset(10)),
            (Epoch(6), Offset(25)),
        ]
    }

    #[test]
    fn the_latest_epoch_ends_at_the_log_end() {
        assert_eq!(
            end_offset_for_epoch(&history(), Epoch(6), Offset(40)),
            Some((Epoch(6), Offset(40)))
        );
    }

    #[test]
    fn an_older_epoch_ends_where_the_next_larger_one_starts() {
        assert_eq!(
            end_offset_for_epoch(&history(), Epoch(2), Offset(40)),
            Some((Epoch(2), Offset(10)))
        );
        assert_eq!(
            end_offset_for_epoch(&history(), Epoch(3), Offset(40)),
            Some((Epoch(3), Offset(25)))
        );
    }

    /// An epoch this log never had (a leader elected at 4 that never wrote here) answers the
    /// largest epoch below it, ending where the next one held starts.
    #[test]
    fn an_epoch_not_held_answers_the_one_below_it() {
        assert_eq!(
            end_offset_for_epoch(&history(), Epoch(4), Offset(40)),
            Some((Epoch(3), Offset(25)))
        );
    }

    #[test]
    fn an_epoch_before_the_history_ends_where_the_history_starts() {
        assert_eq!(
            end_offset_for_epoch(&history(), Epoch(1), Offset(40)),
            Some((Epoch(1), Offset(0)))
        );
    }

    #[test]
    fn an_epoch_above_every_held_one_has_no_end() {
        assert_eq!(end_offset_for_epoch(&history(), Epoch(7), Offset(40)), None);
        assert_eq!(end_offset_for_epoch(&[], Epoch(0), Offset(0)), None);
    }

    #[test]
    fn stale_and_future_epochs_are_fenced() {
        assert_eq!(check_current_epoch(-1, Epoch(5)), Ok(()));
        assert_eq!(check_current_epoch(5, Epoch(5)), Ok(()));
        assert_eq!(
            check_current_epoch(4, Epoch(5)),
            Err(ResponseError::FencedLeaderEpoch)
        );
        assert_eq!(
            check_current_epoch(6, Epoch(5)),
            Err(ResponseError::UnknownLeaderEpoch)
        );
    }
}
