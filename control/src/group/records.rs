//! The records a coordinator appends to its `__offsets` partition. Group state is exactly what
//! applying these records in log order builds ([`super::state::Coordinator::apply`]), so a new
//! coordinator after a failover rebuilds it by replaying the partition.
//!
//! Encoded with rmp-serde as maps (`to_vec_named`), like `__meta` records, so that a field
//! added later is skipped by an older node. Each record is the value of one log record.

use super::assign::{Assignor, TopicPartition};
use bytes::Bytes;
use cairn_protocol::batch::{RecordBatch, RecordBatchBuilder};
use cairn_protocol::group::MemberEpoch;
use cairn_protocol::{Offset, Record};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRecord {
    /// The group's epoch, assignor and the partition counts its last target was computed
    /// from; creates the group when it does not exist.
    GroupMetadata {
        group_id: String,
        group_epoch: i32,
        assignor: Assignor,
        partition_counts: Vec<(String, u32)>,
    },
    /// A member joined or changed its subscription or timeouts. Creates the member (with
    /// nothing assigned) when it does not exist.
    Member {
        group_id: String,
        member_id: String,
        instance_id: Option<String>,
        subscribed_topics: Vec<String>,
        rebalance_timeout_ms: u32,
        session_timeout_ms: u32,
        /// A static member left meaning to come back: its partitions stay reserved.
        static_left: bool,
    },
    /// A new incarnation of a static member took over the previous one's partitions.
    StaticMemberReplaced {
        group_id: String,
        old_member_id: String,
        new_member_id: String,
    },
    /// What the assignor wants the member to own.
    TargetAssignment {
        group_id: String,
        member_id: String,
        partitions: Vec<TopicPartition>,
    },
    /// What the member may own now, and what it is releasing.
    CurrentAssignment {
        group_id: String,
        member_id: String,
        member_epoch: MemberEpoch,
        previous_epoch: MemberEpoch,
        assigned: Vec<TopicPartition>,
        revoking: Vec<TopicPartition>,
    },
    MemberRemoved {
        group_id: String,
        member_id: String,
    },
    OffsetCommit {
        group_id: String,
        topic: String,
        partition: u32,
        offset: Offset,
        metadata: Option<String>,
    },
    GroupDeleted {
        group_id: String,
    },
}

impl GroupRecord {
    pub fn group_id(&self) -> &str {
        match self {
            GroupRecord::GroupMetadata { group_id, .. }
            | GroupRecord::Member { group_id, .. }
            | GroupRecord::StaticMemberReplaced { group_id, .. }
            | GroupRecord::TargetAssignment { group_id, .. }
            | GroupRecord::CurrentAssignment { group_id, .. }
            | GroupRecord::MemberRemoved { group_id, .. }
            | GroupRecord::OffsetCommit { group_id, .. }
            | GroupRecord::GroupDeleted { group_id } => group_id,
        }
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(rmp_serde::to_vec_named(self).expect("group records always serialize"))
    }

    pub fn decode(bytes: &[u8]) -> Result<GroupRecord, String> {
        rmp_serde::from_slice(bytes).map_err(|error| error.to_string())
    }

    /// One batch carrying `records` in order, ready to produce to `__offsets`: the records
    /// of one request are appended (and become durable) together or not at all.
    pub fn to_batch(records: &[GroupRecord], now_ms: i64) -> RecordBatch {
        let mut builder = RecordBatchBuilder::new(now_ms);
        for record in records {
            builder.push(&Record::new(record.encode()));
        }
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_batch() {
        let records = vec![
            GroupRecord::GroupMetadata {
                group_id: "g".into(),
                group_epoch: 3,
                assignor: Assignor::Range,
                partition_counts: vec![("t".into(), 6)],
            },
            GroupRecord::CurrentAssignment {
                group_id: "g".into(),
                member_id: "m".into(),
                member_epoch: MemberEpoch(4),
                previous_epoch: MemberEpoch(2),
                assigned: vec![TopicPartition::new("t", 1)],
                revoking: vec![],
            },
            GroupRecord::OffsetCommit {
                group_id: "g".into(),
                topic: "t".into(),
                partition: 1,
                offset: Offset(10),
                metadata: Some("x".into()),
            },
        ];
        let batch = GroupRecord::to_batch(&records, 1);
        let decoded: Vec<GroupRecord> = batch
            .records()
            .map(|record| {
                GroupRecord::decode(record.unwrap().value.as_deref().unwrap_or_default()).unwrap()
            })
            .collect();
        assert_eq!(decoded, records);
        assert!(GroupRecord::decode(b"\xc1").is_err());
    }
}
