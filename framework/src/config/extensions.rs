//! Top-level tables that belong to a crate built on the framework (`[engine]`): taken out of
//! the file as it is read, so the framework's own tables keep refusing unknown keys, with
//! their line numbers, and the crate checks its table itself.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};

/// The tables taken out, by name.
pub(super) type Taken = RefCell<BTreeMap<String, toml::Value>>;

/// A deserializer of the whole file that sets aside the top-level keys in `names`.
pub(super) struct SetAside<'a, D> {
    pub(super) inner: D,
    pub(super) names: &'a [&'a str],
    pub(super) taken: &'a Taken,
}

struct Watch<'a, V> {
    inner: V,
    names: &'a [&'a str],
    taken: &'a Taken,
}

struct Filter<'a, A> {
    inner: A,
    names: &'a [&'a str],
    taken: &'a Taken,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for SetAside<'_, D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(Watch {
            inner: visitor,
            names: self.names,
            taken: self.taken,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_struct(
            name,
            fields,
            Watch {
                inner: visitor,
                names: self.names,
                taken: self.taken,
            },
        )
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Watch<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(Filter {
            inner: map,
            names: self.names,
            taken: self.taken,
        })
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Filter<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.inner.next_key::<String>()? else {
                return Ok(None);
            };
            if self.names.contains(&key.as_str()) {
                let value: toml::Value = self.inner.next_value()?;
                self.taken.borrow_mut().insert(key, value);
                continue;
            }
            let key: de::value::StringDeserializer<A::Error> = key.into_deserializer();
            return seed.deserialize(key).map(Some);
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.next_value_seed(seed)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const FILE: &str = r#"
[[bot]]
name = "ops"
[bot.transport]
kind = "console"

[engine]
bot = "ops"

[[engine.rule]]
name = "r"
"#;

    #[test]
    fn a_registered_table_is_set_aside_whole() {
        let c = Config::from_str_with(Path::new("f.toml"), FILE, &["engine"]).unwrap();
        let engine = &c.extensions["engine"];
        assert_eq!(engine["bot"].as_str(), Some("ops"));
        assert_eq!(engine["rule"].as_array().map(Vec::len), Some(1));
        assert_eq!(c.bots[0].name, "ops");
    }

    #[test]
    fn unknown_tables_and_keys_are_still_refused_with_their_line() {
        let e = Config::from_str(Path::new("f.toml"), FILE).unwrap_err();
        let e = &e.0[0];
        assert!(e.message.contains("engine"), "{e:?}");
        assert_eq!(e.line, Some(7), "{e:?}");
        let typo = FILE.replace("name = \"ops\"", "name = \"ops\"\nnmae = 1");
        let e = Config::from_str_with(Path::new("f.toml"), &typo, &["engine"]).unwrap_err();
        assert_eq!(
            (e.0[0].key.as_str(), e.0[0].line),
            ("bot[0].nmae", Some(4)),
            "{e:?}"
        );
        let e =
            Config::from_str_with(Path::new("f.toml"), "engine = 3\n", &["engine"]).unwrap_err();
        assert!(e.0[0].message.contains("must be a table"), "{e:?}");
    }
}
