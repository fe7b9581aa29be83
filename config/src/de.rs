//! A `serde` deserializer over an owned `toml::Value` that remembers the key path of
//! every value, so errors can say *which* key is wrong (`nodes[2].noise_key`), not just
//! what is wrong. (The values have already been through environment overrides, so the
//! spans `toml` keeps for the file's text would no longer be accurate.)

use std::fmt;

use serde::de::value::StringDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};
use toml::Value;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `node.id`, `nodes[2].addr` or `hosts."example.com"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(pub(crate) Vec<Seg>);

impl KeyPath {
    pub(crate) fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    pub(crate) fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    /// A dotted path such as `exit.allow_loopback` (keys only).
    pub(crate) fn dotted(path: &str) -> KeyPath {
        KeyPath(path.split('.').map(|k| Seg::Key(k.to_owned())).collect())
    }

    pub(crate) fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.len() >= prefix.0.len() && self.0[..prefix.0.len()] == prefix.0[..]
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("<top level>");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(k) {
                        f.write_str(k)?;
                    } else {
                        f.write_str(&toml_quote(k))?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn is_bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Quote a string as a TOML basic string.
pub(crate) fn toml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A short rendering of a scalar value for error messages; `None` for arrays and tables.
pub(crate) fn scalar_repr(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(toml_quote(s)),
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(x) => Some(x.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        Value::Datetime(d) => Some(d.to_string()),
        Value::Array(_) | Value::Table(_) => None,
    }
}

#[derive(Debug)]
pub(crate) enum DeErrorKind {
    UnknownField(&'static [&'static str]),
    MissingField(&'static str),
    Custom(String),
}

/// A deserialization error tagged with the innermost key path where it arose.
#[derive(Debug)]
pub(crate) struct DeError {
    pub(crate) kind: DeErrorKind,
    pub(crate) path: Option<KeyPath>,
    pub(crate) value: Option<String>,
}

impl DeError {
    fn at(mut self, path: &KeyPath, value: Option<String>) -> Self {
        if self.path.is_none() {
            self.path = Some(path.clone());
            self.value = value;
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DeErrorKind::UnknownField(_) => f.write_str("unknown field"),
            DeErrorKind::MissingField(k) => write!(f, "missing field `{k}`"),
            DeErrorKind::Custom(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            kind: DeErrorKind::Custom(msg.to_string()),
            path: None,
            value: None,
        }
    }

    fn unknown_field(_field: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            kind: DeErrorKind::UnknownField(expected),
            path: None,
            value: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            kind: DeErrorKind::MissingField(field),
            path: None,
            value: None,
        }
    }
}

/// Deserialize `T` from `value`, whose key path is `path`.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value, path: KeyPath) -> Result<T, DeError> {
    T::deserialize(De { value, path })
}

struct De {
    value: Value,
    path: KeyPath,
}

impl De {
    /// Deserialize `value` (at `path`) with `seed`; an error that names no key path yet
    /// gets this one, and the value as written.
    fn seed<'de, T: DeserializeSeed<'de>>(
        seed: T,
        value: Value,
        path: KeyPath,
    ) -> Result<T::Value, DeError> {
        let repr = scalar_repr(&value);
        seed.deserialize(De {
            value,
            path: path.clone(),
        })
        .map_err(|e| e.at(&path, repr))
    }
}

fn unexpected(v: &Value) -> Unexpected<'_> {
    match v {
        Value::String(s) => Unexpected::Str(s),
        Value::Integer(i) => Unexpected::Signed(*i),
        Value::Float(x) => Unexpected::Float(*x),
        Value::Boolean(b) => Unexpected::Bool(*b),
        Value::Datetime(_) => Unexpected::Other("a datetime"),
        Value::Array(_) => Unexpected::Seq,
        Value::Table(_) => Unexpected::Map,
    }
}

impl<'de> de::Deserializer<'de> for De {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            Value::String(s) => visitor.visit_string(s),
            Value::Integer(i) => visitor.visit_i64(i),
            Value::Float(x) => visitor.visit_f64(x),
            Value::Boolean(b) => visitor.visit_bool(b),
            Value::Datetime(d) => visitor.visit_string(d.to_string()),
            Value::Array(items) => {
                let len = items.len();
                let mut seq = Seq {
                    iter: items.into_iter().enumerate(),
                    path: self.path,
                };
                let out = visitor.visit_seq(&mut seq)?;
                if seq.iter.len() != 0 {
                    return Err(de::Error::invalid_length(len, &"fewer elements"));
                }
                Ok(out)
            }
            Value::Table(table) => visitor.visit_map(Map {
                iter: table.into_iter(),
                pending: None,
                path: self.path,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.value {
            Value::String(s) => {
                let d: StringDeserializer<DeError> = s.into_deserializer();
                visitor.visit_enum(d)
            }
            other => Err(de::Error::invalid_type(unexpected(&other), &visitor)),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

struct Seq {
    iter: std::iter::Enumerate<std::vec::IntoIter<Value>>,
    path: KeyPath,
}

impl<'de> de::SeqAccess<'de> for Seq {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.iter.next() {
            None => Ok(None),
            Some((i, value)) => De::seed(seed, value, self.path.index(i)).map(Some),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct Map {
    iter: toml::map::IntoIter,
    pending: Option<(KeyPath, Value)>,
    path: KeyPath,
}

impl<'de> de::MapAccess<'de> for Map {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.iter.next() {
            None => Ok(None),
            Some((key, value)) => {
                let path = self.path.key(&key);
                let d: StringDeserializer<DeError> = key.into_deserializer();
                let k = seed.deserialize(d).map_err(|e| e.at(&path, None))?;
                self.pending = Some((path, value));
                Ok(Some(k))
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((path, value)) = self.pending.take() else {
            return Err(de::Error::custom("value requested before its key"));
        };
        De::seed(seed, value, path)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_path_display() {
        let p = KeyPath::default().key("nodes").index(2).key("noise_key");
        assert_eq!(p.to_string(), "nodes[2].noise_key");
        let p = KeyPath::default().key("hosts").key("example.com");
        assert_eq!(p.to_string(), "hosts.\"example.com\"");
        assert_eq!(KeyPath::default().to_string(), "<top level>");
    }

    #[test]
    fn quote_escapes() {
        assert_eq!(toml_quote("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
    }
}
