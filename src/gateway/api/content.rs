//! [`Content`]: the `content` of a send, any JSON value, with its object keys in the
//! caller's order.
//!
//! `serde_json::Value` keeps objects sorted by key (this crate does not enable
//! `preserve_order`, which would change every `Value` of the library). A business app
//! sending `{"type":"chat","text":"hi"}` through `ImClient` gets those keys in that order on
//! the sockets, so the API must not reorder them. Serialized through `ImClient`, a
//! `Content` goes out with the same Newtonsoft-exact escaping as any other value.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Number;
use std::fmt;

/// A JSON value whose objects keep their key order (duplicate keys too, as sent).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Content {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Content>),
    Object(Vec<(String, Content)>),
}

impl Serialize for Content {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::Null => serializer.serialize_unit(),
            Content::Bool(b) => serializer.serialize_bool(*b),
            Content::Number(n) => n.serialize(serializer),
            Content::String(s) => serializer.serialize_str(s),
            Content::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                items.iter().try_for_each(|item| seq.serialize_element(item))?;
                seq.end()
            }
            Content::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                entries.iter().try_for_each(|(key, value)| map.serialize_entry(key, value))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ContentVisitor)
    }
}

struct ContentVisitor;

impl<'de> Visitor<'de> for ContentVisitor {
    type Value = Content;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Content, E> {
        Ok(Content::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Content, E> {
        Ok(Content::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Content, E> {
        Ok(Content::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Content, E> {
        Ok(Content::Number(n.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Content, E> {
        Number::from_f64(n).map(Content::Number).ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, s: &str) -> Result<Content, E> {
        Ok(Content::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Content, E> {
        Ok(Content::String(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Content::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Content, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Content::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::to_json;

    /// Golden cases: the JSON a caller sends, the frame `ImClient` writes for it.
    #[test]
    fn content_keeps_key_order_and_goes_out_as_imclient_writes_values() {
        let cases = [
            (r#"{"z":1,"a":[true,null,"x"],"m":{"b":2,"a":1}}"#, r#"{"z":1,"a":[true,null,"x"],"m":{"b":2,"a":1}}"#),
            (r#""hi""#, r#""hi""#),
            (r#"  1.5e3 "#, "1500.0"),
            (r#"-7"#, "-7"),
            (r#""caf\u00e9 <b>""#, &to_json("café <b>")),
        ];
        for (input, frame) in cases {
            let content: Content = serde_json::from_str(input).unwrap();
            assert_eq!(to_json(&content), frame, "{input}");
        }
    }
}
