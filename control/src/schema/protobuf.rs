//! Protobuf schemas: compiled by `protox` (pure Rust, no protoc) into `prost-reflect`
//! descriptors, and Confluent's Protobuf compatibility rules over them.
//!
//! A schema arrives as `.proto` text, or (as confluent-kafka-python's serializer sends it) as a
//! base64 `FileDescriptorProto`. Imports resolve against the schema's references (other
//! registered schemas, by import name) and Google's well-known types, which every registry
//! knows (clients do not register them).
//!
//! Identity: the compiled `FileDescriptorProto` with its source info, file name and JSON names
//! cleared, encoded. Whitespace, comments, and text versus descriptor form do not matter.
//!
//! Compatibility is Confluent's: the "original" and "update" schemas are compared message by
//! message (by full name) and field by field (by number); these differences are incompatible,
//! every other one is allowed:
//! - the package changed; a message was removed (a renamed message is a removed one);
//! - a field's kind (scalar, message, enum) changed; a scalar changed outside its wire group
//!   (varint `int32 uint32 int64 uint64 bool`, zigzag `sint32 sint64`, `fixed32 sfixed32`,
//!   `fixed64 sfixed64`, `string bytes`; `float` and `double` alone); a message or enum field
//!   now names another type;
//! - a numeric field changed between singular and repeated (string, bytes and message fields
//!   may: the wire is the same);
//! - a required field was added or removed;
//! - a field was removed from a oneof that stays; a field that was outside moved into an
//!   existing oneof; more than one existing field moved into a new oneof.
//!
//! BACKWARD compares (original = the older schema, update = the new one); FORWARD the reverse.

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{Cardinality, DescriptorPool, FileDescriptor, Kind, MessageDescriptor};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The name the schema's own file compiles under (a reference may not use it).
pub const MAIN_FILE: &str = "__schema__.proto";

/// A compiled Protobuf schema.
#[derive(Debug, Clone)]
pub struct ProtoSchema {
    file: FileDescriptor,
}

/// Imports by name: the schemas a schema's references resolve to (transitively).
struct Sources {
    files: HashMap<String, String>,
}

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.files.get(name) {
            Some(text) => file_from(name, text),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// A schema's text as a file: `.proto` source, or a base64 `FileDescriptorProto`.
fn file_from(name: &str, text: &str) -> Result<File, protox::Error> {
    match File::from_source(name, text) {
        Ok(file) => Ok(file),
        Err(parse_error) => match descriptor_from_base64(text) {
            Some(mut descriptor) => {
                descriptor.name = Some(name.to_string());
                Ok(File::from_file_descriptor_proto(descriptor))
            }
            None => Err(parse_error),
        },
    }
}

fn descriptor_from_base64(text: &str) -> Option<prost_types::FileDescriptorProto> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.contains(char::is_whitespace) {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .ok()?;
    prost_types::FileDescriptorProto::decode(bytes.as_slice()).ok()
}

impl ProtoSchema {
    /// Compiles `text` with `imports` (import name → schema text) available to it.
    pub fn parse(text: &str, imports: &BTreeMap<String, String>) -> Result<ProtoSchema, String> {
        if imports.contains_key(MAIN_FILE) {
            return Err(format!("a reference may not be named {MAIN_FILE}"));
        }
        let mut files: HashMap<String, String> = imports
            .iter()
            .map(|(name, text)| (name.clone(), text.clone()))
            .collect();
        files.insert(MAIN_FILE.to_string(), text.to_string());
        let mut resolver = ChainFileResolver::new();
        resolver.add(Sources { files });
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        compiler.include_source_info(false);
        compiler
            .open_file(MAIN_FILE)
            .map_err(|error| error.to_string())?;
        let pool: DescriptorPool = compiler.descriptor_pool();
        let file = pool
            .get_file_by_name(MAIN_FILE)
            .ok_or("the schema's file is missing after compiling it")?;
        Ok(ProtoSchema { file })
    }

    /// What decides "the same schema": the descriptor without source info, name or JSON names.
    pub fn identity(&self) -> String {
        let mut proto = self.file.file_descriptor_proto().clone();
        proto.name = None;
        proto.source_code_info = None;
        fn clear(message: &mut prost_types::DescriptorProto) {
            for field in &mut message.field {
                field.json_name = None;
            }
            for nested in &mut message.nested_type {
                clear(nested);
            }
        }
        for message in &mut proto.message_type {
            clear(message);
        }
        base64::engine::general_purpose::STANDARD.encode(proto.encode_to_vec())
    }

    /// The text to store and serve for `given`: itself when it is `.proto` text; for a base64
    /// descriptor, its printed `.proto` text when that compiles to this very schema, else the
    /// descriptor as given (nothing is lost either way).
    pub fn stored_text(&self, given: &str, imports: &BTreeMap<String, String>) -> String {
        if File::from_source(MAIN_FILE, given).is_ok() {
            return given.trim().to_string();
        }
        match super::proto_text::print(self.file.file_descriptor_proto()) {
            Some(text) => match ProtoSchema::parse(&text, imports) {
                Ok(again) if again.identity() == self.identity() => text,
                _ => given.trim().to_string(),
            },
            None => given.trim().to_string(),
        }
    }

    /// The schema as a base64 `FileDescriptorProto` (`?format=serialized`).
    pub fn serialized(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.file.encode_to_vec())
    }

    /// Confluent's incompatible differences going from `original` to `update`.
    pub fn incompatible_changes(original: &ProtoSchema, update: &ProtoSchema) -> Vec<String> {
        let mut found = Vec::new();
        if original.file.package_name() != update.file.package_name() {
            found.push(format!(
                "PACKAGE_CHANGED: package '{}' became '{}'",
                original.file.package_name(),
                update.file.package_name()
            ));
        }
        let updated = messages_of(&update.file);
        for (name, message) in messages_of(&original.file) {
            match updated.get(&name) {
                None => found.push(format!("MESSAGE_REMOVED: message {name}")),
                Some(other) => compare_messages(&message, other, &mut found),
            }
        }
        found
    }
}

impl ProtoSchema {
    /// The file's messages in declaration order, each with those declared in it.
    pub fn message_names(&self) -> Vec<super::kind::MessageName> {
        fn name_of(message: MessageDescriptor, depth: usize) -> super::kind::MessageName {
            super::kind::MessageName {
                full_name: message.full_name().to_string(),
                // protox bounds nesting already; this keeps a hostile descriptor from
                // recursing without end all the same.
                nested: if depth >= MESSAGE_NESTING_MAX {
                    Vec::new()
                } else {
                    message
                        .child_messages()
                        .map(|child| name_of(child, depth + 1))
                        .collect()
                },
            }
        }
        self.file
            .messages()
            .map(|message| name_of(message, 0))
            .collect()
    }
}

/// Message nesting [`ProtoSchema::message_names`] follows at most.
const MESSAGE_NESTING_MAX: usize = 64;

/// Every message of the file's own (nested included, map entries left out), by full name.
fn messages_of(file: &FileDescriptor) -> BTreeMap<String, MessageDescriptor> {
    fn walk(message: MessageDescriptor, into: &mut BTreeMap<String, MessageDescriptor>) {
        if message.is_map_entry() {
            return;
        }
        for child in message.child_messages() {
            walk(child, into);
        }
        into.insert(message.full_name().to_string(), message);
    }
    let mut all = BTreeMap::new();
    for message in file.messages() {
        walk(message, &mut all);
    }
    all
}

/// A scalar's wire group; changes inside a group keep the bytes readable.
fn scalar_group(kind: &Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Int32 | Kind::Uint32 | Kind::Int64 | Kind::Uint64 | Kind::Bool => "varint",
        Kind::Sint32 | Kind::Sint64 => "zigzag",
        Kind::Fixed32 | Kind::Sfixed32 => "fixed32",
        Kind::Fixed64 | Kind::Sfixed64 => "fixed64",
        Kind::String | Kind::Bytes => "length-delimited",
        Kind::Float => "float",
        Kind::Double => "double",
        Kind::Message(_) | Kind::Enum(_) => return None,
    })
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(message) => message.full_name().to_string(),
        Kind::Enum(enumeration) => enumeration.full_name().to_string(),
        scalar => format!("{scalar:?}").to_ascii_lowercase(),
    }
}

fn kind_class(kind: &Kind) -> &'static str {
    match kind {
        Kind::Message(_) => "message",
        Kind::Enum(_) => "enum",
        _ => "scalar",
    }
}

/// The oneof a field belongs to (synthetic `optional` oneofs are not oneofs).
fn oneof_of(field: &prost_reflect::FieldDescriptor) -> Option<String> {
    field
        .containing_oneof()
        .filter(|oneof| !oneof.is_synthetic())
        .map(|oneof| oneof.name().to_string())
}

fn compare_messages(
    original: &MessageDescriptor,
    update: &MessageDescriptor,
    found: &mut Vec<String>,
) {
    let name = original.full_name();
    for field in original.fields() {
        let number = field.number();
        let Some(other) = update.get_field(number) else {
            if field.cardinality() == Cardinality::Required {
                found.push(format!(
                    "REQUIRED_FIELD_REMOVED: {name} field {number} ({})",
                    field.name()
                ));
            }
            continue;
        };
        let (before, after) = (field.kind(), other.kind());
        if kind_class(&before) != kind_class(&after) {
            found.push(format!(
                "FIELD_KIND_CHANGED: {name} field {number} was a {} ({}), is a {} ({})",
                kind_class(&before),
                kind_name(&before),
                kind_class(&after),
                kind_name(&after)
            ));
        } else if kind_class(&before) == "scalar" {
            if scalar_group(&before) != scalar_group(&after) {
                found.push(format!(
                    "FIELD_SCALAR_KIND_CHANGED: {name} field {number} was {}, is {}",
                    kind_name(&before),
                    kind_name(&after)
                ));
            }
        } else if kind_name(&before) != kind_name(&after) {
            found.push(format!(
                "FIELD_NAMED_TYPE_CHANGED: {name} field {number} was {}, is {}",
                kind_name(&before),
                kind_name(&after)
            ));
        }
        let (was, is) = (field.cardinality(), other.cardinality());
        if was != is {
            if is == Cardinality::Required {
                found.push(format!(
                    "REQUIRED_FIELD_ADDED: {name} field {number} became required"
                ));
            } else if (was == Cardinality::Repeated) != (is == Cardinality::Repeated)
                && !matches!(
                    (&before, &after),
                    (Kind::String | Kind::Bytes | Kind::Message(_), _)
                )
            {
                found.push(format!(
                    "FIELD_NUMERIC_LABEL_CHANGED: {name} field {number} changed between \
                     singular and repeated"
                ));
            }
        }
    }
    for field in update.fields() {
        if original.get_field(field.number()).is_none()
            && field.cardinality() == Cardinality::Required
        {
            found.push(format!(
                "REQUIRED_FIELD_ADDED: {name} field {} ({})",
                field.number(),
                field.name()
            ));
        }
    }
    // Oneofs, by name.
    let before: HashSet<String> = original
        .oneofs()
        .filter(|oneof| !oneof.is_synthetic())
        .map(|oneof| oneof.name().to_string())
        .collect();
    for oneof in update.oneofs().filter(|oneof| !oneof.is_synthetic()) {
        let existed = before.contains(oneof.name());
        let mut moved_in = 0;
        for field in oneof.fields() {
            let Some(old) = original.get_field(field.number()) else {
                continue;
            };
            if oneof_of(&old).as_deref() == Some(oneof.name()) {
                continue;
            }
            if existed {
                found.push(format!(
                    "FIELD_MOVED_TO_EXISTING_ONEOF: {name} field {} moved into oneof {}",
                    field.number(),
                    oneof.name()
                ));
            } else {
                moved_in += 1;
            }
        }
        if moved_in > 1 {
            found.push(format!(
                "MULTIPLE_FIELDS_MOVED_TO_ONEOF: {moved_in} fields of {name} moved into the new \
                 oneof {}",
                oneof.name()
            ));
        }
    }
    for oneof in original.oneofs().filter(|oneof| !oneof.is_synthetic()) {
        let Some(kept) = update
            .oneofs()
            .find(|other| !other.is_synthetic() && other.name() == oneof.name())
        else {
            continue;
        };
        let members: HashSet<u32> = kept.fields().map(|field| field.number()).collect();
        for field in oneof.fields() {
            if !members.contains(&field.number()) {
                found.push(format!(
                    "ONEOF_FIELD_REMOVED: {name} field {} left oneof {}",
                    field.number(),
                    oneof.name()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(text: &str) -> ProtoSchema {
        ProtoSchema::parse(text, &BTreeMap::new()).unwrap()
    }

    fn changes(original: &str, update: &str) -> Vec<String> {
        ProtoSchema::incompatible_changes(&proto(original), &proto(update))
    }

    const V1: &str = r#"syntax = "proto3";
package shop;
message Order {
  string id = 1;
  int64 amount = 2;
  oneof payment {
    string card = 3;
    string iban = 4;
  }
}"#;

    #[test]
    fn invalid_text_is_refused_and_imports_resolve() {
        assert!(ProtoSchema::parse("message {", &BTreeMap::new()).is_err());
        assert!(ProtoSchema::parse(
            "syntax = \"proto3\"; message A { Missing b = 1; }",
            &BTreeMap::new()
        )
        .is_err());
        let with_import = r#"syntax = "proto3";
import "common.proto";
import "google/protobuf/timestamp.proto";
message Event { common.Id id = 1; google.protobuf.Timestamp at = 2; }"#;
        assert!(ProtoSchema::parse(with_import, &BTreeMap::new()).is_err());
        let imports = BTreeMap::from([(
            "common.proto".to_string(),
            "syntax = \"proto3\"; package common; message Id { string value = 1; }".to_string(),
        )]);
        ProtoSchema::parse(with_import, &imports).unwrap();
    }

    #[test]
    fn identity_ignores_layout_comments_and_the_descriptor_form() {
        let spaced = "// an order\nsyntax = \"proto3\";\npackage shop;\nmessage Order {\n  string id = 1;  int64 amount = 2;\n  oneof payment { string card = 3; string iban = 4; }\n}\n";
        assert_eq!(proto(V1).identity(), proto(spaced).identity());
        let serialized = proto(V1).serialized();
        let from_descriptor = proto(&serialized);
        assert_eq!(proto(V1).identity(), from_descriptor.identity());
        // A descriptor is stored as the .proto text it prints to (which compiles to it).
        let text = from_descriptor.stored_text(&serialized, &BTreeMap::new());
        assert!(
            text.starts_with("syntax = \"proto3\";\npackage shop;"),
            "{text}"
        );
        assert_eq!(proto(&text).identity(), proto(V1).identity());
        assert_eq!(proto(V1).stored_text(V1, &BTreeMap::new()), V1);
        let renamed = V1.replace("amount", "total");
        assert_ne!(proto(V1).identity(), proto(&renamed).identity());
    }

    #[test]
    fn descriptors_print_back_to_text_that_compiles_to_them() {
        let rich = r#"syntax = "proto3";
package shop.v1;
option java_package = "com.shop";
option go_package = "shop/v1";
import "google/protobuf/timestamp.proto";
message Order {
  message Line { string sku = 1; int32 count = 2 [deprecated = true]; }
  enum State { STATE_UNKNOWN = 0; OPEN = 1; reserved 5 to 9; }
  string id = 1;
  repeated Line lines = 2;
  map<string, int64> totals = 3;
  optional string note = 4;
  oneof payment { string card = 5; bytes token = 6; }
  State state = 7;
  google.protobuf.Timestamp at = 8;
  repeated int32 codes = 9 [packed = false];
  reserved 10, 20 to 30;
  reserved "old";
}
service Shop { rpc Place (Order) returns (stream Order); }
"#;
        let original = proto(rich);
        let text = super::super::proto_text::print(original.file.file_descriptor_proto()).unwrap();
        assert_eq!(proto(&text).identity(), original.identity(), "{text}");
        let proto2 = "syntax = \"proto2\"; message A { required string a = 1 [default = \"x\"]; optional int32 b = 2 [default = -3]; extensions 100 to max; }";
        let original = proto(proto2);
        let text = super::super::proto_text::print(original.file.file_descriptor_proto()).unwrap();
        assert_eq!(proto(&text).identity(), original.identity(), "{text}");
    }

    #[test]
    fn adding_removing_and_renaming_fields_is_allowed() {
        let added = V1.replace("int64 amount = 2;", "int64 amount = 2; string note = 5;");
        assert_eq!(changes(V1, &added), Vec::<String>::new());
        assert_eq!(changes(&added, V1), Vec::<String>::new());
        let renamed = V1.replace("amount", "total");
        assert_eq!(changes(V1, &renamed), Vec::<String>::new());
        // Within a wire group.
        let widened = V1.replace("int64 amount", "uint64 amount");
        assert_eq!(changes(V1, &widened), Vec::<String>::new());
    }

    #[test]
    fn a_field_number_reused_with_another_type_is_refused() {
        let reused = V1.replace("int64 amount = 2;", "string amount = 2;");
        let found = changes(V1, &reused);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("FIELD_SCALAR_KIND_CHANGED"),
            "{found:?}"
        );
        let to_message = V1.replace("int64 amount = 2;", "Money amount = 2;")
            + "\nmessage Money { int64 cents = 1; }";
        assert!(changes(V1, &to_message)[0].starts_with("FIELD_KIND_CHANGED"));
        let two = "syntax = \"proto3\"; message A { B b = 1; } message B {} message C {}";
        let other = two.replace("B b = 1", "C b = 1");
        assert!(changes(two, &other)[0].starts_with("FIELD_NAMED_TYPE_CHANGED"));
        let repeated = V1.replace("int64 amount", "repeated int64 amount");
        assert!(changes(V1, &repeated)[0].starts_with("FIELD_NUMERIC_LABEL_CHANGED"));
        let repeated_id = V1.replace("string id", "repeated string id");
        assert_eq!(changes(V1, &repeated_id), Vec::<String>::new());
    }

    #[test]
    fn removed_or_renamed_messages_and_package_changes_are_refused() {
        let renamed = V1.replace("message Order", "message Purchase");
        assert!(changes(V1, &renamed)[0].starts_with("MESSAGE_REMOVED"));
        // The other way a message is added: allowed.
        assert!(changes(&renamed, &(renamed.clone() + "\nmessage Extra {}")).is_empty());
        let moved = V1.replace("package shop", "package store");
        assert!(changes(V1, &moved)
            .iter()
            .any(|change| change.starts_with("PACKAGE_CHANGED")));
    }

    #[test]
    fn oneof_changes_follow_confluent() {
        let removed_member = V1.replace("string iban = 4;", "");
        assert!(changes(V1, &removed_member)[0].starts_with("ONEOF_FIELD_REMOVED"));
        let added_member = V1.replace("string iban = 4;", "string iban = 4; string cash = 6;");
        assert!(changes(V1, &added_member).is_empty());
        let into_existing = V1
            .replace("int64 amount = 2;", "")
            .replace("string iban = 4;", "string iban = 4; int64 amount = 2;");
        assert!(changes(V1, &into_existing)[0].starts_with("FIELD_MOVED_TO_EXISTING_ONEOF"));
        let one_into_new = V1.replace("int64 amount = 2;", "oneof total { int64 amount = 2; }");
        assert!(changes(V1, &one_into_new).is_empty());
        let two_into_new = V1.replace("string id = 1;", "").replace(
            "int64 amount = 2;",
            "oneof head { string id = 1; int64 amount = 2; }",
        );
        assert!(changes(V1, &two_into_new)[0].starts_with("MULTIPLE_FIELDS_MOVED_TO_ONEOF"));
    }

    #[test]
    fn required_fields_may_not_come_or_go() {
        let v1 = "syntax = \"proto2\"; message A { required string a = 1; }";
        let v2 = "syntax = \"proto2\"; message A { required string a = 1; required int32 b = 2; }";
        assert!(changes(v1, v2)[0].starts_with("REQUIRED_FIELD_ADDED"));
        assert!(changes(v2, v1)[0].starts_with("REQUIRED_FIELD_REMOVED"));
    }
}
