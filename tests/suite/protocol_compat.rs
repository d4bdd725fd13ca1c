//! The health protocol stays wire-compatible with every release's, both
//! ways: an agent of release N-1 talks to today's coordinator, and today's
//! agent to the N-1 coordinator (each side ignores fields it does not know,
//! proto3's rule). Each release's `.proto` is kept as a fixture
//! (`make release-fixture`); both it and today's are compiled with protox
//! and their descriptors compared. What breaks the wire, and is refused:
//! a message, field, enum value or method gone without its number
//! reserved, a number reused, a field's type, label or message type
//! changed, a method's types or streaming changed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use kata_test_harness::kata_test;
use prost_types::{DescriptorProto, FileDescriptorSet};

const HEALTH_PROTO: &str = "kata/health/v1/health.proto";

fn compile(include: &Path) -> FileDescriptorSet {
    protox::compile([HEALTH_PROTO], [include])
        .unwrap_or_else(|e| panic!("{}: {e}", include.display()))
}

fn today() -> FileDescriptorSet {
    compile(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/proto"))
}

fn release(name: &str) -> FileDescriptorSet {
    compile(&Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/releases/{name}/proto")))
}

/// Messages by full name (nested ones included).
fn messages(set: &FileDescriptorSet) -> BTreeMap<String, &DescriptorProto> {
    fn walk<'a>(
        prefix: &str,
        list: &'a [DescriptorProto],
        out: &mut BTreeMap<String, &'a DescriptorProto>,
    ) {
        for m in list {
            let name = format!("{prefix}.{}", m.name());
            walk(&name, &m.nested_type, out);
            out.insert(name, m);
        }
    }
    let mut out = BTreeMap::new();
    for file in &set.file {
        walk(
            &format!(".{}", file.package()),
            &file.message_type,
            &mut out,
        );
    }
    out
}

fn reserved(message: &DescriptorProto, number: i32) -> bool {
    message
        .reserved_range
        .iter()
        .any(|r| (r.start()..r.end()).contains(&number))
}

/// Every way `new` breaks the wire for peers speaking `old`.
fn breaks(old: &FileDescriptorSet, new: &FileDescriptorSet) -> Vec<String> {
    let mut out = Vec::new();
    let new_messages = messages(new);
    for (name, old_message) in messages(old) {
        let Some(new_message) = new_messages.get(&name) else {
            out.push(format!("message {name} is gone"));
            continue;
        };
        for field in &old_message.field {
            let number = field.number();
            match new_message.field.iter().find(|f| f.number() == number) {
                None if reserved(new_message, number) => {}
                None => out.push(format!(
                    "{name}.{} (#{number}) is gone without its number reserved",
                    field.name()
                )),
                Some(now) => {
                    if (now.r#type(), now.label(), now.type_name())
                        != (field.r#type(), field.label(), field.type_name())
                    {
                        out.push(format!(
                            "{name} field #{number} was {:?} {:?} {} and is now {:?} {:?} {}",
                            field.label(),
                            field.r#type(),
                            field.type_name(),
                            now.label(),
                            now.r#type(),
                            now.type_name()
                        ));
                    }
                }
            }
        }
        for field in &new_message.field {
            if reserved(old_message, field.number()) {
                out.push(format!(
                    "{name}.{} reuses reserved #{}",
                    field.name(),
                    field.number()
                ));
            }
        }
    }
    let enums = |set: &FileDescriptorSet| -> BTreeMap<String, Vec<(String, i32)>> {
        let mut all = Vec::new();
        for file in &set.file {
            let package = file.package();
            all.extend(
                file.enum_type
                    .iter()
                    .map(|e| (format!(".{package}.{}", e.name()), e)),
            );
        }
        for (name, message) in messages(set) {
            all.extend(
                message
                    .enum_type
                    .iter()
                    .map(|e| (format!("{name}.{}", e.name()), e)),
            );
        }
        all.into_iter()
            .map(|(name, e)| {
                (
                    name,
                    e.value
                        .iter()
                        .map(|v| (v.name().to_owned(), v.number()))
                        .collect(),
                )
            })
            .collect()
    };
    let new_enums = enums(new);
    for (name, values) in enums(old) {
        let now = new_enums.get(&name).cloned().unwrap_or_default();
        for (value, number) in values {
            if !now.iter().any(|(_, n)| *n == number) {
                out.push(format!("enum value {name}.{value} (= {number}) is gone"));
            }
        }
    }
    let methods = |set: &FileDescriptorSet| -> BTreeMap<String, (String, String, bool, bool)> {
        set.file
            .iter()
            .flat_map(|f| f.service.iter().map(move |s| (f.package(), s)))
            .flat_map(|(package, s)| {
                s.method.iter().map(move |m| {
                    (
                        format!("{package}.{}/{}", s.name(), m.name()),
                        (
                            m.input_type().to_owned(),
                            m.output_type().to_owned(),
                            m.client_streaming(),
                            m.server_streaming(),
                        ),
                    )
                })
            })
            .collect()
    };
    let new_methods = methods(new);
    for (name, shape) in methods(old) {
        match new_methods.get(&name) {
            None => out.push(format!("method {name} is gone")),
            Some(now) if *now != shape => {
                out.push(format!("method {name} was {shape:?} and is now {now:?}"))
            }
            Some(_) => {}
        }
    }
    out
}

#[kata_test]
fn the_health_protocol_keeps_every_releases_wire() {
    let now = today();
    for name in super::upgrade_from_release::RELEASES {
        let old = release(name);
        assert!(
            !messages(&old).is_empty(),
            "{name}: no messages in the fixture"
        );
        let found = breaks(&old, &now);
        assert!(
            found.is_empty(),
            "today's health protocol breaks {name}'s peers:\n{}",
            found.join("\n")
        );
    }
}

#[kata_test]
fn a_changed_number_a_removed_field_and_a_removed_value_are_found() {
    let old = today();
    let mut new = today();
    let file = &mut new.file[0];
    let message = &mut file.message_type[0];
    let first = message.name().to_owned();
    message.field[0].number = Some(999);
    let removed = message.field.pop().map(|f| f.name().to_owned());
    let enum_type = file
        .enum_type
        .first_mut()
        .expect("the protocol has a top-level enum");
    enum_type.value.pop();
    let found = breaks(&old, &new);
    assert!(
        found
            .iter()
            .any(|b| b.contains(&first) && b.contains("gone without")),
        "{found:?}"
    );
    let removed = removed.unwrap();
    assert!(
        found.iter().any(|b| b.contains(&format!(".{removed} "))),
        "{found:?}"
    );
    assert!(
        found.iter().any(|b| b.starts_with("enum value")),
        "{found:?}"
    );
}
