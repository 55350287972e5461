//! Who may call the API: a request presents a key in `X-API-Key: KEY` or
//! `Authorization: apikey KEY`, compared with every configured key in constant time.
//!
//! Every key is compared (no early exit on a match), and each comparison takes the same
//! time whatever the bytes (`subtle`); only a key's length can show through timing, which
//! says nothing a guesser can use to find its bytes. Keys are never logged (`ApiKeys`'s
//! `Debug` redacts them) and no answer echoes one.

use crate::gateway::config::ApiKeys;
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use subtle::{Choice, ConstantTimeEq};

/// The header that carries the key as is.
const KEY_HEADER: &str = "x-api-key";
/// The `Authorization` scheme that carries the key (case-insensitive, as HTTP schemes are).
const SCHEME: &[u8] = b"apikey ";

/// Whether `headers` present one of `keys`.
pub(super) fn authorized(keys: &ApiKeys, headers: &HeaderMap) -> bool {
    let Some(presented) = presented(headers) else { return false };
    let matched = keys.as_slice().iter().fold(Choice::from(0), |any, key| any | key.as_bytes().ct_eq(presented));
    matched.into()
}

/// The key a request presents, if any.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(key) = headers.get(KEY_HEADER) {
        return Some(key.as_bytes());
    }
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, key) = value.split_at_checked(SCHEME.len())?;
    scheme.eq_ignore_ascii_case(SCHEME).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_header_with_any_configured_key() {
        let keys = ApiKeys::new(["old-key", "new-key"]).unwrap();
        let with = |name: &'static str, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            authorized(&keys, &headers)
        };
        assert!(with("x-api-key", "old-key") && with("x-api-key", "new-key"));
        assert!(with("authorization", "apikey new-key") && with("authorization", "ApiKey old-key"));
        assert!(!with("x-api-key", "new-ke") && !with("x-api-key", "new-key2") && !with("x-api-key", ""));
        assert!(!with("authorization", "Bearer new-key") && !with("authorization", "apikey"));
        assert!(!authorized(&keys, &HeaderMap::new()));
    }
}
