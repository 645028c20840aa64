//! JSON Schema: a structural check that a document is a JSON Schema (drafts 4 to 2020-12, the
//! keywords whose shape the specification fixes), its canonical form, and Confluent's JSON
//! Schema compatibility for the common cases.
//!
//! Identity: the document written back with sorted keys and no whitespace.
//!
//! Compatibility asks whether a reader schema accepts every document a writer schema accepts
//! (BACKWARD: reader = the new schema, writer = an older one; FORWARD the reverse). Refused,
//! with Confluent's difference names:
//! - `TYPE_NARROWED` / `TYPE_CHANGED`: the reader allows fewer types (`integer` fits `number`);
//! - `PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL`: the reader declares a property the writer did not
//!   while the writer allowed any other property (its documents may carry it with any value);
//!   on a closed writer (`additionalProperties: false`) adding one is allowed;
//! - `PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL`: the reader is closed and drops a property the
//!   writer declared; on an open reader removing one is allowed;
//! - `REQUIRED_ATTRIBUTE_ADDED`: the reader requires a property the writer did not;
//! - `ADDITIONAL_PROPERTIES_REMOVED` / `ADDITIONAL_PROPERTIES_NARROWED`: the reader closes or
//!   restricts what the writer left open;
//! - `ENUM_ARRAY_NARROWED` / `ENUM_ARRAY_ADDED`, `CONST_CHANGED`;
//! - bounds made tighter or added: `MAX_LENGTH_*`, `MIN_LENGTH_*`, `MAXIMUM_*`, `MINIMUM_*`,
//!   `EXCLUSIVE_*`, `MAX_ITEMS_*`, `MIN_ITEMS_*`, `MAX_PROPERTIES_*`, `MIN_PROPERTIES_*`,
//!   `PATTERN_*`, `MULTIPLE_OF_*`, `UNIQUE_ITEMS_ADDED`;
//! - `COMBINED_TYPE_SUBSCHEMAS_CHANGED`: a `oneOf`/`anyOf` branch of the writer that no branch
//!   of the reader accepts, or an `allOf` branch of the reader that no writer branch satisfies;
//! - `FALSE_SCHEMA`: a reader `false` schema where the writer accepted something.
//!
//! Sub-schemas (`properties`, `items`, `additionalProperties`, combinators, local `$ref` into
//! `definitions`/`$defs`) are compared recursively, to a bounded depth.

use serde_json::{Map, Value};

/// Nesting a schema document may have.
pub const DEPTH_MAX: usize = 64;

const TYPES: &[&str] = &[
    "null", "boolean", "object", "array", "number", "string", "integer",
];

/// A JSON Schema that passed the structural check.
#[derive(Debug, Clone)]
pub struct JsonSchema {
    root: Value,
}

fn schema_at(value: &Value, path: &str, depth: usize) -> Result<(), String> {
    if depth > DEPTH_MAX {
        return Err(format!("{path}: nested deeper than {DEPTH_MAX}"));
    }
    let object = match value {
        Value::Bool(_) => return Ok(()),
        Value::Object(object) => object,
        _ => return Err(format!("{path}: a schema is an object or a boolean")),
    };
    let child = |key: &str| format!("{path}/{key}");
    for (key, value) in object {
        let must = |ok: bool, what: &str| -> Result<(), String> {
            if ok {
                Ok(())
            } else {
                Err(format!("{path}/{key}: {what}"))
            }
        };
        match key.as_str() {
            "type" => {
                let names: Vec<&Value> = match value {
                    Value::Array(names) if !names.is_empty() => names.iter().collect(),
                    Value::String(_) => vec![value],
                    _ => return Err(format!("{}: a type name or a list of them", child(key))),
                };
                for name in names {
                    if !name.as_str().is_some_and(|name| TYPES.contains(&name)) {
                        return Err(format!(
                            "{}: {name} is not one of {}",
                            child(key),
                            TYPES.join(", ")
                        ));
                    }
                }
            }
            "properties" | "patternProperties" | "definitions" | "$defs" | "dependentSchemas" => {
                let Value::Object(members) = value else {
                    return Err(format!("{}: an object of schemas", child(key)));
                };
                for (name, member) in members {
                    schema_at(member, &format!("{}/{name}", child(key)), depth + 1)?;
                }
            }
            "additionalProperties"
            | "additionalItems"
            | "unevaluatedProperties"
            | "unevaluatedItems"
            | "not"
            | "contains"
            | "propertyNames"
            | "if"
            | "then"
            | "else" => schema_at(value, &child(key), depth + 1)?,
            "items" => match value {
                Value::Array(items) => {
                    for (index, item) in items.iter().enumerate() {
                        schema_at(item, &format!("{}/{index}", child(key)), depth + 1)?;
                    }
                }
                other => schema_at(other, &child(key), depth + 1)?,
            },
            "allOf" | "anyOf" | "oneOf" | "prefixItems" => match value {
                Value::Array(items) if !items.is_empty() => {
                    for (index, item) in items.iter().enumerate() {
                        schema_at(item, &format!("{}/{index}", child(key)), depth + 1)?;
                    }
                }
                _ => return Err(format!("{}: a non-empty list of schemas", child(key))),
            },
            "required" => match value {
                Value::Array(names) if names.iter().all(Value::is_string) => {
                    let mut seen = std::collections::HashSet::new();
                    if !names.iter().all(|name| seen.insert(name.as_str())) {
                        return Err(format!("{}: names repeat", child(key)));
                    }
                }
                // Draft 3's `required: true` on a property.
                Value::Bool(_) => {}
                _ => return Err(format!("{}: a list of property names", child(key))),
            },
            "enum" => must(value.is_array(), "a list of values")?,
            "minLength" | "maxLength" | "minItems" | "maxItems" | "minProperties"
            | "maxProperties" | "minContains" | "maxContains" => must(
                value.as_f64().is_some_and(|n| n >= 0.0 && n.fract() == 0.0),
                "a non-negative integer",
            )?,
            "minimum" | "maximum" => must(value.is_number(), "a number")?,
            // A number (draft 6 on) or a boolean (draft 4).
            "exclusiveMinimum" | "exclusiveMaximum" => {
                must(value.is_number() || value.is_boolean(), "a number")?
            }
            "multipleOf" => must(value.as_f64().is_some_and(|n| n > 0.0), "a number above 0")?,
            "uniqueItems" => must(value.is_boolean(), "a boolean")?,
            "$schema" | "$id" | "id" | "$ref" | "pattern" | "format" | "title" | "description"
            | "$comment" | "$anchor" => must(value.is_string(), "a string")?,
            "dependencies" => {
                let Value::Object(members) = value else {
                    return Err(format!("{}: an object", child(key)));
                };
                for (name, member) in members {
                    if !member.is_array() {
                        schema_at(member, &format!("{}/{name}", child(key)), depth + 1)?;
                    }
                }
            }
            // Other keywords (annotations, vocabularies of one's own) are allowed.
            _ => {}
        }
    }
    Ok(())
}

impl JsonSchema {
    /// The root's `title`: the record name Confluent's RecordNameStrategy gives JSON data.
    pub fn title(&self) -> Option<&str> {
        self.root.get("title").and_then(Value::as_str)
    }

    pub fn parse(text: &str) -> Result<JsonSchema, String> {
        let root: Value = serde_json::from_str(text).map_err(|error| error.to_string())?;
        schema_at(&root, "#", 0)?;
        Ok(JsonSchema { root })
    }

    /// The document with sorted keys and no whitespace.
    pub fn canonical(&self) -> String {
        // serde_json's map keeps keys sorted (the workspace does not enable `preserve_order`).
        self.root.to_string()
    }

    /// Why a document the writer accepts may be refused by `reader`; empty when none is.
    pub fn cannot_read(reader: &JsonSchema, writer: &JsonSchema) -> Vec<String> {
        let mut found = Vec::new();
        let mut checker = Checker {
            reader_root: &reader.root,
            writer_root: &writer.root,
            found: &mut found,
        };
        checker.compare(&reader.root, &writer.root, "#", 0);
        found
    }
}

struct Checker<'a> {
    reader_root: &'a Value,
    writer_root: &'a Value,
    found: &'a mut Vec<String>,
}

/// Follows a local `$ref` (`#/definitions/x`, `#/$defs/x`, any JSON pointer) a bounded number of
/// times; a reference elsewhere stays as it is.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..DEPTH_MAX {
        let Some(target) = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|reference| reference.strip_prefix('#'))
            .and_then(|pointer| root.pointer(pointer))
        else {
            return schema;
        };
        schema = target;
    }
    schema
}

/// The types a schema allows; `None` for any.
fn types(schema: &Map<String, Value>) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(name) => Some(vec![name.as_str()]),
        Value::Array(names) => Some(names.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn allows(types: &[&str], name: &str) -> bool {
    types.contains(&name) || (name == "integer" && types.contains(&"number"))
}

/// `additionalProperties` as (open, schema): absent or `true` is open with no schema.
fn additional(schema: &Map<String, Value>) -> (bool, Option<&Value>) {
    match schema.get("additionalProperties") {
        None | Some(Value::Bool(true)) => (true, None),
        Some(Value::Bool(false)) => (false, None),
        Some(other) => (true, Some(other)),
    }
}

fn required(schema: &Map<String, Value>) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn number(schema: &Map<String, Value>, key: &str) -> Option<f64> {
    schema.get(key).and_then(Value::as_f64)
}

impl Checker<'_> {
    fn push(&mut self, path: &str, what: String) {
        self.found.push(format!("{what} at {path}"));
    }

    /// A bound the reader may only relax: `upper` bounds may grow, lower ones shrink.
    fn bound(
        &mut self,
        reader: &Map<String, Value>,
        writer: &Map<String, Value>,
        key: &str,
        upper: bool,
        path: &str,
        name: &str,
    ) {
        match (number(reader, key), number(writer, key)) {
            (Some(_), None) => self.push(path, format!("{name}_ADDED: {key}")),
            (Some(new), Some(old)) if (upper && new < old) || (!upper && new > old) => self.push(
                path,
                format!(
                    "{name}_{}: {key} {old} became {new}",
                    if upper { "DECREASED" } else { "INCREASED" }
                ),
            ),
            _ => {}
        }
    }

    fn compare(&mut self, reader: &Value, writer: &Value, path: &str, depth: usize) {
        if depth > DEPTH_MAX {
            return;
        }
        let reader = resolve(self.reader_root, reader);
        let writer = resolve(self.writer_root, writer);
        let writer_whole = writer;
        let (reader, writer) = match (reader, writer) {
            (Value::Bool(true), _) | (_, Value::Bool(false)) => return,
            (Value::Bool(false), _) => {
                self.push(path, "FALSE_SCHEMA: the reader accepts nothing".to_string());
                return;
            }
            (Value::Object(_), Value::Bool(true)) => {
                // The writer accepts anything: only an unconstrained reader reads it all.
                if reader.as_object().is_some_and(|r| {
                    r.keys().any(|k| {
                        !matches!(
                            k.as_str(),
                            "$schema" | "$id" | "id" | "title" | "description" | "$comment"
                        )
                    })
                }) {
                    self.push(
                        path,
                        "TYPE_NARROWED: the writer accepted any value".to_string(),
                    );
                }
                return;
            }
            (Value::Object(reader), Value::Object(writer)) => (reader, writer),
            _ => return,
        };
        if let (Some(Value::String(r)), Some(Value::String(w))) =
            (reader.get("$ref"), writer.get("$ref"))
        {
            // Unresolved (external) references: the same name reads the same.
            if r != w {
                self.push(path, format!("TYPE_CHANGED: reference {w} became {r}"));
            }
            return;
        }
        match (types(reader), types(writer)) {
            (Some(reader_types), Some(writer_types)) => {
                let lost: Vec<&str> = writer_types
                    .iter()
                    .copied()
                    .filter(|name| !allows(&reader_types, name))
                    .collect();
                if !lost.is_empty() {
                    let what = if lost.len() == writer_types.len() {
                        "TYPE_CHANGED"
                    } else {
                        "TYPE_NARROWED"
                    };
                    self.push(
                        path,
                        format!(
                            "{what}: {} became {}",
                            writer_types.join("|"),
                            reader_types.join("|")
                        ),
                    );
                    return;
                }
            }
            (Some(reader_types), None) => {
                self.push(
                    path,
                    format!("TYPE_NARROWED: any type became {}", reader_types.join("|")),
                );
                return;
            }
            _ => {}
        }
        // enum and const.
        match (reader.get("enum"), writer.get("enum")) {
            (Some(Value::Array(new)), Some(Value::Array(old))) => {
                if let Some(lost) = old.iter().find(|value| !new.contains(value)) {
                    self.push(path, format!("ENUM_ARRAY_NARROWED: {lost} was removed"));
                }
            }
            (Some(_), None) => self.push(path, "ENUM_ARRAY_ADDED".to_string()),
            _ => {}
        }
        match (reader.get("const"), writer.get("const")) {
            (Some(new), Some(old)) if new != old => {
                self.push(path, format!("CONST_CHANGED: {old} became {new}"))
            }
            (Some(_), None) => self.push(path, "CONST_ADDED".to_string()),
            _ => {}
        }
        // Bounds.
        self.bound(reader, writer, "maxLength", true, path, "MAX_LENGTH");
        self.bound(reader, writer, "minLength", false, path, "MIN_LENGTH");
        self.bound(reader, writer, "maximum", true, path, "MAXIMUM");
        self.bound(reader, writer, "minimum", false, path, "MINIMUM");
        self.bound(
            reader,
            writer,
            "exclusiveMaximum",
            true,
            path,
            "EXCLUSIVE_MAXIMUM",
        );
        self.bound(
            reader,
            writer,
            "exclusiveMinimum",
            false,
            path,
            "EXCLUSIVE_MINIMUM",
        );
        self.bound(reader, writer, "maxItems", true, path, "MAX_ITEMS");
        self.bound(reader, writer, "minItems", false, path, "MIN_ITEMS");
        self.bound(
            reader,
            writer,
            "maxProperties",
            true,
            path,
            "MAX_PROPERTIES",
        );
        self.bound(
            reader,
            writer,
            "minProperties",
            false,
            path,
            "MIN_PROPERTIES",
        );
        match (number(reader, "multipleOf"), number(writer, "multipleOf")) {
            (Some(_), None) => self.push(path, "MULTIPLE_OF_ADDED".to_string()),
            (Some(new), Some(old)) if (old / new).fract().abs() > f64::EPSILON => {
                self.push(path, format!("MULTIPLE_OF_CHANGED: {old} became {new}"))
            }
            _ => {}
        }
        match (reader.get("pattern"), writer.get("pattern")) {
            (Some(new), Some(old)) if new != old => {
                self.push(path, format!("PATTERN_CHANGED: {old} became {new}"))
            }
            (Some(_), None) => self.push(path, "PATTERN_ADDED".to_string()),
            _ => {}
        }
        if reader.get("uniqueItems") == Some(&Value::Bool(true))
            && writer.get("uniqueItems") != Some(&Value::Bool(true))
        {
            self.push(path, "UNIQUE_ITEMS_ADDED".to_string());
        }
        self.compare_object(reader, writer, path, depth);
        // Array items (one schema for all items).
        if let (Some(new @ (Value::Object(_) | Value::Bool(_))), Some(old)) =
            (reader.get("items"), writer.get("items"))
        {
            if !old.is_array() {
                self.compare(new, old, &format!("{path}/items"), depth + 1);
            }
        }
        self.compare_combined(reader, writer, writer_whole, path, depth);
        if let Some(not) = reader.get("not") {
            if writer.get("not") != Some(not) {
                self.push(
                    path,
                    "NOT_TYPE_EXTENDED: the reader excludes more".to_string(),
                );
            }
        }
    }

    fn compare_object(
        &mut self,
        reader: &Map<String, Value>,
        writer: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) {
        let empty = Map::new();
        let reader_properties = reader
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let writer_properties = writer
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let (reader_open, reader_extra) = additional(reader);
        let (writer_open, writer_extra) = additional(writer);
        for (name, schema) in reader_properties {
            let at = format!("{path}/properties/{name}");
            match writer_properties.get(name) {
                Some(old) => self.compare(schema, old, &at, depth + 1),
                None if writer_open => match writer_extra {
                    // The writer's documents may carry `name` as any value its
                    // additionalProperties schema allows.
                    Some(extra) => self.compare(schema, extra, &at, depth + 1),
                    None if schema != &Value::Bool(true)
                        && schema != &Value::Object(Map::new()) =>
                    {
                        self.push(&at, format!("PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL: {name}"))
                    }
                    None => {}
                },
                None => {}
            }
        }
        for (name, old) in writer_properties {
            if reader_properties.contains_key(name) {
                continue;
            }
            let at = format!("{path}/properties/{name}");
            match (reader_open, reader_extra) {
                (false, _) => self.push(
                    &at,
                    format!("PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL: {name}"),
                ),
                (true, Some(extra)) => self.compare(extra, old, &at, depth + 1),
                (true, None) => {}
            }
        }
        let writer_required = required(writer);
        for name in required(reader) {
            if !writer_required.contains(&name) {
                self.push(path, format!("REQUIRED_ATTRIBUTE_ADDED: {name}"));
            }
        }
        match ((reader_open, reader_extra), (writer_open, writer_extra)) {
            ((false, _), (true, _)) => self.push(
                path,
                "ADDITIONAL_PROPERTIES_REMOVED: the reader closed the content model".to_string(),
            ),
            ((true, Some(new)), (true, Some(old))) => {
                self.compare(new, old, &format!("{path}/additionalProperties"), depth + 1)
            }
            ((true, Some(_)), (true, None)) => self.push(
                path,
                "ADDITIONAL_PROPERTIES_NARROWED: the reader restricts other properties".to_string(),
            ),
            _ => {}
        }
    }

    fn compare_combined(
        &mut self,
        reader: &Map<String, Value>,
        writer: &Map<String, Value>,
        writer_whole: &Value,
        path: &str,
        depth: usize,
    ) {
        for key in ["oneOf", "anyOf"] {
            let Some(reader_branches) = reader.get(key).and_then(Value::as_array) else {
                continue;
            };
            let writer_branches: Vec<&Value> = match writer
                .get("oneOf")
                .or_else(|| writer.get("anyOf"))
                .and_then(Value::as_array)
            {
                Some(branches) => branches.iter().collect(),
                None => vec![writer_whole],
            };
            for (index, old) in writer_branches.iter().enumerate() {
                if !reader_branches
                    .iter()
                    .any(|new| self.accepts(new, old, path, depth))
                {
                    self.push(
                        path,
                        format!(
                            "COMBINED_TYPE_SUBSCHEMAS_CHANGED: no {key} branch of the reader \
                             reads the writer's branch {index}"
                        ),
                    );
                }
            }
        }
        if let Some(reader_branches) = reader.get("allOf").and_then(Value::as_array) {
            let writer_branches: Vec<&Value> = writer
                .get("allOf")
                .and_then(Value::as_array)
                .map(|branches| branches.iter().collect())
                .unwrap_or_default();
            for (index, new) in reader_branches.iter().enumerate() {
                if !writer_branches
                    .iter()
                    .any(|old| self.accepts(new, old, path, depth))
                {
                    self.push(
                        path,
                        format!(
                            "COMBINED_TYPE_SUBSCHEMAS_CHANGED: the reader's allOf branch {index} \
                             is not satisfied by the writer"
                        ),
                    );
                }
            }
        }
    }

    /// Whether `reader` reads everything `writer` accepts, without recording differences.
    fn accepts(&self, reader: &Value, writer: &Value, path: &str, depth: usize) -> bool {
        let mut found = Vec::new();
        let mut probe = Checker {
            reader_root: self.reader_root,
            writer_root: self.writer_root,
            found: &mut found,
        };
        probe.compare(reader, writer, path, depth + 1);
        found.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> JsonSchema {
        JsonSchema::parse(text).unwrap()
    }

    /// The differences when `new` follows `old` under BACKWARD (new reads old).
    fn backward(old: &str, new: &str) -> Vec<String> {
        JsonSchema::cannot_read(&json(new), &json(old))
    }

    const OPEN: &str = r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["name"]}"#;
    const CLOSED: &str = r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["name"],"additionalProperties":false}"#;

    #[test]
    fn documents_that_are_not_schemas_are_refused() {
        for bad in [
            "{",
            "3",
            r#"{"type":"text"}"#,
            r#"{"properties":[]}"#,
            r#"{"required":"name"}"#,
            r#"{"properties":{"a":{"minLength":-1}}}"#,
            r#"{"anyOf":[]}"#,
            r#"{"items":{"type":7}}"#,
        ] {
            assert!(JsonSchema::parse(bad).is_err(), "{bad}");
        }
        for good in ["true", "{}", OPEN, CLOSED, r#"{"type":["string","null"]}"#] {
            assert!(JsonSchema::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn the_canonical_form_sorts_keys() {
        let shuffled = r#"{ "required": ["name"], "properties": {"age":{"type":"integer"}, "name":{"type":"string"}}, "type": "object" }"#;
        assert_eq!(json(OPEN).canonical(), json(shuffled).canonical());
        assert_ne!(json(OPEN).canonical(), json(CLOSED).canonical());
    }

    #[test]
    fn properties_under_open_and_closed_content_models() {
        let open_added = OPEN.replace(
            r#""age":{"type":"integer"}"#,
            r#""age":{"type":"integer"},"email":{"type":"string"}"#,
        );
        assert!(backward(OPEN, &open_added)[0].starts_with("PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"));
        let closed_added = CLOSED.replace(
            r#""age":{"type":"integer"}"#,
            r#""age":{"type":"integer"},"email":{"type":"string"}"#,
        );
        assert!(backward(CLOSED, &closed_added).is_empty());
        let open_removed = OPEN.replace(r#","age":{"type":"integer"}"#, "");
        assert!(backward(OPEN, &open_removed).is_empty());
        let closed_removed = CLOSED.replace(r#","age":{"type":"integer"}"#, "");
        assert!(backward(CLOSED, &closed_removed)[0]
            .starts_with("PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"));
        // Closing an open model refuses documents with other properties.
        assert!(backward(OPEN, CLOSED)[0].starts_with("ADDITIONAL_PROPERTIES_REMOVED"));
        assert!(backward(CLOSED, OPEN).is_empty());
    }

    #[test]
    fn required_types_and_enums() {
        let more_required = OPEN.replace(r#"["name"]"#, r#"["name","age"]"#);
        assert!(backward(OPEN, &more_required)[0].starts_with("REQUIRED_ATTRIBUTE_ADDED"));
        assert!(backward(&more_required, OPEN).is_empty());
        let widened = OPEN.replace(r#""age":{"type":"integer"}"#, r#""age":{"type":"number"}"#);
        assert!(backward(OPEN, &widened).is_empty());
        assert!(backward(&widened, OPEN)[0].starts_with("TYPE_CHANGED"));
        let nullable = r#"{"type":["string","null"]}"#;
        assert!(backward(r#"{"type":"string"}"#, nullable).is_empty());
        assert!(backward(nullable, r#"{"type":"string"}"#)[0].starts_with("TYPE_NARROWED"));
        let colors = r#"{"enum":["red","green"]}"#;
        let more = r#"{"enum":["red","green","blue"]}"#;
        assert!(backward(colors, more).is_empty());
        assert!(backward(more, colors)[0].starts_with("ENUM_ARRAY_NARROWED"));
        assert!(
            backward(r#"{"type":"string"}"#, r#"{"type":"string","maxLength":3}"#)[0]
                .starts_with("MAX_LENGTH_ADDED")
        );
    }

    #[test]
    fn local_references_are_followed() {
        let v1 = r##"{"type":"object","properties":{"home":{"$ref":"#/definitions/Address"}},"definitions":{"Address":{"type":"object","properties":{"zip":{"type":"string"}}}}}"##;
        let v2 = v1.replace(r#""zip":{"type":"string"}"#, r#""zip":{"type":"integer"}"#);
        assert!(
            backward(v1, &v2)[0].starts_with("TYPE_CHANGED"),
            "{:?}",
            backward(v1, &v2)
        );
        assert!(backward(v1, v1).is_empty());
    }
}
