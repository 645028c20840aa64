//! The records of `_schemas`, in Confluent's shapes, so that a compacted `_schemas` keeps the
//! newest record per key (issue 18, part 1) and means what Confluent's registry would read:
//!
//! - key `{"keytype":"SCHEMA","subject":s,"version":v,"magic":1}`, value
//!   `{"subject":s,"version":v,"id":id,"schema":text,"deleted":bool}` (plus `schemaType` when
//!   not Avro, and `references` when it has some): one version of one subject. A soft delete rewrites it with `deleted: true`.
//! - key `{"keytype":"CONFIG","subject":s|null,"magic":0}`, value
//!   `{"compatibilityLevel":"BACKWARD"}`: a subject's level, or the global one for `null`.
//! - key `{"keytype":"ID_HIGH_WATER","magic":0}`, value `{"highestId":n}`: Cairn's own (a
//!   Confluent registry would skip it): every id up to `n` has been given. A permanent delete
//!   writes it beside its tombstones, so that once compaction has cleaned away every record of
//!   the highest ids, the next id still does not go back (ids are never reused). Its newest
//!   record is the one compaction keeps: see `Registry::high_water_repair` for the race.
//!
//! A removal (hard delete, config delete) is a tombstone, a null value under the same key, as
//! in Confluent's registry; compaction drops the key's records and, after
//! `delete.retention.ms`, the tombstone. Logs written before Cairn stored null values carry
//! the marker value `{"tombstone":true}` instead, still read as a removal.

use serde::{Deserialize, Serialize};

use super::kind::{Level, Reference};

/// One record to append: key and value bytes (`None`: a tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaRecord {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype")]
pub enum RecordKey {
    #[serde(rename = "SCHEMA")]
    Schema {
        subject: String,
        version: u32,
        magic: u32,
    },
    #[serde(rename = "CONFIG")]
    Config { subject: Option<String>, magic: u32 },
    #[serde(rename = "ID_HIGH_WATER")]
    IdHighWater { magic: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdHighWaterValue {
    #[serde(rename = "highestId")]
    pub highest_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaValue {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    #[serde(
        rename = "schemaType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub schema_type: Option<String>,
    pub schema: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigValue {
    #[serde(rename = "compatibilityLevel")]
    pub compatibility_level: Level,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TombstoneValue {
    tombstone: bool,
}

/// A decoded record; `None` parts mean the marker that removes the key.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Schema {
        subject: String,
        version: u32,
        value: Option<SchemaValue>,
    },
    Config {
        subject: Option<String>,
        value: Option<ConfigValue>,
    },
    /// Every id up to `highest_id` has been given (`None`: a tombstone, which changes nothing).
    IdHighWater { highest_id: Option<u32> },
}

/// The removal marker of logs written before null values were stored.
#[cfg(test)]
const TOMBSTONE: &[u8] = br#"{"tombstone":true}"#;

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (string keys, no maps with other keys).
    serde_json::to_vec(value).expect("registry records serialise")
}

pub fn schema_record(value: &SchemaValue) -> SchemaRecord {
    SchemaRecord {
        key: encode(&RecordKey::Schema {
            subject: value.subject.clone(),
            version: value.version,
            magic: 1,
        }),
        value: Some(encode(value)),
    }
}

pub fn schema_removal(subject: &str, version: u32) -> SchemaRecord {
    SchemaRecord {
        key: encode(&RecordKey::Schema {
            subject: subject.to_string(),
            version,
            magic: 1,
        }),
        value: None,
    }
}

pub fn id_high_water_record(highest_id: u32) -> SchemaRecord {
    SchemaRecord {
        key: encode(&RecordKey::IdHighWater { magic: 0 }),
        value: Some(encode(&IdHighWaterValue { highest_id })),
    }
}

pub fn config_record(subject: Option<&str>, level: Option<Level>) -> SchemaRecord {
    SchemaRecord {
        key: encode(&RecordKey::Config {
            subject: subject.map(str::to_string),
            magic: 0,
        }),
        value: level.map(|level| {
            encode(&ConfigValue {
                compatibility_level: level,
            })
        }),
    }
}

/// Decodes a committed record (`value` `None`: a tombstone); `Err` for anything that is not
/// a registry record (the topic accepts produce from any client, so every byte here is
/// untrusted).
pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Decoded, String> {
    let key = key.ok_or("a _schemas record without a key")?;
    let key: RecordKey = serde_json::from_slice(key).map_err(|error| error.to_string())?;
    let (removal, value) = match value {
        None => (true, &[][..]),
        Some(value) => (
            serde_json::from_slice::<TombstoneValue>(value)
                .map(|marker| marker.tombstone)
                .unwrap_or(false),
            value,
        ),
    };
    Ok(match key {
        RecordKey::Schema {
            subject, version, ..
        } => {
            let value = if removal {
                None
            } else {
                let value: SchemaValue =
                    serde_json::from_slice(value).map_err(|error| error.to_string())?;
                if value.subject != subject || value.version != version {
                    return Err("a SCHEMA record whose value names another key".to_string());
                }
                Some(value)
            };
            Decoded::Schema {
                subject,
                version,
                value,
            }
        }
        RecordKey::Config { subject, .. } => Decoded::Config {
            subject,
            value: if removal {
                None
            } else {
                Some(serde_json::from_slice(value).map_err(|error| error.to_string())?)
            },
        },
        RecordKey::IdHighWater { .. } => Decoded::IdHighWater {
            highest_id: if removal {
                None
            } else {
                let value: IdHighWaterValue =
                    serde_json::from_slice(value).map_err(|error| error.to_string())?;
                Some(value.highest_id)
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_confluents_shape() {
        let record = schema_record(&SchemaValue {
            subject: "orders-value".to_string(),
            version: 2,
            id: 7,
            schema_type: None,
            schema: "\"string\"".to_string(),
            references: Vec::new(),
            deleted: false,
        });
        assert_eq!(
            String::from_utf8(record.key).unwrap(),
            r#"{"keytype":"SCHEMA","subject":"orders-value","version":2,"magic":1}"#
        );
        assert_eq!(
            String::from_utf8(record.value.unwrap()).unwrap(),
            r#"{"subject":"orders-value","version":2,"id":7,"schema":"\"string\"","deleted":false}"#
        );
        let config = config_record(None, Some(Level::Full));
        assert_eq!(
            String::from_utf8(config.key).unwrap(),
            r#"{"keytype":"CONFIG","subject":null,"magic":0}"#
        );
        assert_eq!(
            String::from_utf8(config.value.unwrap()).unwrap(),
            r#"{"compatibilityLevel":"FULL"}"#
        );
        let high_water = id_high_water_record(12);
        assert_eq!(
            String::from_utf8(high_water.key).unwrap(),
            r#"{"keytype":"ID_HIGH_WATER","magic":0}"#
        );
        assert_eq!(
            String::from_utf8(high_water.value.unwrap()).unwrap(),
            r#"{"highestId":12}"#
        );
    }

    #[test]
    fn records_round_trip_and_tombstones_and_old_markers_decode_as_removals() {
        let removal = schema_removal("s", 3);
        assert_eq!(removal.value, None);
        assert_eq!(
            decode(Some(&removal.key), removal.value.as_deref()).unwrap(),
            Decoded::Schema {
                subject: "s".to_string(),
                version: 3,
                value: None
            }
        );
        // A log written before null values were stored.
        assert_eq!(
            decode(Some(&removal.key), Some(TOMBSTONE)).unwrap(),
            Decoded::Schema {
                subject: "s".to_string(),
                version: 3,
                value: None
            }
        );
        let config = config_record(Some("s"), None);
        assert_eq!(
            decode(Some(&config.key), config.value.as_deref()).unwrap(),
            Decoded::Config {
                subject: Some("s".to_string()),
                value: None
            }
        );
    }

    #[test]
    fn foreign_records_are_errors() {
        assert!(decode(None, Some(b"{}")).is_err());
        assert!(decode(Some(b"not json"), Some(b"{}")).is_err());
        assert!(decode(Some(br#"{"keytype":"NOOP","magic":0}"#), Some(b"{}")).is_err());
        let key = br#"{"keytype":"SCHEMA","subject":"a","version":1,"magic":1}"#;
        let other = br#"{"subject":"b","version":1,"id":1,"schema":"\"int\""}"#;
        assert!(decode(Some(key), Some(other)).is_err());
        let high_water = br#"{"keytype":"ID_HIGH_WATER","magic":0}"#;
        assert!(decode(Some(high_water), Some(br#"{"highestId":-1}"#)).is_err());
    }
}
