//! docs/CONFIGURATION.md against the parser: every key the raw structs accept is documented
//! in its section's table, every key a table lists is accepted, and every complete example
//! in the document loads.
//!
//! The keys come from the structs themselves: serde's derived `Deserialize` hands its field
//! list to `Deserializer::deserialize_struct`, and [`fields_of`] asks for exactly that. A
//! field added to a raw struct is therefore a key this test knows of, with no list to keep.
use std::collections::{BTreeMap, BTreeSet};

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::raw::{
    RawAuth, RawBackend, RawConfig, RawDirectory, RawPeer, RawProxy, RawTemplate, RawTenant,
    RawUser,
};

const DOC: &str = include_str!("../../docs/CONFIGURATION.md");

/// The keys `T` accepts, as serde's derive lists them.
fn fields_of<'de, T: Deserialize<'de>>() -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    // It always fails: the point is the field list it saw on the way.
    let _ = T::deserialize(FieldLister(&mut fields));
    assert!(
        !fields.is_empty(),
        "{} is not a struct",
        std::any::type_name::<T>()
    );
    fields
}

struct FieldLister<'a>(&'a mut BTreeSet<String>);

#[derive(Debug)]
struct Listed;

impl std::fmt::Display for Listed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fields listed")
    }
}

impl std::error::Error for Listed {}

impl de::Error for Listed {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Listed
    }
}

impl<'de> Deserializer<'de> for FieldLister<'_> {
    type Error = Listed;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Listed> {
        self.0.extend(fields.iter().map(|f| f.to_string()));
        Err(Listed)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Listed> {
        Err(Listed)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Each top-level section of the file and the keys of one of its tables. A section added to
/// [`RawConfig`] without an entry here fails [`every_section_is_walked`].
fn sections() -> BTreeMap<&'static str, BTreeSet<String>> {
    BTreeMap::from([
        ("proxy", fields_of::<RawProxy>()),
        ("backends", fields_of::<RawBackend>()),
        ("users", fields_of::<RawUser>()),
        ("tenants", fields_of::<RawTenant>()),
        ("peers", fields_of::<RawPeer>()),
        ("auth", fields_of::<RawAuth>()),
        ("tenant_template", fields_of::<RawTemplate>()),
        ("directory", fields_of::<RawDirectory>()),
    ])
}

/// The keys each `## [section...]` heading's tables list (first column, in backticks).
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let mut doc: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in DOC.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading.trim().strip_prefix("`[").map(|rest| {
                rest.split(['.', ']'])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            });
            continue;
        }
        let (Some(section), Some(row)) = (&section, line.strip_prefix("| `")) else {
            continue;
        };
        let key = row.split('`').next().unwrap_or_default();
        doc.entry(section.clone()).or_default().insert(key.into());
    }
    doc
}

#[test]
fn every_section_is_walked() {
    let top: BTreeSet<String> = fields_of::<RawConfig>();
    let walked: BTreeSet<String> = sections().keys().map(|s| s.to_string()).collect();
    assert_eq!(
        top, walked,
        "RawConfig's sections and the ones this test walks differ: add the new section's \
         struct to `sections()` (and its table to docs/CONFIGURATION.md)"
    );
}

#[test]
fn every_key_the_parser_accepts_is_documented_and_no_other() {
    let doc = documented();
    let mut problems = Vec::new();
    for (section, keys) in sections() {
        let listed = doc.get(section).cloned().unwrap_or_default();
        for key in keys.difference(&listed) {
            problems.push(format!(
                "[{section}] {key}: accepted by the parser, missing from the table"
            ));
        }
        for key in listed.difference(&keys) {
            problems.push(format!(
                "[{section}] {key}: in the table, not accepted by the parser"
            ));
        }
    }
    for section in doc.keys() {
        if !sections().contains_key(section.as_str()) {
            problems.push(format!(
                "[{section}]: documented, but no such section in the parser"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/CONFIGURATION.md and src/config/raw.rs disagree:\n{}",
        problems.join("\n")
    );
}

/// The lister itself: a raw struct gives its keys, so a new field cannot go unnoticed.
#[test]
fn fields_of_lists_struct_keys() {
    let proxy = fields_of::<RawProxy>();
    assert!(proxy.contains("listen") && proxy.contains("metrics_tenant_labels"));
    assert_eq!(
        fields_of::<RawUser>(),
        BTreeSet::from(["password".to_string(), "tenants".to_string()])
    );
}

#[test]
fn every_example_loads() {
    let mut examples = Vec::new();
    let mut block: Option<String> = None;
    for line in DOC.lines() {
        match (&mut block, line.trim_end()) {
            (None, "```toml") => block = Some(String::new()),
            (Some(text), "```") => {
                examples.push(std::mem::take(text));
                block = None;
            }
            (Some(text), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(examples.len() >= 5, "expected an example per tenancy model");
    let env = |_: &str| Some("from_env".to_string());
    for (i, text) in examples.iter().enumerate() {
        if let Err(e) = super::validate::parse_with_env(text, "example", &env) {
            panic!(
                "docs/CONFIGURATION.md example {} does not load: {e}\n{text}",
                i + 1
            );
        }
    }
}

/// The samples in the repository load and use only documented keys (they do, by loading).
#[test]
fn sample_configs_load() {
    let env = |_: &str| Some("from_env".to_string());
    for (name, text) in [
        ("proxy.toml", include_str!("../../proxy.toml")),
        ("docker/proxy.toml", include_str!("../../docker/proxy.toml")),
    ] {
        if let Err(e) = super::validate::parse_with_env(text, name, &env) {
            panic!("{name} does not load: {e}");
        }
    }
}
