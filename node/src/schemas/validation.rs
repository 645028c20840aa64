//! Broker-side schema validation, as Confluent Server's `confluent.value.schema.validation`
//! and Redpanda's `redpanda.value.schema.id.validation` (one topic setting,
//! [`TopicConfig::value_schema_validation`]): the partition leader refuses a batch in which a
//! record's value does not start with the registry's wire format, magic byte 0 then a 4-byte
//! big-endian schema id, or names an id not registered under the subject `<topic>-value`
//! (Confluent's TopicNameStrategy). A tombstone (null value) passes: it deletes a key of a
//! compacted topic and carries no schema, as in Kafka with Confluent's serializers.
//! Keys are checked the same way against `<topic>-key` when the topic sets
//! `confluent.key.schema.validation` (or `redpanda.key.schema.id.validation`); a null key
//! passes.
//!
//! The subject is the topic's by default (TopicNameStrategy). A topic may name another
//! strategy for each part, as Confluent Server's `confluent.{key,value}.subject.name.strategy`
//! and Redpanda's `redpanda.{key,value}.subject.name.strategy`: with RecordNameStrategy the
//! subject is the record name of the schema the id names (an Avro full name, a JSON schema's
//! `title`, or the Protobuf message that the message indexes after the id pick), and with
//! TopicRecordNameStrategy it is `<topic>-<record name>`.
//!
//! The check is synchronous, in the produce path, against [`Attachment`]'s index of ids per
//! subject, which this node's registry publishes whenever it replays `_schemas`. The index
//! may lag the log (a schema registered through another node a moment ago): a batch whose
//! only faults are ids the index does not hold makes the node catch its registry up to the
//! `_schemas` leader's high watermark first (at most [`CATCH_UP_TIMEOUT`]), then it is checked
//! again and a refusal is final. When the registry cannot catch up (the `_schemas` leader is
//! failing over), the produce is answered `NotReady`, which clients retry.
//!
//! [`TopicConfig::value_schema_validation`]: cairn_protocol::messages::TopicConfig

use super::SchemaRegistry;
use cairn_control::schema::RecordNames;
use cairn_protocol::batch::RecordBatch;
use cairn_protocol::error::RECORD_ERRORS_MAX;
use cairn_protocol::messages::SubjectNameStrategy;
use cairn_protocol::{ApiError, RecordError};
use cairn_storage::LogStore;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

/// How long a produce waits for this node's registry to catch up before it is answered
/// `NotReady` (retriable).
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of the registry's wire-format header: magic byte 0 and a 4-byte schema id.
const HEADER_BYTES: usize = 5;

/// Ids registered under each subject, as this node's registry last replayed them.
pub type SubjectIds = HashMap<String, HashSet<u32>>;

/// Message indexes a Protobuf record may carry at most (Confluent's wire format nests one per
/// level of message nesting).
const MESSAGE_INDEXES_MAX: usize = 64;

/// What this node's registry publishes for validation each time it replays `_schemas`.
#[derive(Debug, Default)]
pub struct SchemaIndex {
    /// Ids registered under each subject.
    pub subjects: SubjectIds,
    /// The record names of every id some subject uses (for the record name strategies).
    pub names: HashMap<u32, RecordNames>,
}

/// What the produce path sees of the schema registry: the published index, and the
/// registry itself to catch up (weakly held: the node owns the registry, which owns the broker).
pub struct Attachment<S: LogStore> {
    index: RwLock<Arc<SchemaIndex>>,
    registry: OnceLock<Weak<SchemaRegistry<S>>>,
}

impl<S: LogStore> Default for Attachment<S> {
    fn default() -> Self {
        Attachment {
            index: RwLock::new(Arc::new(SchemaIndex::default())),
            registry: OnceLock::new(),
        }
    }
}

/// What a topic validates: its record keys, its values, or both, and with which subject
/// name strategy each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parts {
    pub keys: bool,
    pub values: bool,
    pub key_strategy: SubjectNameStrategy,
    pub value_strategy: SubjectNameStrategy,
}

impl Parts {
    pub fn of(config: &cairn_protocol::messages::TopicConfig) -> Parts {
        Parts {
            keys: config.validates_key_schema(),
            values: config.validates_value_schema(),
            key_strategy: config.key_subject_strategy(),
            value_strategy: config.value_subject_strategy(),
        }
    }

    pub fn any(self) -> bool {
        self.keys || self.values
    }
}

/// The outcome of checking a batch.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Valid,
    /// Refused for good: a value without the header, or (after a catch-up) an unknown id.
    Refused(ApiError),
    /// The only faults are ids the index does not hold: it may lag the log.
    Unseen,
}

impl<S: LogStore> Attachment<S> {
    /// Makes `registry` the one produce catches up; the first attached stays.
    pub fn attach(&self, registry: &Arc<SchemaRegistry<S>>) {
        let _ = self.registry.set(Arc::downgrade(registry));
    }

    pub(crate) fn publish(&self, index: SchemaIndex) {
        *self
            .index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(index);
    }

    fn index(&self) -> Arc<SchemaIndex> {
        Arc::clone(
            &self
                .index
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Checks every record of `batch` (a batch of `topic`) against the index; `caught_up`
    /// says the index has been caught up since the batch arrived, so an unknown id is final.
    pub fn check(
        &self,
        topic: &str,
        parts: Parts,
        batch: &RecordBatch,
        decompressed_bytes_max: usize,
        caught_up: bool,
    ) -> Result<Verdict, ApiError> {
        check(
            &self.index(),
            topic,
            parts,
            batch,
            decompressed_bytes_max,
            caught_up,
        )
    }

    /// Catches this node's registry up to the `_schemas` leader, unless it already did since
    /// `since`. `NotReady` (retriable) when it cannot within [`CATCH_UP_TIMEOUT`].
    pub async fn catch_up(&self, since: Instant) -> Result<(), ApiError> {
        let Some(registry) = self.registry.get().and_then(Weak::upgrade) else {
            // No registry runs on this node (a test harness without one): the index is all
            // there is.
            return Ok(());
        };
        registry
            .catch_up_for_validation(since, CATCH_UP_TIMEOUT)
            .await
            .map_err(|error| ApiError::NotReady {
                reason: format!(
                    "schema validation waits for this node's schema registry to catch up \
                     ({error}); retry"
                ),
            })
    }
}

/// Confluent's Protobuf message indexes, after the schema id: a zigzag varint count, then as
/// many zigzag varints; a count of 0 stands for `[0]`, the first message. `None` when they
/// are malformed.
fn message_indexes(bytes: &[u8]) -> Option<Vec<usize>> {
    let mut rest = bytes;
    let mut next = || -> Option<i64> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, tail) = rest.split_first()?;
            rest = tail;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        None
    };
    let count = next()?;
    if count == 0 {
        return Some(vec![0]);
    }
    let count = usize::try_from(count)
        .ok()
        .filter(|count| *count <= MESSAGE_INDEXES_MAX)?;
    (0..count)
        .map(|_| next().and_then(|index| usize::try_from(index).ok()))
        .collect()
}

/// A part of a record under check: its name (`key`, `value`), its topic's subject strategy
/// for it, and its TopicNameStrategy subject (made once per batch, not per record).
struct Part<'a> {
    topic: &'a str,
    name: &'static str,
    strategy: SubjectNameStrategy,
    topic_subject: String,
}

impl<'a> Part<'a> {
    fn new(topic: &'a str, name: &'static str, strategy: SubjectNameStrategy) -> Part<'a> {
        Part {
            topic,
            name,
            strategy,
            topic_subject: format!("{topic}-{name}"),
        }
    }

    fn topic_subject(&self) -> String {
        self.topic_subject.clone()
    }
}

/// Why `bytes` (a record's key or value) does not carry a schema id registered under the
/// subject `part`'s strategy gives it: that subject and the reason; `None` when it does.
/// `header_fault` is set when no catch-up of the registry can make the bytes valid (no
/// header; malformed message indexes; a schema with no record name).
fn fault(
    index: &SchemaIndex,
    part: &Part,
    bytes: &[u8],
    header_fault: &mut bool,
) -> Option<(String, String)> {
    let name = part.name;
    if bytes.len() < HEADER_BYTES {
        *header_fault = true;
        return Some((
            part.topic_subject(),
            format!(
                "a {name} of {} bytes cannot hold the schema registry's 5-byte header \
                 (magic byte 0, 4-byte schema id)",
                bytes.len()
            ),
        ));
    }
    if bytes[0] != 0 {
        *header_fault = true;
        return Some((
            part.topic_subject(),
            format!(
                "the {name} starts with byte {}, not the magic byte 0 of a schema id",
                bytes[0]
            ),
        ));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    // Values keep Confluent's plain wording; a key's fault says it is the key's.
    let what = if name == "key" {
        "key schema id"
    } else {
        "schema id"
    };
    let subject: std::borrow::Cow<str> = match part.strategy {
        SubjectNameStrategy::TopicNameStrategy => part.topic_subject.as_str().into(),
        SubjectNameStrategy::RecordNameStrategy | SubjectNameStrategy::TopicRecordNameStrategy => {
            let Some(names) = index.names.get(&id) else {
                return Some((
                    part.topic_subject(),
                    format!("{what} {id} is not registered"),
                ));
            };
            let indexes = match names {
                RecordNames::One(_) => Vec::new(),
                RecordNames::Messages(_) => match message_indexes(&bytes[HEADER_BYTES..]) {
                    Some(indexes) => indexes,
                    None => {
                        *header_fault = true;
                        return Some((
                            part.topic_subject(),
                            format!(
                                "the {name}'s Protobuf message indexes after {what} {id} are \
                                 malformed"
                            ),
                        ));
                    }
                },
            };
            let Some(record) = names.name(&indexes) else {
                *header_fault = true;
                return Some((
                    part.topic_subject(),
                    format!(
                        "{what} {id} names no record (message indexes {indexes:?}), which {} \
                         needs",
                        part.strategy.name()
                    ),
                ));
            };
            if part.strategy == SubjectNameStrategy::RecordNameStrategy {
                record.to_string().into()
            } else {
                format!("{}-{record}", part.topic).into()
            }
        }
    };
    if index
        .subjects
        .get(subject.as_ref())
        .is_some_and(|ids| ids.contains(&id))
    {
        return None;
    }
    let elsewhere = index
        .subjects
        .iter()
        .filter(|(_, ids)| ids.contains(&id))
        .map(|(name, _)| name.as_str())
        .min();
    let reason = match elsewhere {
        Some(other) => format!(
            "{what} {id} is not registered under subject '{subject}' (it is under '{other}')"
        ),
        None => format!("{what} {id} is not registered"),
    };
    Some((subject.into_owned(), reason))
}

fn check(
    index: &SchemaIndex,
    topic: &str,
    parts: Parts,
    batch: &RecordBatch,
    decompressed_bytes_max: usize,
    caught_up: bool,
) -> Result<Verdict, ApiError> {
    let key_part = Part::new(topic, "key", parts.key_strategy);
    let value_part = Part::new(topic, "value", parts.value_strategy);
    // The subject the refusal names: the first record's fault's.
    let mut refused_subject = None;
    let mut records = Vec::new();
    let mut refused = 0u32;
    let mut header_faults = 0u32;
    for (index_in_batch, record) in batch.records_bounded(decompressed_bytes_max).enumerate() {
        let record = record.map_err(ApiError::from)?;
        let mut header_fault = false;
        // A null key, or a tombstone's null value, carries no schema.
        let key_fault = match record.key.as_ref() {
            Some(key) if parts.keys => fault(index, &key_part, key, &mut header_fault),
            _ => None,
        };
        let value_fault = match record.value.as_ref() {
            Some(value) if parts.values => fault(index, &value_part, value, &mut header_fault),
            _ => None,
        };
        let (subject, reason) = match (key_fault, value_fault) {
            (None, None) => continue,
            (Some(one), None) | (None, Some(one)) => one,
            (Some((subject, key)), Some((_, value))) => (subject, format!("{key}; {value}")),
        };
        refused += 1;
        header_faults += u32::from(header_fault);
        refused_subject.get_or_insert(subject);
        if records.len() < RECORD_ERRORS_MAX {
            records.push(RecordError {
                index: index_in_batch as u32,
                reason,
            });
        }
    }
    let Some(subject) = refused_subject else {
        return Ok(Verdict::Valid);
    };
    if header_faults == 0 && !caught_up {
        return Ok(Verdict::Unseen);
    }
    Ok(Verdict::Refused(ApiError::SchemaValidation {
        subject,
        refused,
        records,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::batch::{Record, RecordBatchBuilder};

    fn framed(id: u32, payload: &[u8]) -> Vec<u8> {
        let mut value = vec![0];
        value.extend_from_slice(&id.to_be_bytes());
        value.extend_from_slice(payload);
        value
    }

    fn batch(records: &[Record]) -> RecordBatch {
        let mut builder = RecordBatchBuilder::new(1);
        for record in records {
            builder.push(record);
        }
        builder.build()
    }

    const VALUES: Parts = Parts {
        keys: false,
        values: true,
        key_strategy: SubjectNameStrategy::TopicNameStrategy,
        value_strategy: SubjectNameStrategy::TopicNameStrategy,
    };

    fn index() -> SchemaIndex {
        SchemaIndex {
            subjects: SubjectIds::from([
                ("orders-value".to_string(), HashSet::from([1, 2])),
                ("users-value".to_string(), HashSet::from([3])),
                ("orders-key".to_string(), HashSet::from([4])),
            ]),
            names: HashMap::new(),
        }
    }

    #[test]
    fn framed_values_with_ids_of_the_topics_subject_and_tombstones_pass() {
        let records = [
            Record::new(framed(1, b"a")).with_key("k"),
            Record::new(framed(2, b"")),
            Record::tombstone("k"),
        ];
        assert_eq!(
            check(&index(), "orders", VALUES, &batch(&records), 1 << 20, false),
            Ok(Verdict::Valid)
        );
    }

    /// A value without the header is refused at once, naming each bad record by its index;
    /// an unknown id alone first asks for a catch-up, then is refused with what is known.
    #[test]
    fn bad_records_are_named_by_index_and_unknown_ids_wait_for_a_catch_up() {
        let records = [
            Record::new(framed(1, b"ok")),
            Record::new("plain"),
            Record::new(framed(3, b"")),
            Record::new(vec![0, 0]),
        ];
        let Ok(Verdict::Refused(ApiError::SchemaValidation {
            subject,
            refused,
            records,
        })) = check(&index(), "orders", VALUES, &batch(&records), 1 << 20, false)
        else {
            panic!("refused");
        };
        assert_eq!((subject.as_str(), refused), ("orders-value", 3));
        let indexes: Vec<u32> = records.iter().map(|record| record.index).collect();
        assert_eq!(indexes, vec![1, 2, 3]);
        assert!(
            records[0].reason.contains("not the magic byte 0"),
            "{records:?}"
        );
        assert!(
            records[1].reason.contains("under 'users-value'"),
            "{records:?}"
        );
        assert!(records[2].reason.contains("2 bytes"), "{records:?}");

        let unknown = [Record::new(framed(9, b"x"))];
        assert_eq!(
            check(&index(), "orders", VALUES, &batch(&unknown), 1 << 20, false),
            Ok(Verdict::Unseen)
        );
        let Ok(Verdict::Refused(error)) =
            check(&index(), "orders", VALUES, &batch(&unknown), 1 << 20, true)
        else {
            panic!("refused after the catch-up");
        };
        assert!(
            error
                .to_string()
                .contains("record 0: schema id 9 is not registered"),
            "{error}"
        );
    }

    #[test]
    fn at_most_record_errors_max_reasons_are_kept_but_all_are_counted() {
        let records: Vec<Record> = (0..40).map(|_| Record::new("plain")).collect();
        let Ok(Verdict::Refused(ApiError::SchemaValidation {
            refused, records, ..
        })) = check(&index(), "orders", VALUES, &batch(&records), 1 << 20, true)
        else {
            panic!("refused");
        };
        assert_eq!((refused, records.len()), (40, RECORD_ERRORS_MAX));
    }

    /// Keys are checked against `<topic>-key` only when the topic asks for it; a null key
    /// passes; a record whose key and value are both at fault is named once, with both.
    #[test]
    fn keys_are_checked_against_the_key_subject_when_asked() {
        let both = Parts {
            keys: true,
            ..VALUES
        };
        let records = [
            Record::new(framed(1, b"a")).with_key(framed(4, b"k")),
            Record::new(framed(2, b"b")),
        ];
        for parts in [VALUES, both] {
            assert_eq!(
                check(&index(), "orders", parts, &batch(&records), 1 << 20, false),
                Ok(Verdict::Valid)
            );
        }
        let bad = [
            Record::new(framed(1, b"a")).with_key("plain-key"),
            Record::new(framed(1, b"a")).with_key(framed(1, b"k")),
            Record::new("plain").with_key("plain-key"),
        ];
        assert_eq!(
            check(&index(), "orders", VALUES, &batch(&bad[..2]), 1 << 20, true),
            Ok(Verdict::Valid),
            "keys are not checked unless asked"
        );
        let Ok(Verdict::Refused(ApiError::SchemaValidation {
            subject,
            refused,
            records,
        })) = check(&index(), "orders", both, &batch(&bad), 1 << 20, true)
        else {
            panic!("refused");
        };
        assert_eq!((subject.as_str(), refused), ("orders-key", 3));
        assert!(
            records[0].reason.contains("the key starts with byte 112"),
            "{records:?}"
        );
        assert!(
            records[1]
                .reason
                .contains("key schema id 1 is not registered under subject 'orders-key'"),
            "{records:?}"
        );
        assert!(
            records[2].reason.contains("key") && records[2].reason.contains("the value"),
            "{records:?}"
        );
    }

    fn named_index() -> SchemaIndex {
        use cairn_control::schema::MessageName;
        let message = |full_name: &str, nested: Vec<MessageName>| MessageName {
            full_name: full_name.to_string(),
            nested,
        };
        SchemaIndex {
            subjects: SubjectIds::from([
                ("com.example.User".to_string(), HashSet::from([1])),
                ("clicks-com.example.User".to_string(), HashSet::from([2])),
                ("shop.Order.Line".to_string(), HashSet::from([3])),
                ("clicks-value".to_string(), HashSet::from([4])),
            ]),
            names: HashMap::from([
                (1, RecordNames::One(Some("com.example.User".to_string()))),
                (2, RecordNames::One(Some("com.example.User".to_string()))),
                (
                    3,
                    RecordNames::Messages(vec![message(
                        "shop.Order",
                        vec![message("shop.Order.Line", Vec::new())],
                    )]),
                ),
                (4, RecordNames::One(None)),
            ]),
        }
    }

    /// With RecordNameStrategy an id must be registered under its schema's record name (for
    /// Protobuf, the message its indexes pick); with TopicRecordNameStrategy under
    /// `<topic>-<record name>`; a schema without a record name is refused for good.
    #[test]
    fn record_name_strategies_check_ids_under_the_record_names_their_schemas_give() {
        let record = Parts {
            value_strategy: SubjectNameStrategy::RecordNameStrategy,
            ..VALUES
        };
        let topic_record = Parts {
            value_strategy: SubjectNameStrategy::TopicRecordNameStrategy,
            ..VALUES
        };
        // Protobuf indexes [0, 0] (count 2, then 0 and 0, zigzag): shop.Order.Line.
        let line = framed(3, &[4, 0, 0, 0xff]);
        let valid = [Record::new(framed(1, b"u")), Record::new(line.clone())];
        assert_eq!(
            check(
                &named_index(),
                "clicks",
                record,
                &batch(&valid),
                1 << 20,
                true
            ),
            Ok(Verdict::Valid)
        );
        let under_topic = [Record::new(framed(2, b"u"))];
        assert_eq!(
            check(
                &named_index(),
                "clicks",
                topic_record,
                &batch(&under_topic),
                1 << 20,
                true
            ),
            Ok(Verdict::Valid)
        );
        let Ok(Verdict::Refused(ApiError::SchemaValidation {
            subject, records, ..
        })) = check(
            &named_index(),
            "clicks",
            record,
            &batch(&under_topic),
            1 << 20,
            true,
        )
        else {
            panic!("id 2 is not under the record's own subject");
        };
        assert_eq!(subject, "com.example.User");
        assert!(
            records[0]
                .reason
                .contains("under 'clicks-com.example.User'"),
            "{records:?}"
        );

        // Indexes [0] (the single byte 0) pick shop.Order, under which id 3 is not.
        let order = [Record::new(framed(3, &[0, 0xff]))];
        let Ok(Verdict::Refused(ApiError::SchemaValidation { subject, .. })) = check(
            &named_index(),
            "clicks",
            record,
            &batch(&order),
            1 << 20,
            true,
        ) else {
            panic!("refused");
        };
        assert_eq!(subject, "shop.Order");

        // Malformed indexes and a schema without a name are final before any catch-up;
        // an id not known yet waits for one.
        for bad in [framed(3, &[]), framed(3, &[2, 4]), framed(4, b"x")] {
            assert!(
                matches!(
                    check(
                        &named_index(),
                        "clicks",
                        record,
                        &batch(&[Record::new(bad.clone())]),
                        1 << 20,
                        false
                    ),
                    Ok(Verdict::Refused(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            check(
                &named_index(),
                "clicks",
                record,
                &batch(&[Record::new(framed(9, b""))]),
                1 << 20,
                false
            ),
            Ok(Verdict::Unseen)
        );
    }

    #[test]
    fn protobuf_message_indexes_decode_as_confluent_writes_them() {
        assert_eq!(message_indexes(&[0]), Some(vec![0]));
        assert_eq!(message_indexes(&[2, 2]), Some(vec![1]));
        assert_eq!(message_indexes(&[4, 0, 6, 9]), Some(vec![0, 3]));
        assert_eq!(message_indexes(&[2, 0xac, 0x02]), Some(vec![150]));
        assert_eq!(message_indexes(&[]), None);
        assert_eq!(message_indexes(&[4, 0]), None, "fewer indexes than counted");
        assert_eq!(message_indexes(&[2, 1]), None, "a negative index");
        assert_eq!(message_indexes(&[1]), None, "a negative count");
        assert_eq!(
            message_indexes(&[0x82, 0x01]),
            None,
            "more than the nesting bound"
        );
        assert_eq!(message_indexes(&[0xff; 11]), None, "a varint without end");
    }
}
