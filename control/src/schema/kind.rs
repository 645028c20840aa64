//! Schema types, their canonical form and compatibility.
//!
//! - Avro, parsed by the `apache-avro` crate. Identity is the parsed schema written back as
//!   JSON (the crate's serialisation): whitespace, attribute order and redundant namespaces do
//!   not matter, defaults and docs do (Avro's "Parsing Canonical Form" drops defaults, which
//!   decide compatibility, so it cannot be the identity).
//! - Protobuf ([`super::protobuf`]): compiled by `protox`; identity is the descriptor.
//! - JSON Schema ([`super::json`]): a structural check; identity is the sorted document.
//!
//! A schema's references (Confluent's: other registered schemas it imports, by name) are part
//! of its identity: the same text with other references is another schema.

use super::json::JsonSchema;
use super::protobuf::ProtoSchema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bytes of schema text a registration may carry.
pub const SCHEMA_BYTES_MAX: usize = 256 * 1024;
/// References one schema may name (its own, not counting theirs).
pub const REFERENCES_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SchemaType {
    #[serde(rename = "AVRO")]
    Avro,
    #[serde(rename = "JSON")]
    Json,
    #[serde(rename = "PROTOBUF")]
    Protobuf,
}

impl SchemaType {
    /// The `schemaType` field as Confluent spells it; absent means Avro.
    pub fn parse(name: Option<&str>) -> Result<SchemaType, String> {
        match name {
            None | Some("AVRO") => Ok(SchemaType::Avro),
            Some("JSON") => Ok(SchemaType::Json),
            Some("PROTOBUF") => Ok(SchemaType::Protobuf),
            Some(other) => Err(format!(
                "unknown schema type '{}' (served: {})",
                other.chars().take(64).collect::<String>(),
                SchemaType::SERVED.join(", ")
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
            SchemaType::Json => "JSON",
            SchemaType::Protobuf => "PROTOBUF",
        }
    }

    /// The `schemaType` field of an answer or a record: absent for Avro, as Confluent writes it.
    pub fn field(self) -> Option<&'static str> {
        match self {
            SchemaType::Avro => None,
            other => Some(other.name()),
        }
    }

    /// The types `GET /schemas/types` lists (Confluent's order).
    pub const SERVED: &'static [&'static str] = &["JSON", "PROTOBUF", "AVRO"];
}

/// Confluent's schema reference: the schema imports `name`, which is `subject`'s `version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: u32,
}

/// A registration's, lookup's or check's body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaRequest {
    pub schema: String,
    #[serde(
        rename = "schemaType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub schema_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
}

#[derive(Debug, Clone)]
enum Body {
    Avro(Box<Schema>),
    Json(JsonSchema),
    Protobuf(ProtoSchema),
}

/// A schema that parsed, with its canonical text.
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    pub schema_type: SchemaType,
    /// The text stored and served: Avro and JSON in their canonical form, Protobuf as first
    /// given (its descriptor decides identity).
    pub canonical: String,
    pub references: Vec<Reference>,
    identity: String,
    body: Body,
}

impl PartialEq for ParsedSchema {
    fn eq(&self, other: &ParsedSchema) -> bool {
        self.schema_type == other.schema_type && self.identity == other.identity
    }
}

impl ParsedSchema {
    /// Parses `text`; `imports` are the schemas its references resolve to, transitively
    /// (import name → schema text).
    pub fn parse(
        schema_type: SchemaType,
        text: &str,
        references: Vec<Reference>,
        imports: &BTreeMap<String, String>,
    ) -> Result<ParsedSchema, String> {
        if text.len() > SCHEMA_BYTES_MAX {
            return Err(format!(
                "the schema is {} bytes, more than {SCHEMA_BYTES_MAX}",
                text.len()
            ));
        }
        if references.len() > REFERENCES_MAX {
            return Err(format!("more than {REFERENCES_MAX} references"));
        }
        let (canonical, identity, body) = match schema_type {
            SchemaType::Avro => {
                if !references.is_empty() {
                    return Err("references are served for PROTOBUF and JSON schemas".to_string());
                }
                let avro = Schema::parse_str(text).map_err(|error| error.to_string())?;
                let canonical = serde_json::to_string(&avro).map_err(|error| error.to_string())?;
                (canonical.clone(), canonical, Body::Avro(Box::new(avro)))
            }
            SchemaType::Json => {
                let json = JsonSchema::parse(text)?;
                let canonical = json.canonical();
                (canonical.clone(), canonical, Body::Json(json))
            }
            SchemaType::Protobuf => {
                let proto = ProtoSchema::parse(text, imports)?;
                let stored = proto.stored_text(text, imports);
                (stored, proto.identity(), Body::Protobuf(proto))
            }
        };
        let identity = if references.is_empty() {
            identity
        } else {
            let listed = serde_json::to_string(&references).map_err(|error| error.to_string())?;
            format!("{identity}\n{listed}")
        };
        Ok(ParsedSchema {
            schema_type,
            canonical,
            references,
            identity,
            body,
        })
    }

    /// What decides "the same schema" (and so the same id): type-specific, plus references.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The record names a serializer's RecordNameStrategy would give data of this schema:
    /// an Avro schema's full name (a named type's, else its type's name, as Java's
    /// `Schema.getFullName`), a JSON schema's `title`, and a Protobuf file's messages.
    pub fn record_names(&self) -> RecordNames {
        match &self.body {
            Body::Avro(avro) => RecordNames::One(match avro.name() {
                Some(name) => Some(name.fullname(None)),
                None => match serde_json::from_str::<serde_json::Value>(&self.canonical) {
                    Ok(serde_json::Value::String(primitive)) => Some(primitive),
                    Ok(serde_json::Value::Object(object)) => object
                        .get("type")
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_string),
                    Ok(serde_json::Value::Array(_)) => Some("union".to_string()),
                    _ => None,
                },
            }),
            Body::Json(json) => RecordNames::One(json.title().map(str::to_string)),
            Body::Protobuf(proto) => RecordNames::Messages(proto.message_names()),
        }
    }

    /// A Protobuf schema as a base64 `FileDescriptorProto` (`?format=serialized`).
    pub fn serialized(&self) -> Option<String> {
        match &self.body {
            Body::Protobuf(proto) => Some(proto.serialized()),
            _ => None,
        }
    }

    /// Why data written with `writer` cannot be read with `self`; `None` when it can.
    fn cannot_read(&self, writer: &ParsedSchema) -> Option<String> {
        match (&self.body, &writer.body) {
            (Body::Avro(reader), Body::Avro(writer)) => {
                SchemaCompatibility::can_read(writer, reader)
                    .err()
                    .map(|error| error.to_string())
            }
            (Body::Json(reader), Body::Json(writer)) => {
                let found = JsonSchema::cannot_read(reader, writer);
                (!found.is_empty()).then(|| found.join("; "))
            }
            (Body::Protobuf(reader), Body::Protobuf(writer)) => {
                let found = ProtoSchema::incompatible_changes(writer, reader);
                (!found.is_empty()).then(|| found.join("; "))
            }
            _ => Some(format!(
                "a {} schema cannot read {} data",
                self.schema_type.name(),
                writer.schema_type.name()
            )),
        }
    }
}

/// What [`ParsedSchema::record_names`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordNames {
    /// Avro and JSON Schema: the schema's one record name, when it has one.
    One(Option<String>),
    /// Protobuf: the file's messages in declaration order, each with the messages declared in
    /// it (map entries included, as protoc numbers them): a record's message indexes (after
    /// its schema id, Confluent's wire format) pick one.
    Messages(Vec<MessageName>),
}

/// A Protobuf message's full name and the messages declared in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageName {
    pub full_name: String,
    pub nested: Vec<MessageName>,
}

impl RecordNames {
    /// The record name for data carrying `indexes` (Protobuf's message indexes; the others
    /// carry none); `None` when it names nothing.
    pub fn name(&self, indexes: &[usize]) -> Option<&str> {
        match self {
            RecordNames::One(name) => name.as_deref(),
            RecordNames::Messages(top) => {
                let (first, rest) = indexes.split_first()?;
                let mut message = top.get(*first)?;
                for index in rest {
                    message = message.nested.get(*index)?;
                }
                Some(&message.full_name)
            }
        }
    }
}

/// Confluent's compatibility levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
    None,
}

impl Level {
    pub fn parse(name: &str) -> Option<Level> {
        serde_json::from_value(serde_json::Value::String(name.to_ascii_uppercase())).ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
            Level::None => "NONE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    /// Why `candidate` may not follow `existing` (oldest first, soft-deleted versions left
    /// out) under this level; empty when it may. A non-transitive level checks the latest
    /// version only.
    pub fn violations(self, candidate: &ParsedSchema, existing: &[&ParsedSchema]) -> Vec<String> {
        let checked: &[&ParsedSchema] = if self.transitive() {
            existing
        } else {
            existing.last().map_or(&[], std::slice::from_ref)
        };
        let (backward, forward) = match self {
            Level::None => (false, false),
            Level::Backward | Level::BackwardTransitive => (true, false),
            Level::Forward | Level::ForwardTransitive => (false, true),
            Level::Full | Level::FullTransitive => (true, true),
        };
        let mut messages = Vec::new();
        for old in checked {
            if backward {
                if let Some(why) = candidate.cannot_read(old) {
                    messages.push(format!(
                        "{}: the new schema cannot read data written with an older one: {why}",
                        self.name()
                    ));
                }
            }
            if forward {
                if let Some(why) = old.cannot_read(candidate) {
                    messages.push(format!(
                        "{}: an older schema cannot read data written with the new one: {why}",
                        self.name()
                    ));
                }
            }
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avro(text: &str) -> ParsedSchema {
        ParsedSchema::parse(SchemaType::Avro, text, Vec::new(), &BTreeMap::new()).unwrap()
    }

    #[test]
    fn record_names_follow_what_confluents_serializers_name_records() {
        let named =
            avro(r#"{"type":"record","name":"User","namespace":"com.example","fields":[]}"#);
        assert_eq!(named.record_names().name(&[]), Some("com.example.User"));
        assert_eq!(avro(r#""string""#).record_names().name(&[]), Some("string"));
        let titled = ParsedSchema::parse(
            SchemaType::Json,
            r#"{"title":"Click","type":"object"}"#,
            Vec::new(),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(titled.record_names().name(&[]), Some("Click"));
        let untitled = ParsedSchema::parse(
            SchemaType::Json,
            r#"{"type":"object"}"#,
            Vec::new(),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(untitled.record_names().name(&[]), None);
        let proto = ParsedSchema::parse(
            SchemaType::Protobuf,
            "syntax = \"proto3\"; package shop;\n\
             message Order { message Line { string sku = 1; } map<string, int32> tags = 1; \
             message Note { string text = 1; } }\n\
             message Refund { int64 id = 1; }",
            Vec::new(),
            &BTreeMap::new(),
        )
        .unwrap();
        let names = proto.record_names();
        assert_eq!(names.name(&[0]), Some("shop.Order"));
        assert_eq!(names.name(&[1]), Some("shop.Refund"));
        assert_eq!(names.name(&[0, 0]), Some("shop.Order.Line"));
        // The map's entry type is declared (by protoc) between Line and Note.
        assert_eq!(names.name(&[0, 2]), Some("shop.Order.Note"));
        assert_eq!(names.name(&[2]), None);
        assert_eq!(names.name(&[0, 0, 0]), None);
        assert_eq!(names.name(&[]), None);
    }

    fn parse(text: &str) -> Result<ParsedSchema, String> {
        ParsedSchema::parse(SchemaType::Avro, text, Vec::new(), &BTreeMap::new())
    }

    const V1: &str =
        r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"}]}"#;
    const V2_WITH_DEFAULT: &str = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"},{"name":"age","type":"int","default":0}]}"#;
    const V2_NO_DEFAULT: &str = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"},{"name":"age","type":"int"}]}"#;
    const EMPTY: &str = r#"{"type":"record","name":"User","fields":[]}"#;

    #[test]
    fn whitespace_and_attribute_order_do_not_change_the_canonical_form() {
        let spaced = r#"{ "name" : "User", "type" : "record",
            "fields" : [ { "type" : "string", "name" : "name" } ] }"#;
        assert_eq!(avro(V1).canonical, avro(spaced).canonical);
        assert_ne!(avro(V1).canonical, avro(V2_WITH_DEFAULT).canonical);
    }

    #[test]
    fn a_default_changes_the_canonical_form() {
        assert_ne!(
            avro(V2_WITH_DEFAULT).canonical,
            avro(V2_NO_DEFAULT).canonical
        );
    }

    #[test]
    fn invalid_schemas_are_refused() {
        assert!(parse("{").is_err());
        assert!(parse(r#"{"type":"nonsense"}"#).is_err());
        let huge = format!("\"{}\"", "x".repeat(SCHEMA_BYTES_MAX));
        assert!(parse(&huge).unwrap_err().contains("more than"));
        assert_eq!(
            SchemaType::parse(Some("PROTOBUF")),
            Ok(SchemaType::Protobuf)
        );
        assert!(SchemaType::parse(Some("XML")).is_err());
    }

    #[test]
    fn backward_allows_a_new_field_with_a_default_only() {
        let v1 = avro(V1);
        assert!(Level::Backward
            .violations(&avro(V2_WITH_DEFAULT), &[&v1])
            .is_empty());
        assert_eq!(
            Level::Backward
                .violations(&avro(V2_NO_DEFAULT), &[&v1])
                .len(),
            1
        );
    }

    #[test]
    fn removing_a_field_is_backward_compatible_but_not_forward() {
        // Confluent's rule: the new reader drops `name` and reads old data (extra writer fields
        // are skipped), so BACKWARD holds; an old reader cannot read new data lacking `name`.
        let v1 = avro(V1);
        let removed = avro(EMPTY);
        assert!(Level::Backward.violations(&removed, &[&v1]).is_empty());
        assert_eq!(Level::Forward.violations(&removed, &[&v1]).len(), 1);
        assert_eq!(Level::Full.violations(&removed, &[&v1]).len(), 1);
        assert!(Level::None.violations(&removed, &[&v1]).is_empty());
    }

    #[test]
    fn transitive_levels_check_every_version_others_the_latest() {
        let v1 = avro(V1);
        let v2 = avro(V2_WITH_DEFAULT);
        // Against v1 alone "removed name" passes FORWARD only if v1 can read it: it cannot.
        let removed_age_and_name = avro(EMPTY);
        assert_eq!(
            Level::ForwardTransitive
                .violations(&removed_age_and_name, &[&v1, &v2])
                .len(),
            2
        );
        assert_eq!(
            Level::Forward
                .violations(&removed_age_and_name, &[&v1, &v2])
                .len(),
            1
        );
        assert!(Level::Forward.violations(&v2, &[]).is_empty());
    }

    #[test]
    fn levels_parse_in_any_case() {
        assert_eq!(Level::parse("full_transitive"), Some(Level::FullTransitive));
        assert_eq!(Level::parse("NONE"), Some(Level::None));
        assert_eq!(Level::parse("sideways"), None);
        assert_eq!(Level::default(), Level::Backward);
    }

    fn typed(schema_type: SchemaType, text: &str) -> ParsedSchema {
        ParsedSchema::parse(schema_type, text, Vec::new(), &BTreeMap::new()).unwrap()
    }

    #[test]
    fn protobuf_and_json_levels_compare_in_the_right_direction() {
        // A message added: BACKWARD allows it (the old schema's messages all remain); FORWARD
        // compares the other way round, where the old schema lacks it: MESSAGE_REMOVED.
        let old = typed(
            SchemaType::Protobuf,
            "syntax = \"proto3\"; message A { int32 a = 1; }",
        );
        let new = typed(
            SchemaType::Protobuf,
            "syntax = \"proto3\"; message A { int32 a = 1; } message B {}",
        );
        assert!(Level::Backward.violations(&new, &[&old]).is_empty());
        let forward = Level::Forward.violations(&new, &[&old]);
        assert!(
            forward.len() == 1 && forward[0].contains("MESSAGE_REMOVED"),
            "{forward:?}"
        );
        assert_eq!(Level::Full.violations(&new, &[&old]).len(), 1);
        // JSON: a new required property breaks BACKWARD only; dropping one breaks FORWARD only.
        let open = typed(
            SchemaType::Json,
            r#"{"type":"object","properties":{"a":{"type":"string"}}}"#,
        );
        let required = typed(
            SchemaType::Json,
            r#"{"type":"object","properties":{"a":{"type":"string"}},"required":["a"]}"#,
        );
        assert_eq!(Level::Backward.violations(&required, &[&open]).len(), 1);
        assert!(Level::Forward.violations(&required, &[&open]).is_empty());
        // Types never read each other.
        let avro = avro(V1);
        assert_eq!(Level::Backward.violations(&open, &[&avro]).len(), 1);
        assert!(Level::None.violations(&open, &[&avro]).is_empty());
    }
}
