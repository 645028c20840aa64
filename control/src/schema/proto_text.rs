//! `.proto` text from a `FileDescriptorProto`: what the registry serves for a Protobuf schema
//! that a client registered as a base64 descriptor (Confluent's registry serves text too).
//!
//! Types are written fully qualified (`.shop.Money`), so no scope rule can change what a name
//! means. The printer covers what schemas commonly hold (messages, nested types, maps, oneofs,
//! proto3 `optional`, enums, reserved ranges and names, extension ranges, services, the common
//! file, message, field and enum options); the caller compiles the text again and keeps it only
//! when it yields the same descriptor, so anything the printer does not cover (groups, other
//! options) falls back to the descriptor as given, never to a different schema.

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    ServiceDescriptorProto,
};
use std::collections::HashMap;
use std::fmt::Write as _;

/// The text of `file`; `None` when it holds something the printer does not write.
pub fn print(file: &FileDescriptorProto) -> Option<String> {
    let mut out = String::new();
    let syntax = file.syntax.as_deref().unwrap_or("proto2");
    if !matches!(syntax, "proto2" | "proto3") {
        return None;
    }
    let proto3 = syntax == "proto3";
    writeln!(out, "syntax = \"{syntax}\";").ok()?;
    if let Some(package) = &file.package {
        writeln!(out, "package {package};").ok()?;
    }
    for (index, dependency) in file.dependency.iter().enumerate() {
        let index = i32::try_from(index).ok()?;
        let kind = if file.public_dependency.contains(&index) {
            "public "
        } else if file.weak_dependency.contains(&index) {
            "weak "
        } else {
            ""
        };
        writeln!(out, "import {kind}{};", quote(dependency)).ok()?;
    }
    if let Some(options) = &file.options {
        let strings = [
            ("java_package", &options.java_package),
            ("java_outer_classname", &options.java_outer_classname),
            ("go_package", &options.go_package),
            ("csharp_namespace", &options.csharp_namespace),
            ("objc_class_prefix", &options.objc_class_prefix),
            ("php_namespace", &options.php_namespace),
            ("ruby_package", &options.ruby_package),
            ("swift_prefix", &options.swift_prefix),
        ];
        for (name, value) in strings {
            if let Some(value) = value {
                writeln!(out, "option {name} = {};", quote(value)).ok()?;
            }
        }
        if let Some(value) = options.java_multiple_files {
            writeln!(out, "option java_multiple_files = {value};").ok()?;
        }
        if let Some(value) = options.deprecated {
            writeln!(out, "option deprecated = {value};").ok()?;
        }
    }
    for message in &file.message_type {
        out.push('\n');
        message_text(message, proto3, 0, &mut out)?;
    }
    for enumeration in &file.enum_type {
        out.push('\n');
        enum_text(enumeration, 0, &mut out)?;
    }
    extensions_text(&file.extension, proto3, 0, &mut out)?;
    for service in &file.service {
        out.push('\n');
        service_text(service, &mut out)?;
    }
    Some(out)
}

fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

fn indent(depth: usize) -> String {
    "  ".repeat(depth)
}

fn scalar_name(kind: Type) -> Option<&'static str> {
    Some(match kind {
        Type::Double => "double",
        Type::Float => "float",
        Type::Int64 => "int64",
        Type::Uint64 => "uint64",
        Type::Int32 => "int32",
        Type::Fixed64 => "fixed64",
        Type::Fixed32 => "fixed32",
        Type::Bool => "bool",
        Type::String => "string",
        Type::Bytes => "bytes",
        Type::Uint32 => "uint32",
        Type::Sfixed32 => "sfixed32",
        Type::Sfixed64 => "sfixed64",
        Type::Sint32 => "sint32",
        Type::Sint64 => "sint64",
        Type::Message | Type::Enum | Type::Group => return None,
    })
}

/// The type of a field as written: a scalar name or the fully qualified message/enum name.
fn type_text(field: &FieldDescriptorProto) -> Option<String> {
    match field.r#type() {
        Type::Group => None,
        Type::Message | Type::Enum => field.type_name.clone(),
        scalar => scalar_name(scalar).map(str::to_string),
    }
}

fn field_options(field: &FieldDescriptorProto) -> String {
    let mut options = Vec::new();
    if let Some(default) = &field.default_value {
        match field.r#type() {
            Type::String => options.push(format!("default = {}", quote(default))),
            // Bytes defaults are C-escaped already; numbers, bools and enum values as they are.
            Type::Bytes => options.push(format!("default = \"{default}\"")),
            _ => options.push(format!("default = {default}")),
        }
    }
    if let Some(field_options) = &field.options {
        if let Some(packed) = field_options.packed {
            options.push(format!("packed = {packed}"));
        }
        if let Some(deprecated) = field_options.deprecated {
            options.push(format!("deprecated = {deprecated}"));
        }
    }
    if options.is_empty() {
        String::new()
    } else {
        format!(" [{}]", options.join(", "))
    }
}

fn field_text(
    field: &FieldDescriptorProto,
    proto3: bool,
    in_oneof: bool,
    maps: &HashMap<String, (String, String)>,
    depth: usize,
    out: &mut String,
) -> Option<()> {
    let name = field.name.as_deref()?;
    let number = field.number?;
    let repeated = field.label() == Label::Repeated;
    // A map entry is a nested type of the field's own message: its short name identifies it.
    let entry = field
        .type_name
        .as_ref()
        .and_then(|name| name.rsplit('.').next())
        .and_then(|short| maps.get(short));
    if let Some((key, value)) = entry {
        if repeated {
            writeln!(
                out,
                "{}map<{key}, {value}> {name} = {number}{};",
                indent(depth),
                field_options(field)
            )
            .ok()?;
            return Some(());
        }
    }
    let label = if in_oneof {
        ""
    } else {
        match field.label() {
            Label::Repeated => "repeated ",
            Label::Required => "required ",
            Label::Optional if !proto3 || field.proto3_optional == Some(true) => "optional ",
            Label::Optional => "",
        }
    };
    writeln!(
        out,
        "{}{label}{} {name} = {number}{};",
        indent(depth),
        type_text(field)?,
        field_options(field)
    )
    .ok()?;
    Some(())
}

fn ranges_text(ranges: &[(Option<i32>, Option<i32>)], keyword: &str, depth: usize) -> String {
    if ranges.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = ranges
        .iter()
        .map(|(start, end)| {
            let start = start.unwrap_or(0);
            // Descriptor ends are exclusive; text ends inclusive, `max` for the largest.
            let last = end.unwrap_or(start + 1) - 1;
            if last == start {
                start.to_string()
            } else if last >= 536_870_911 {
                format!("{start} to max")
            } else {
                format!("{start} to {last}")
            }
        })
        .collect();
    format!("{}{keyword} {};\n", indent(depth), parts.join(", "))
}

fn message_text(
    message: &DescriptorProto,
    proto3: bool,
    depth: usize,
    out: &mut String,
) -> Option<()> {
    let name = message.name.as_deref()?;
    writeln!(out, "{}message {name} {{", indent(depth)).ok()?;
    let inner = depth + 1;
    if let Some(deprecated) = message.options.as_ref().and_then(|o| o.deprecated) {
        writeln!(out, "{}option deprecated = {deprecated};", indent(inner)).ok()?;
    }
    // Map entries are written as `map<K, V>` fields, not as messages.
    let mut maps = HashMap::new();
    for nested in &message.nested_type {
        if nested.options.as_ref().and_then(|o| o.map_entry) == Some(true) {
            let key = nested.field.iter().find(|f| f.number == Some(1))?;
            let value = nested.field.iter().find(|f| f.number == Some(2))?;
            maps.insert(nested.name.clone()?, (type_text(key)?, type_text(value)?));
        } else {
            message_text(nested, proto3, inner, out)?;
        }
    }
    for enumeration in &message.enum_type {
        enum_text(enumeration, inner, out)?;
    }
    let synthetic: Vec<bool> = (0..message.oneof_decl.len())
        .map(|index| {
            let members: Vec<&FieldDescriptorProto> = message
                .field
                .iter()
                .filter(|f| f.oneof_index == Some(index as i32))
                .collect();
            members.len() == 1 && members[0].proto3_optional == Some(true)
        })
        .collect();
    let mut written_oneofs = vec![false; message.oneof_decl.len()];
    for field in &message.field {
        match field.oneof_index {
            Some(index) if !synthetic.get(index as usize).copied().unwrap_or(true) => {
                let index = index as usize;
                if written_oneofs[index] {
                    continue;
                }
                written_oneofs[index] = true;
                let oneof = message.oneof_decl.get(index)?.name.as_deref()?;
                writeln!(out, "{}oneof {oneof} {{", indent(inner)).ok()?;
                for member in message
                    .field
                    .iter()
                    .filter(|f| f.oneof_index == Some(index as i32))
                {
                    field_text(member, proto3, true, &maps, inner + 1, out)?;
                }
                writeln!(out, "{}}}", indent(inner)).ok()?;
            }
            _ => field_text(field, proto3, false, &maps, inner, out)?,
        }
    }
    let ranges: Vec<(Option<i32>, Option<i32>)> = message
        .reserved_range
        .iter()
        .map(|r| (r.start, r.end))
        .collect();
    out.push_str(&ranges_text(&ranges, "reserved", inner));
    if !message.reserved_name.is_empty() {
        let names: Vec<String> = message.reserved_name.iter().map(|n| quote(n)).collect();
        writeln!(out, "{}reserved {};", indent(inner), names.join(", ")).ok()?;
    }
    let extension_ranges: Vec<(Option<i32>, Option<i32>)> = message
        .extension_range
        .iter()
        .map(|r| (r.start, r.end))
        .collect();
    out.push_str(&ranges_text(&extension_ranges, "extensions", inner));
    extensions_text(&message.extension, proto3, inner, out)?;
    writeln!(out, "{}}}", indent(depth)).ok()?;
    Some(())
}

fn extensions_text(
    extensions: &[FieldDescriptorProto],
    proto3: bool,
    depth: usize,
    out: &mut String,
) -> Option<()> {
    let mut extendees: Vec<&str> = Vec::new();
    for extension in extensions {
        let extendee = extension.extendee.as_deref()?;
        if !extendees.contains(&extendee) {
            extendees.push(extendee);
        }
    }
    for extendee in extendees {
        writeln!(out, "{}extend {extendee} {{", indent(depth)).ok()?;
        for extension in extensions
            .iter()
            .filter(|e| e.extendee.as_deref() == Some(extendee))
        {
            field_text(extension, proto3, false, &HashMap::new(), depth + 1, out)?;
        }
        writeln!(out, "{}}}", indent(depth)).ok()?;
    }
    Some(())
}

fn enum_text(enumeration: &EnumDescriptorProto, depth: usize, out: &mut String) -> Option<()> {
    let name = enumeration.name.as_deref()?;
    writeln!(out, "{}enum {name} {{", indent(depth)).ok()?;
    let inner = depth + 1;
    if let Some(options) = &enumeration.options {
        if let Some(alias) = options.allow_alias {
            writeln!(out, "{}option allow_alias = {alias};", indent(inner)).ok()?;
        }
        if let Some(deprecated) = options.deprecated {
            writeln!(out, "{}option deprecated = {deprecated};", indent(inner)).ok()?;
        }
    }
    for value in &enumeration.value {
        writeln!(
            out,
            "{}{} = {};",
            indent(inner),
            value.name.as_deref()?,
            value.number?
        )
        .ok()?;
    }
    let ranges: Vec<(Option<i32>, Option<i32>)> = enumeration
        .reserved_range
        .iter()
        // Enum reserved ends are inclusive already: make them exclusive for `ranges_text`.
        .map(|r| (r.start, r.end.map(|end| end.saturating_add(1))))
        .collect();
    out.push_str(&ranges_text(&ranges, "reserved", inner));
    if !enumeration.reserved_name.is_empty() {
        let names: Vec<String> = enumeration.reserved_name.iter().map(|n| quote(n)).collect();
        writeln!(out, "{}reserved {};", indent(inner), names.join(", ")).ok()?;
    }
    writeln!(out, "{}}}", indent(depth)).ok()?;
    Some(())
}

fn service_text(service: &ServiceDescriptorProto, out: &mut String) -> Option<()> {
    writeln!(out, "service {} {{", service.name.as_deref()?).ok()?;
    for method in &service.method {
        let stream = |flag: Option<bool>| if flag == Some(true) { "stream " } else { "" };
        writeln!(
            out,
            "  rpc {} ({}{}) returns ({}{});",
            method.name.as_deref()?,
            stream(method.client_streaming),
            method.input_type.as_deref()?,
            stream(method.server_streaming),
            method.output_type.as_deref()?
        )
        .ok()?;
    }
    writeln!(out, "}}").ok()?;
    Some(())
}
