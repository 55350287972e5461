//! The edge of the demo routes: form fields in, validated values out.
//!
//! FreeIM's demo is an ASP.NET controller, whose form binding ignores the case of field
//! names (its own page posts `websocketid` to one route and `websocketId` to the others), so
//! [`Fields`] looks names up case-insensitively. Every value is checked here, against the
//! named limits below, so the routes only ever see ids, channels and messages that the
//! broker and the browsers can carry.

use super::error::DemoError;
use axum::extract::{FromRequest, Request};
use axum::http::{Method, header};
use bytes::Bytes;
use freeim::ClientId;

/// The largest client id the demo accepts or hands out: 2^53 − 1, the largest integer a
/// browser's JSON parser keeps exact. (FreeIM's ids are C# `long`s; a page holds them as
/// JavaScript numbers.)
pub const MAX_CLIENT_ID: ClientId = (1 << 53) - 1;
/// Bytes of one `message` field, after form decoding. A chat line plus its JSON envelope
/// fits easily; beyond this the route answers 413 and nothing is sent.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Bytes of a whole request body, a little over one message with its other fields and
/// the form encoding (which can triple non-ASCII text). Beyond this axum stops reading and
/// the route answers 413.
pub const MAX_BODY_BYTES: usize = 4 * MAX_MESSAGE_BYTES;
/// Characters of a channel name (it becomes part of Redis keys and of every page's list).
pub const MAX_CHANNEL_CHARS: usize = 64;
/// Characters of a nickname.
pub const MAX_NICK_CHARS: usize = 32;

/// The decoded fields of a form body (POST) or of the query string (GET).
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// Decodes `application/x-www-form-urlencoded` text.
    pub fn parse(bytes: &[u8]) -> Self {
        Fields(form_urlencoded::parse(bytes).into_owned().collect())
    }

    /// The first value of `name` (any case), `None` when absent or empty.
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    /// A required client id in `1..=`[`MAX_CLIENT_ID`].
    pub fn client_id(&self, name: &'static str) -> Result<ClientId, DemoError> {
        let text = self.get(name).ok_or(DemoError::Missing(name))?;
        parse_client_id(name, text)
    }

    /// An optional client id: absent is `None`, present must be valid.
    pub fn optional_client_id(&self, name: &'static str) -> Result<Option<ClientId>, DemoError> {
        self.get(name).map(|text| parse_client_id(name, text)).transpose()
    }

    /// A required channel name: not blank, at most [`MAX_CHANNEL_CHARS`], no control
    /// characters.
    pub fn channel(&self, name: &'static str) -> Result<String, DemoError> {
        let text = self.get(name).ok_or(DemoError::Missing(name))?;
        short_text(name, text, MAX_CHANNEL_CHARS).map(str::to_owned)
    }

    /// A required message: not empty, at most [`MAX_MESSAGE_BYTES`]. Sent as is (pages
    /// send a JSON document as text, which the library serializes once more, as FreeIM).
    pub fn message(&self, name: &'static str) -> Result<&str, DemoError> {
        let text = self.get(name).ok_or(DemoError::Missing(name))?;
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(DemoError::TooLarge { field: name, limit: MAX_MESSAGE_BYTES });
        }
        Ok(text)
    }

    /// A required nickname, trimmed: 1 to [`MAX_NICK_CHARS`] characters, no control
    /// characters.
    pub fn nick(&self, name: &'static str) -> Result<String, DemoError> {
        let text = self.get(name).map(str::trim).filter(|t| !t.is_empty()).ok_or(DemoError::Missing(name))?;
        short_text(name, text, MAX_NICK_CHARS).map(str::to_owned)
    }

    /// An optional boolean as ASP.NET binds it: `true`/`false` in any case; absent is false.
    pub fn flag(&self, name: &'static str) -> Result<bool, DemoError> {
        match self.get(name) {
            None => Ok(false),
            Some(t) if t.eq_ignore_ascii_case("true") => Ok(true),
            Some(t) if t.eq_ignore_ascii_case("false") => Ok(false),
            Some(t) => Err(DemoError::Invalid { field: name, reason: format!("{t:?} is not true or false") }),
        }
    }
}

fn parse_client_id(name: &'static str, text: &str) -> Result<ClientId, DemoError> {
    let invalid =
        || DemoError::Invalid { field: name, reason: format!("{text:?} is not an id from 1 to {MAX_CLIENT_ID}") };
    match text.trim().parse::<ClientId>() {
        Ok(id) if (1..=MAX_CLIENT_ID).contains(&id) => Ok(id),
        _ => Err(invalid()),
    }
}

fn short_text<'a>(name: &'static str, text: &'a str, max_chars: usize) -> Result<&'a str, DemoError> {
    let invalid = |reason: String| Err(DemoError::Invalid { field: name, reason });
    if text.trim().is_empty() {
        return invalid("is blank".into());
    }
    if text.chars().count() > max_chars {
        return invalid(format!("is longer than {max_chars} characters"));
    }
    if text.chars().any(char::is_control) {
        return invalid("holds a control character".into());
    }
    Ok(text)
}

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = DemoError;

    /// GET: the query string. Otherwise the body, as a form; a body of another declared
    /// type is refused (415), a missing type is read as a form (plain `curl -d` works).
    async fn from_request(req: Request, state: &S) -> Result<Self, DemoError> {
        if req.method() == Method::GET {
            return Ok(Fields::parse(req.uri().query().unwrap_or_default().as_bytes()));
        }
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if !essence.is_empty() && !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(DemoError::Body {
                status: axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                msg: format!("expected a form body (application/x-www-form-urlencoded), got {essence}"),
            });
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| DemoError::Body { status: rejection.status(), msg: rejection.body_text() })?;
        Ok(Fields::parse(&body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_empty_is_absent() {
        let f = Fields::parse(b"websocketid=42&channel=&message=%E4%BD%A0%E5%A5%BD+x");
        assert_eq!(f.client_id("websocketId").unwrap(), 42);
        assert!(matches!(f.channel("channel"), Err(DemoError::Missing("channel"))));
        assert_eq!(f.message("message").unwrap(), "你好 x");
        assert_eq!(f.optional_client_id("other").unwrap(), None);
        assert!(!f.flag("isReceipt").unwrap());
    }

    #[test]
    fn bad_values_are_refused_with_the_field_name() {
        let long_chan = "c".repeat(MAX_CHANNEL_CHARS + 1);
        let big = "m".repeat(MAX_MESSAGE_BYTES + 1);
        type Check = fn(&Fields) -> Result<(), DemoError>;
        let cases: [(&str, Check, &str); 9] = [
            ("id=abc", |f| f.client_id("id").map(drop), "id: \"abc\" is not an id"),
            ("id=0", |f| f.client_id("id").map(drop), "id: \"0\" is not an id"),
            ("id=-5", |f| f.client_id("id").map(drop), "id: \"-5\" is not an id"),
            ("id=9007199254740992", |f| f.client_id("id").map(drop), "id: \"9007199254740992\" is not"),
            ("c=+++", |f| f.channel("c").map(drop), "c: is blank"),
            ("c=a%0Ab", |f| f.channel("c").map(drop), "c: holds a control character"),
            ("r=yes", |f| f.flag("r").map(drop), "r: \"yes\" is not true or false"),
            (&format!("c={long_chan}"), |f| f.channel("c").map(drop), "c: is longer than 64 characters"),
            (&format!("m={big}"), |f| f.message("m").map(drop), "m is longer than 16384 bytes"),
        ];
        for (form, check, want) in cases {
            let err = check(&Fields::parse(form.as_bytes())).unwrap_err().to_string();
            assert!(err.starts_with(want), "{form}: got {err}");
        }
    }

    #[test]
    fn nicknames_are_trimmed() {
        assert_eq!(Fields::parse(b"nick=+Ann+").nick("nick").unwrap(), "Ann");
        assert!(matches!(Fields::parse(b"nick=++").nick("nick"), Err(DemoError::Missing("nick"))));
    }
}
