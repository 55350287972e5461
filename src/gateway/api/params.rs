//! [`Params`]: a method's JSON object, read field by field at the edge, so the methods get
//! typed values and every mistake gets its own error naming the field.
//!
//! Fields stay raw JSON until a method asks for them by type; a field nobody asked for is
//! an error ([`Params::finish`]), so a typo (`reciever`) is not silently ignored. `null` is
//! the same as an absent optional field.

use super::content::Content;
use super::error::ApiError;
use crate::protocol::ClientId;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// Most ids `online` returns per page.
pub(super) const MAX_PAGE: u64 = 1000;
/// Ids `online` asks for per page when `count` is not given.
pub(super) const DEFAULT_PAGE: u64 = 100;
/// Longest cursor: 19 digits always fit in a `u64`.
const MAX_CURSOR_DIGITS: usize = 19;

/// The fields of one call's parameters.
#[derive(Debug)]
pub(super) struct Params {
    fields: BTreeMap<String, Box<RawValue>>,
    /// What field names are prefixed with in errors: empty, or `commands[2].params.`.
    at: String,
}

impl Params {
    /// The parameters in a request body: a JSON object (an empty body is `{}`).
    pub(super) fn from_body(body: &[u8]) -> Result<Params, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Params::empty(String::new()));
        }
        let raw: Box<RawValue> = serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        Params::from_raw(&raw, "body", String::new())
    }

    /// No parameters (a batch command without `params`); `at` prefixes field names.
    pub(super) fn empty(at: String) -> Params {
        Params { fields: BTreeMap::new(), at }
    }

    /// The parameters in `raw`, which must be an object; `name` names it in errors and
    /// `at` prefixes its fields' names.
    pub(super) fn from_raw(raw: &RawValue, name: &str, at: String) -> Result<Params, ApiError> {
        let fields = match serde_json::from_str(raw.get()) {
            Ok(fields) => fields,
            Err(_) => return Err(ApiError::InvalidType { field: name.to_owned(), expected: "a JSON object" }),
        };
        Ok(Params { fields, at })
    }

    /// The name of `field` in errors.
    pub(super) fn name(&self, field: &str) -> String {
        format!("{}{field}", self.at)
    }

    /// Whether `field` was given (and is not `null`).
    pub(super) fn has(&self, field: &str) -> bool {
        self.fields.get(field).is_some_and(|raw| raw.get() != "null")
    }

    /// Takes `field` out, `None` when absent or `null`.
    pub(super) fn take_raw(&mut self, field: &str) -> Option<Box<RawValue>> {
        self.fields.remove(field).filter(|raw| raw.get() != "null")
    }

    fn required(&mut self, field: &str) -> Result<Box<RawValue>, ApiError> {
        self.take_raw(field).ok_or_else(|| ApiError::MissingField(self.name(field)))
    }

    /// A JSON integer in the signed 64-bit range. As in JSON Schema, a number with no
    /// fractional part is an integer however it is written (`5`, `5.0`, `5e0`); written as
    /// a float, it is taken at its `f64` value (as a JSON Schema validator does). Written
    /// as an integer, it must fit exactly (`-9223372036854775809` does not).
    fn integer(raw: &RawValue) -> Option<i64> {
        /// 2^63: the first integer above `i64::MAX`, exact as an `f64`.
        const TWO_TO_63: f64 = 9_223_372_036_854_775_808.0;
        let text = raw.get();
        if !text.contains(['.', 'e', 'E']) {
            return text.parse().ok();
        }
        // The standard library's parse is correctly rounded (serde_json's, by default, may be
        // one unit off: -3644754397156922.0 would come out with a fraction).
        let float: f64 = text.parse().ok()?;
        (float.fract() == 0.0 && (-TWO_TO_63..TWO_TO_63).contains(&float)).then_some(float as i64)
    }

    /// The items of an array field, raw; `None` when it is not an array.
    fn items(raw: &RawValue) -> Option<Vec<Box<RawValue>>> {
        serde_json::from_str(raw.get()).ok()
    }

    fn value(raw: &RawValue) -> Value {
        // Already checked to be JSON when the body was read.
        serde_json::from_str(raw.get()).unwrap_or(Value::Null)
    }

    /// A required client id.
    pub(super) fn id(&mut self, field: &str) -> Result<ClientId, ApiError> {
        let raw = self.required(field)?;
        Self::integer(&raw).ok_or_else(|| ApiError::InvalidId(self.name(field)))
    }

    /// An optional client id, `default` when absent.
    pub(super) fn id_or(&mut self, field: &str, default: ClientId) -> Result<ClientId, ApiError> {
        if !self.has(field) {
            self.fields.remove(field);
            return Ok(default);
        }
        self.id(field)
    }

    /// A required array of client ids.
    pub(super) fn ids(&mut self, field: &str) -> Result<Vec<ClientId>, ApiError> {
        let Some(items) = Self::items(&self.required(field)?) else {
            return Err(ApiError::InvalidType { field: self.name(field), expected: "an array of integer client ids" });
        };
        let id = |(i, item): (usize, &RawValue)| {
            Self::integer(item).ok_or_else(|| ApiError::InvalidId(self.name(&format!("{field}[{i}]"))))
        };
        items.iter().map(AsRef::as_ref).enumerate().map(id).collect()
    }

    /// A required, non-empty channel name.
    pub(super) fn chan(&mut self, field: &str) -> Result<String, ApiError> {
        match Self::value(&self.required(field)?) {
            Value::String(chan) if chan.is_empty() => Err(ApiError::EmptyChan(self.name(field))),
            Value::String(chan) => Ok(chan),
            _ => Err(ApiError::InvalidType { field: self.name(field), expected: "a channel name (a string)" }),
        }
    }

    /// A required array of non-empty channel names.
    pub(super) fn chans(&mut self, field: &str) -> Result<Vec<String>, ApiError> {
        let Value::Array(items) = Self::value(&self.required(field)?) else {
            return Err(ApiError::InvalidType { field: self.name(field), expected: "an array of channel names" });
        };
        let chan = |(i, item): (usize, Value)| {
            let name = || self.name(&format!("{field}[{i}]"));
            match item {
                Value::String(chan) if chan.is_empty() => Err(ApiError::EmptyChan(name())),
                Value::String(chan) => Ok(chan),
                _ => Err(ApiError::InvalidType { field: name(), expected: "a channel name (a string)" }),
            }
        };
        items.into_iter().enumerate().map(chan).collect()
    }

    /// An optional boolean, false when absent.
    pub(super) fn flag(&mut self, field: &str) -> Result<bool, ApiError> {
        match self.take_raw(field).map(|raw| Self::value(&raw)) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(_) => Err(ApiError::InvalidType { field: self.name(field), expected: "a boolean" }),
        }
    }

    /// An optional string.
    pub(super) fn text(&mut self, field: &str) -> Result<Option<String>, ApiError> {
        match self.take_raw(field).map(|raw| Self::value(&raw)) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::InvalidType { field: self.name(field), expected: "a string" }),
        }
    }

    /// The required `content`: any JSON value, `null` included.
    pub(super) fn content(&mut self) -> Result<Content, ApiError> {
        let raw = self.fields.remove("content").ok_or_else(|| ApiError::MissingField(self.name("content")))?;
        // Any JSON parses (non-finite numbers cannot be written in JSON).
        serde_json::from_str(raw.get()).map_err(|e| ApiError::MalformedJson(e.to_string()))
    }

    /// An optional page size in 1..=[`MAX_PAGE`], [`DEFAULT_PAGE`] when absent.
    pub(super) fn count(&mut self, field: &str) -> Result<u64, ApiError> {
        let Some(raw) = self.take_raw(field) else { return Ok(DEFAULT_PAGE) };
        match Self::integer(&raw) {
            Some(n) if (1..=MAX_PAGE as i64).contains(&n) => Ok(n as u64),
            Some(_) => Err(ApiError::InvalidValue {
                field: self.name(field),
                reason: format!("must be between 1 and {MAX_PAGE}"),
            }),
            // An integer past the 64-bit range is out of range too, not of the wrong type.
            None if Self::value(&raw).as_f64().is_some_and(|f| f.fract() == 0.0) => Err(ApiError::InvalidValue {
                field: self.name(field),
                reason: format!("must be between 1 and {MAX_PAGE}"),
            }),
            None => Err(ApiError::InvalidType { field: self.name(field), expected: "an integer" }),
        }
    }

    /// An optional scan cursor: a decimal string as a previous page returned, `"0"` (the
    /// start) when absent.
    pub(super) fn cursor(&mut self, field: &str) -> Result<u64, ApiError> {
        let Some(cursor) = self.text(field)? else { return Ok(0) };
        let canonical = cursor == "0"
            || (!cursor.starts_with('0')
                && cursor.len() <= MAX_CURSOR_DIGITS
                && cursor.bytes().all(|b| b.is_ascii_digit()));
        match cursor.parse() {
            Ok(n) if canonical && !cursor.is_empty() => Ok(n),
            _ => Err(ApiError::InvalidValue {
                field: self.name(field),
                reason: "must be a cursor a previous page returned (decimal digits), or \"0\"".to_owned(),
            }),
        }
    }

    /// Fails on the first field no one took.
    pub(super) fn finish(self) -> Result<(), ApiError> {
        match self.fields.into_keys().next() {
            Some(field) => Err(ApiError::UnknownField(format!("{}{field}", self.at))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(body: &str) -> Params {
        Params::from_body(body.as_bytes()).unwrap()
    }

    /// Golden cases: a body, the field read, the error's code and message.
    #[test]
    fn each_mistake_names_the_field_and_the_reason() {
        type Read = fn(&mut Params) -> Result<(), ApiError>;
        let cases: &[(&str, Read, &str, &str)] = &[
            ("{}", |p| p.id("client_id").map(drop), "missing_field", "`client_id` is required"),
            (
                r#"{"client_id":"7"}"#,
                |p| p.id("client_id").map(drop),
                "invalid_id",
                "`client_id` must be an integer client id (signed 64-bit)",
            ),
            (
                r#"{"client_id":1.5}"#,
                |p| p.id("client_id").map(drop),
                "invalid_id",
                "`client_id` must be an integer client id (signed 64-bit)",
            ),
            (
                r#"{"client_id":9223372036854775808}"#,
                |p| p.id("client_id").map(drop),
                "invalid_id",
                "`client_id` must be an integer client id (signed 64-bit)",
            ),
            (
                r#"{"r":[1,"x"]}"#,
                |p| p.ids("r").map(drop),
                "invalid_id",
                "`r[1]` must be an integer client id (signed 64-bit)",
            ),
            (r#"{"r":5}"#, |p| p.ids("r").map(drop), "invalid_type", "`r` must be an array of integer client ids"),
            (r#"{"chan":""}"#, |p| p.chan("chan").map(drop), "empty_chan", "`chan` must not be an empty channel name"),
            (r#"{"chan":3}"#, |p| p.chan("chan").map(drop), "invalid_type", "`chan` must be a channel name (a string)"),
            (
                r#"{"chans":["a",""]}"#,
                |p| p.chans("chans").map(drop),
                "empty_chan",
                "`chans[1]` must not be an empty channel name",
            ),
            (r#"{"durable":"yes"}"#, |p| p.flag("durable").map(drop), "invalid_type", "`durable` must be a boolean"),
            (r#"{"count":0}"#, |p| p.count("count").map(drop), "invalid_value", "`count` must be between 1 and 1000"),
            (r#"{"count":-1}"#, |p| p.count("count").map(drop), "invalid_value", "`count` must be between 1 and 1000"),
            (r#"{"count":"9"}"#, |p| p.count("count").map(drop), "invalid_type", "`count` must be an integer"),
            (
                r#"{"cursor":"007"}"#,
                |p| p.cursor("cursor").map(drop),
                "invalid_value",
                "`cursor` must be a cursor a previous page returned (decimal digits), or \"0\"",
            ),
            (
                r#"{"cursor":""}"#,
                |p| p.cursor("cursor").map(drop),
                "invalid_value",
                "`cursor` must be a cursor a previous page returned (decimal digits), or \"0\"",
            ),
            (
                r#"{"x":1}"#,
                |p| std::mem::replace(p, params("{}")).finish(),
                "unknown_field",
                "`x` is not a parameter of this method",
            ),
        ];
        for (body, read, code, message) in cases {
            let error = read(&mut params(body)).unwrap_err();
            assert_eq!((error.code(), error.to_string().as_str()), (*code, *message), "{body}");
        }
    }

    #[test]
    fn integral_numbers_are_integers_as_in_json_schema() {
        let mut p = params(r#"{"a":5.0,"b":[-3e2,7],"c":9.2233720368547758e18,"d":-9223372036854775809,"count":2.0}"#);
        assert_eq!((p.id("a").unwrap(), p.ids("b").unwrap(), p.count("count").unwrap()), (5, vec![-300, 7], 2));
        assert_eq!(p.id("c").unwrap_err().code(), "invalid_id", "2^63 is out of range");
        assert_eq!(p.id("d").unwrap_err().code(), "invalid_id", "i64::MIN - 1 is out of range");
        let mut p = params(r#"{"a":-9.223372036854776e18,"count":1.5,"n":1e30,"b":-3644754397156922.0}"#);
        assert_eq!((p.id("a").unwrap(), p.id("b").unwrap()), (i64::MIN, -3644754397156922));
        assert_eq!(p.count("count").unwrap_err().code(), "invalid_type");
        assert_eq!(p.count("n").unwrap_err().code(), "invalid_value");
    }

    #[test]
    fn bodies_must_be_json_objects_and_null_is_absent() {
        assert_eq!(Params::from_body(b"{").unwrap_err().code(), "malformed_json");
        let error = Params::from_body(b"[1]").unwrap_err();
        assert_eq!((error.code(), error.to_string()), ("invalid_type", "`body` must be a JSON object".to_owned()));
        let mut p = params(r#"{"meta":null,"sender":null,"cursor":"12","count":5}"#);
        assert_eq!(p.text("meta").unwrap(), None);
        assert_eq!(p.id_or("sender", 0).unwrap(), 0);
        assert_eq!((p.cursor("cursor").unwrap(), p.count("count").unwrap()), (12, 5));
        p.finish().unwrap();
        assert!(params("  ").finish().is_ok());
    }
}
