//! Cluster metadata: the records of the internal partition `__meta` and the state they build.
//!
//! Every change to the set of topics is a [`MetaRecord`] appended to `__meta` (acks=all) and
//! only takes effect when it is committed and applied, in offset order, by
//! [`MetadataState::apply`]. Applying is deterministic, so every node that follows `__meta`
//! (and a restarted node replaying it) builds the same state. A topic's id is the `__meta`
//! offset of its `CreateTopic` record, so a deleted and re-created topic never shares a log.
//! Likewise an idempotent producer's id is the offset of its `AllocateProducerId` record: unique
//! across the cluster and its restarts, since offsets are never reused.

use bytes::Bytes;
use cairn_protocol::batch::{RecordBatch, RecordBatchBuilder};
use cairn_protocol::messages::TopicConfig;
use cairn_protocol::{NodeId, Offset, Record};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Name of the internal metadata partition's log (one partition, id 0).
pub const META_TOPIC: &str = "__meta";
pub const META_LOG_NAME: &str = "__meta";

/// Identifies one incarnation of a topic: the `__meta` offset of its `CreateTopic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicId(pub u64);

/// Storage name of one partition log of a topic incarnation.
pub fn partition_log_name(topic: TopicId, partition: u32) -> String {
    format!("t{}-{}", topic.0, partition)
}

/// The topic and partition of a log named by [`partition_log_name`]; `None` for any other.
pub fn parse_partition_log_name(log: &str) -> Option<(TopicId, u32)> {
    let (topic, partition) = log.strip_prefix('t')?.split_once('-')?;
    Some((TopicId(topic.parse().ok()?), partition.parse().ok()?))
}

/// One metadata change, encoded with rmp-serde (as a map, so later fields can be added) as the
/// value of one record in a `__meta` batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRecord {
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u16,
        /// Replica set of each partition, in partition order; the first is the preferred leader.
        replicas: Vec<Vec<NodeId>>,
        config: TopicConfig,
    },
    DeleteTopic {
        name: String,
    },
    /// Reserves one producer id, the offset of this record, for an idempotent producer that
    /// asked `node`. Changes no state: the offset alone is the reservation.
    AllocateProducerId {
        node: NodeId,
    },
    /// Adds partitions to topic incarnation `topic`: `replicas` are the new partitions' replica
    /// sets, numbered from `partitions_before`. Rejected at apply time unless the topic still
    /// has exactly `partitions_before` partitions (a racing add won) and is that incarnation.
    AddPartitions {
        name: String,
        topic: TopicId,
        partitions_before: u32,
        replicas: Vec<Vec<NodeId>>,
    },
    /// Replaces the config of topic incarnation `topic`.
    AlterTopicConfig {
        name: String,
        topic: TopicId,
        config: TopicConfig,
    },
}

impl MetaRecord {
    pub fn encode(&self) -> Bytes {
        Bytes::from(rmp_serde::to_vec_named(self).expect("meta records always serialize"))
    }

    pub fn decode(bytes: &[u8]) -> Result<MetaRecord, String> {
        rmp_serde::from_slice(bytes).map_err(|error| error.to_string())
    }

    /// A one-record batch carrying this change, ready to produce to `__meta`.
    pub fn to_batch(&self, now_ms: i64) -> RecordBatch {
        let mut builder = RecordBatchBuilder::new(now_ms);
        builder.push(&Record::new(self.encode()));
        builder.build()
    }
}

/// A topic as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    pub id: TopicId,
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u16,
    pub replicas: Vec<Vec<NodeId>>,
    pub config: TopicConfig,
}

/// What applying one record did, so the node can start or stop partition actors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created(TopicState),
    Deleted(TopicState),
    /// A producer id was reserved (see [`MetaRecord::AllocateProducerId`]).
    ProducerIdAllocated {
        producer_id: i64,
    },
    /// Partitions `first..topic.partitions` were added to `topic`.
    PartitionsAdded {
        topic: TopicState,
        first: u32,
    },
    /// `topic`'s config changed (it holds the new one).
    ConfigChanged(TopicState),
    /// The record lost a race checked at apply time (name taken, or already gone), or could
    /// not be decoded; nothing changed.
    Rejected {
        reason: String,
    },
}

/// Whether a producer id was handed out, as far as the applied `__meta` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerIdStatus {
    Allocated,
    /// Below the applied end and not an `AllocateProducerId` offset: never handed out.
    NeverAllocated,
    /// At or above the applied end: it may have been allocated since, by a `__meta` record
    /// this node has not applied yet.
    NotAppliedYet {
        applied_end: Offset,
    },
}

/// The state built from `__meta`. Only [`MetadataState::apply`] changes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataState {
    topics: BTreeMap<String, TopicState>,
    /// Offset right after the last applied record: everything below is reflected here.
    applied_end: Offset,
    /// The producer ids allocated so far, as sorted runs of consecutive `__meta` offsets
    /// (`start..end`). Allocations in a row share one run, so this holds one entry per other
    /// record between allocations (topic changes, leader markers), never one per producer:
    /// a client asking for ids in a loop grows `__meta` on disk, not this.
    producer_ids: Vec<std::ops::Range<u64>>,
}

impl MetadataState {
    pub fn topic(&self, name: &str) -> Option<&TopicState> {
        self.topics.get(name)
    }

    pub fn topics(&self) -> impl Iterator<Item = &TopicState> {
        self.topics.values()
    }

    pub fn applied_end(&self) -> Offset {
        self.applied_end
    }

    /// Whether `producer_id` is one the cluster handed out (`InitProducerId`): a lookup in
    /// the allocated runs, no allocation.
    pub fn producer_id_status(&self, producer_id: i64) -> ProducerIdStatus {
        let Ok(id) = u64::try_from(producer_id) else {
            return ProducerIdStatus::NeverAllocated;
        };
        if id >= self.applied_end.0 {
            return ProducerIdStatus::NotAppliedYet {
                applied_end: self.applied_end,
            };
        }
        let run = self.producer_ids.partition_point(|run| run.end <= id);
        match self.producer_ids.get(run) {
            Some(run) if run.contains(&id) => ProducerIdStatus::Allocated,
            _ => ProducerIdStatus::NeverAllocated,
        }
    }

    /// Marks offsets up to `end` as applied (control batches carry no metadata record).
    pub fn skip_to(&mut self, end: Offset) {
        self.applied_end = self.applied_end.max(end);
    }

    /// Applies the committed record at `offset`. Records must come in offset order; one at or
    /// below what was applied already is ignored (replays are harmless).
    pub fn apply(&mut self, offset: Offset, value: &[u8]) -> Option<Applied> {
        if offset < self.applied_end {
            return None;
        }
        self.applied_end = offset.plus(1);
        let record = match MetaRecord::decode(value) {
            Ok(record) => record,
            Err(reason) => {
                return Some(Applied::Rejected {
                    reason: format!("undecodable meta record at {offset}: {reason}"),
                })
            }
        };
        Some(match record {
            MetaRecord::CreateTopic {
                name,
                partitions,
                replication_factor,
                replicas,
                config,
            } => match self.topics.entry(name) {
                std::collections::btree_map::Entry::Occupied(taken) => Applied::Rejected {
                    reason: format!("topic {} already exists", taken.key()),
                },
                std::collections::btree_map::Entry::Vacant(free) => {
                    let topic = TopicState {
                        id: TopicId(offset.0),
                        name: free.key().clone(),
                        partitions,
                        replication_factor,
                        replicas,
                        config,
                    };
                    free.insert(topic.clone());
                    Applied::Created(topic)
                }
            },
            MetaRecord::DeleteTopic { name } => match self.topics.remove(&name) {
                Some(topic) => Applied::Deleted(topic),
                None => Applied::Rejected {
                    reason: format!("topic {name} does not exist"),
                },
            },
            MetaRecord::AllocateProducerId { node: _ } => match i64::try_from(offset.0) {
                Ok(producer_id) => {
                    // Offsets are applied in increasing order, so the runs stay sorted.
                    match self.producer_ids.last_mut() {
                        Some(run) if run.end == offset.0 => run.end += 1,
                        _ => self.producer_ids.push(offset.0..offset.0 + 1),
                    }
                    Applied::ProducerIdAllocated { producer_id }
                }
                Err(_) => Applied::Rejected {
                    reason: format!("offset {offset} does not fit a producer id"),
                },
            },
            MetaRecord::AddPartitions {
                name,
                topic,
                partitions_before,
                replicas,
            } => match self.topics.get_mut(&name) {
                Some(state) if state.id == topic && state.partitions == partitions_before => {
                    let added = u32::try_from(replicas.len()).unwrap_or(u32::MAX);
                    match partitions_before.checked_add(added) {
                        Some(after) if added > 0 => {
                            state.partitions = after;
                            state.replicas.extend(replicas);
                            Applied::PartitionsAdded {
                                topic: state.clone(),
                                first: partitions_before,
                            }
                        }
                        _ => Applied::Rejected {
                            reason: format!("adding {added} partitions to {name}"),
                        },
                    }
                }
                Some(state) => Applied::Rejected {
                    reason: format!(
                        "topic {name} changed ({} partitions, incarnation {}) before partitions \
                         were added",
                        state.partitions, state.id.0
                    ),
                },
                None => Applied::Rejected {
                    reason: format!("topic {name} does not exist"),
                },
            },
            MetaRecord::AlterTopicConfig {
                name,
                topic,
                config,
            } => match self.topics.get_mut(&name) {
                Some(state) if state.id == topic => {
                    state.config = config;
                    Applied::ConfigChanged(state.clone())
                }
                _ => Applied::Rejected {
                    reason: format!("topic {name} (incarnation {}) does not exist", topic.0),
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: u32) -> Bytes {
        MetaRecord::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: 1,
            replicas: vec![vec![NodeId(1)]; partitions as usize],
            config: TopicConfig::default(),
        }
        .encode()
    }

    #[test]
    fn partitions_are_added_once_to_the_same_incarnation() {
        let mut state = MetadataState::default();
        state.apply(Offset(1), &create("a", 2));
        let add = |before: u32, topic: u64| {
            MetaRecord::AddPartitions {
                name: "a".into(),
                topic: TopicId(topic),
                partitions_before: before,
                replicas: vec![vec![NodeId(2)]],
            }
            .encode()
        };
        match state.apply(Offset(2), &add(2, 1)) {
            Some(Applied::PartitionsAdded { topic, first }) => {
                assert_eq!((topic.partitions, first), (3, 2));
                assert_eq!(topic.replicas[2], vec![NodeId(2)]);
            }
            other => panic!("{other:?}"),
        }
        // A second add decided against the old count loses; so does one for an old incarnation.
        assert!(matches!(
            state.apply(Offset(3), &add(2, 1)),
            Some(Applied::Rejected { .. })
        ));
        assert!(matches!(
            state.apply(Offset(4), &add(3, 9)),
            Some(Applied::Rejected { .. })
        ));
        assert_eq!(state.topic("a").unwrap().partitions, 3);
        let alter = MetaRecord::AlterTopicConfig {
            name: "a".into(),
            topic: TopicId(1),
            config: TopicConfig {
                retention_ms: Some(5),
                retention_bytes: None,
                ..TopicConfig::default()
            },
        };
        assert!(matches!(
            state.apply(Offset(5), &alter.encode()),
            Some(Applied::ConfigChanged(topic)) if topic.config.retention_ms == Some(5)
        ));
    }

    #[test]
    fn topic_id_is_the_offset_and_a_second_create_loses() {
        let mut state = MetadataState::default();
        match state.apply(Offset(4), &create("a", 2)) {
            Some(Applied::Created(topic)) => assert_eq!(topic.id, TopicId(4)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            state.apply(Offset(5), &create("a", 3)),
            Some(Applied::Rejected { .. })
        ));
        assert_eq!(state.topic("a").unwrap().partitions, 2);
        assert_eq!(state.applied_end(), Offset(6));
    }

    #[test]
    fn delete_then_recreate_gets_a_new_id_and_log_names() {
        let mut state = MetadataState::default();
        state.apply(Offset(1), &create("a", 1));
        let delete = MetaRecord::DeleteTopic { name: "a".into() }.encode();
        assert!(matches!(
            state.apply(Offset(2), &delete),
            Some(Applied::Deleted(_))
        ));
        assert!(state.topic("a").is_none());
        assert!(matches!(
            state.apply(Offset(3), &delete),
            Some(Applied::Rejected { .. })
        ));
        state.apply(Offset(4), &create("a", 1));
        let id = state.topic("a").unwrap().id;
        assert_eq!(partition_log_name(id, 0), "t4-0");
        assert_eq!(parse_partition_log_name("t4-0"), Some((TopicId(4), 0)));
        assert_eq!(parse_partition_log_name("__meta"), None);
        assert_eq!(parse_partition_log_name("t4-x"), None);
    }

    #[test]
    fn replays_and_garbage_change_nothing() {
        let mut state = MetadataState::default();
        state.apply(Offset(0), &create("a", 1));
        let before = state.clone();
        assert_eq!(state.apply(Offset(0), &create("b", 1)), None);
        assert_eq!(state, before);
        assert!(matches!(
            state.apply(Offset(1), b"\xc1garbage"),
            Some(Applied::Rejected { .. })
        ));
        assert_eq!(state.topics().count(), 1);
    }

    #[test]
    fn a_producer_id_is_the_offset_of_its_allocation_and_changes_no_topic() {
        let mut state = MetadataState::default();
        state.apply(Offset(0), &create("a", 1));
        let before = state.topics().cloned().collect::<Vec<_>>();
        let allocate = MetaRecord::AllocateProducerId { node: NodeId(2) }.encode();
        assert_eq!(
            state.apply(Offset(5), &allocate),
            Some(Applied::ProducerIdAllocated { producer_id: 5 })
        );
        assert_eq!(
            state.apply(Offset(6), &allocate),
            Some(Applied::ProducerIdAllocated { producer_id: 6 })
        );
        assert_eq!(state.topics().cloned().collect::<Vec<_>>(), before);
        assert_eq!(state.applied_end(), Offset(7));
    }

    /// Ids are exactly the allocation offsets: not a topic's offset, not a leader marker's,
    /// not a negative id, and one above the applied end is not known yet.
    #[test]
    fn only_allocated_producer_ids_are_known_and_runs_stay_compact() {
        let mut state = MetadataState::default();
        let allocate = MetaRecord::AllocateProducerId { node: NodeId(1) }.encode();
        state.apply(Offset(0), &create("a", 1));
        for offset in 1..1_001 {
            state.apply(Offset(offset), &allocate);
        }
        state.skip_to(Offset(1_002)); // a leader marker at 1001
        state.apply(Offset(1_002), &allocate);
        state.apply(Offset(1_003), &create("b", 1));
        assert_eq!(state.producer_ids, vec![1..1_001, 1_002..1_003]);
        for id in [1, 500, 1_000, 1_002] {
            assert_eq!(
                state.producer_id_status(id),
                ProducerIdStatus::Allocated,
                "{id}"
            );
        }
        for id in [0, 1_001, 1_003, -1, -7, i64::MIN] {
            assert_eq!(
                state.producer_id_status(id),
                ProducerIdStatus::NeverAllocated,
                "{id}"
            );
        }
        for id in [1_004, i64::MAX] {
            assert_eq!(
                state.producer_id_status(id),
                ProducerIdStatus::NotAppliedYet {
                    applied_end: Offset(1_004)
                }
            );
        }
    }

    #[test]
    fn records_survive_a_batch_round_trip() {
        let record = MetaRecord::DeleteTopic { name: "x".into() };
        let batch = record.to_batch(1);
        let view = batch.records().next().unwrap().unwrap();
        assert_eq!(
            MetaRecord::decode(view.value.as_deref().unwrap_or_default()).unwrap(),
            record
        );
    }
}
