//! Schema types, their canonical form and compatibility.
//!
//! Avro is parsed by the `apache-avro` crate. Identity is the parsed schema written back as
//! JSON (the crate's serialisation): whitespace, attribute order and redundant namespaces do
//! not matter, defaults and docs do (Avro's "Parsing Canonical Form" drops defaults, which
//! decide compatibility, so it cannot be the identity). JSON Schema and Protobuf are refused
//! with a typed error until they are served.

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

/// Bytes of schema text a registration may carry.
pub const SCHEMA_BYTES_MAX: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SchemaType {
    #[serde(rename = "AVRO")]
    Avro,
}

impl SchemaType {
    /// The `schemaType` field as Confluent spells it; absent means Avro.
    pub fn parse(name: Option<&str>) -> Result<SchemaType, String> {
        match name {
            None | Some("AVRO") => Ok(SchemaType::Avro),
            Some(other @ ("JSON" | "PROTOBUF")) => Err(format!(
                "schema type {other} is not served yet (served: AVRO)"
            )),
            Some(other) => Err(format!("unknown schema type '{other}' (served: AVRO)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
        }
    }

    /// The types `GET /schemas/types` lists.
    pub const SERVED: &'static [&'static str] = &["AVRO"];
}

/// A schema that parsed, with its canonical text.
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    pub schema_type: SchemaType,
    pub canonical: String,
    avro: Schema,
}

impl PartialEq for ParsedSchema {
    fn eq(&self, other: &ParsedSchema) -> bool {
        self.schema_type == other.schema_type && self.canonical == other.canonical
    }
}

impl ParsedSchema {
    pub fn parse(schema_type: SchemaType, text: &str) -> Result<ParsedSchema, String> {
        if text.len() > SCHEMA_BYTES_MAX {
            return Err(format!(
                "the schema is {} bytes, more than {SCHEMA_BYTES_MAX}",
                text.len()
            ));
        }
        match schema_type {
            SchemaType::Avro => {
                let avro = Schema::parse_str(text).map_err(|error| error.to_string())?;
                let canonical = serde_json::to_string(&avro).map_err(|error| error.to_string())?;
                Ok(ParsedSchema {
                    schema_type,
                    canonical,
                    avro,
                })
            }
        }
    }

    /// Why data written with `writer` cannot be read with `self`; `None` when it can.
    fn cannot_read(&self, writer: &ParsedSchema) -> Option<String> {
        if self.schema_type != writer.schema_type {
            return Some(format!(
                "a {} schema cannot read {} data",
                self.schema_type.name(),
                writer.schema_type.name()
            ));
        }
        SchemaCompatibility::can_read(&writer.avro, &self.avro)
            .err()
            .map(|error| error.to_string())
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
        ParsedSchema::parse(SchemaType::Avro, text).unwrap()
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
        assert!(ParsedSchema::parse(SchemaType::Avro, "{").is_err());
        assert!(ParsedSchema::parse(SchemaType::Avro, r#"{"type":"nonsense"}"#).is_err());
        let huge = format!("\"{}\"", "x".repeat(SCHEMA_BYTES_MAX));
        assert!(ParsedSchema::parse(SchemaType::Avro, &huge)
            .unwrap_err()
            .contains("more than"));
        assert!(SchemaType::parse(Some("PROTOBUF")).is_err());
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
}
