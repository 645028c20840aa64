//! The records of `_schemas`, in Confluent's shapes, so that a compacted `_schemas` keeps the
//! newest record per key (issue 18, part 1) and means what Confluent's registry would read:
//!
//! - key `{"keytype":"SCHEMA","subject":s,"version":v,"magic":1}`, value
//!   `{"subject":s,"version":v,"id":id,"schema":text,"deleted":bool}` (plus `schemaType` when
//!   not Avro, and `references` when it has some): one version of one subject. A soft delete rewrites it with `deleted: true`.
//! - key `{"keytype":"CONFIG","subject":s|null,"magic":0}`, value
//!   `{"compatibilityLevel":"BACKWARD"}`: a subject's level, or the global one for `null`.
//!
//! Confluent removes a key (hard delete, config delete) with a null value. Cairn's log does not
//! store null values yet (a tombstone is refused at produce), so a removal is the marker value
//! `{"tombstone":true}` under the same key; once compaction lands it becomes a real null.

use serde::{Deserialize, Serialize};

use super::kind::{Level, Reference};

/// One record to append: key and value bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
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
}

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
        value: encode(value),
    }
}

pub fn schema_removal(subject: &str, version: u32) -> SchemaRecord {
    SchemaRecord {
        key: encode(&RecordKey::Schema {
            subject: subject.to_string(),
            version,
            magic: 1,
        }),
        value: TOMBSTONE.to_vec(),
    }
}

pub fn config_record(subject: Option<&str>, level: Option<Level>) -> SchemaRecord {
    SchemaRecord {
        key: encode(&RecordKey::Config {
            subject: subject.map(str::to_string),
            magic: 0,
        }),
        value: match level {
            Some(level) => encode(&ConfigValue {
                compatibility_level: level,
            }),
            None => TOMBSTONE.to_vec(),
        },
    }
}

/// Decodes a committed record; `Err` for anything that is not a registry record (the topic
/// accepts produce from any client, so every byte here is untrusted).
pub fn decode(key: Option<&[u8]>, value: &[u8]) -> Result<Decoded, String> {
    let key = key.ok_or("a _schemas record without a key")?;
    let key: RecordKey = serde_json::from_slice(key).map_err(|error| error.to_string())?;
    let removal = serde_json::from_slice::<TombstoneValue>(value)
        .map(|marker| marker.tombstone)
        .unwrap_or(false);
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
            String::from_utf8(record.value).unwrap(),
            r#"{"subject":"orders-value","version":2,"id":7,"schema":"\"string\"","deleted":false}"#
        );
        let config = config_record(None, Some(Level::Full));
        assert_eq!(
            String::from_utf8(config.key).unwrap(),
            r#"{"keytype":"CONFIG","subject":null,"magic":0}"#
        );
        assert_eq!(
            String::from_utf8(config.value).unwrap(),
            r#"{"compatibilityLevel":"FULL"}"#
        );
    }

    #[test]
    fn records_round_trip_and_markers_decode_as_removals() {
        let removal = schema_removal("s", 3);
        assert_eq!(
            decode(Some(&removal.key), &removal.value).unwrap(),
            Decoded::Schema {
                subject: "s".to_string(),
                version: 3,
                value: None
            }
        );
        let config = config_record(Some("s"), None);
        assert_eq!(
            decode(Some(&config.key), &config.value).unwrap(),
            Decoded::Config {
                subject: Some("s".to_string()),
                value: None
            }
        );
    }

    #[test]
    fn foreign_records_are_errors() {
        assert!(decode(None, b"{}").is_err());
        assert!(decode(Some(b"not json"), b"{}").is_err());
        assert!(decode(Some(br#"{"keytype":"NOOP","magic":0}"#), b"{}").is_err());
        let key = br#"{"keytype":"SCHEMA","subject":"a","version":1,"magic":1}"#;
        let other = br#"{"subject":"b","version":1,"id":1,"schema":"\"int\""}"#;
        assert!(decode(Some(key), other).is_err());
    }
}
