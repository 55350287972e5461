//! The names a cluster is addressed by, checked by one rule each: node names (`HOST:PORT`,
//! which also name each node's Redis channel `{P}Server{name}`) and the WebSocket path
//! (which also names every Redis key, `/ws` → `im_v2_ws`).
//!
//! The gateway's settings and [`crate::ImClientOptions`] check with these same functions,
//! so a name one side accepts the other cannot refuse: a business app and its nodes agree
//! on every key and channel.

/// WebSocket path of a cluster unless configured otherwise: FreeIM's `/ws`.
pub const DEFAULT_PATH: &str = "/ws";

/// A node name or WebSocket path that cannot address a cluster; fix the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NameError {
    /// Not `HOST:PORT`: no colon, an empty host, white space, or a port beyond 65535.
    #[error("{0:?} is not HOST:PORT")]
    NodeName(String),
    /// Not `/` followed by a name, or holds a character that would end the URL's path.
    #[error("{0:?} must start with '/' and a name, and hold no '?', '#' or white space")]
    Path(String),
}

/// A node name is `HOST:PORT`: a non-empty host without white space, and a `u16` port.
pub(crate) fn check_node_name(name: &str) -> Result<(), NameError> {
    let valid = name.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
    });
    if valid { Ok(()) } else { Err(NameError::NodeName(name.to_owned())) }
}

/// A WebSocket path is `/` and at least one more character, none of them `?`, `#` or white
/// space (they would end the path in a connect URL, or split it in a request line).
pub(crate) fn check_path(path: &str) -> Result<(), NameError> {
    let ends_path = |c: char| c == '?' || c == '#' || c.is_whitespace();
    let valid = path.len() > 1 && path.starts_with('/') && !path.contains(ends_path);
    if valid { Ok(()) } else { Err(NameError::Path(path.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_host_colon_port() {
        for good in ["127.0.0.1:6001", "im0.example.com:443", "[::1]:6001", "localhost:0"] {
            assert_eq!(check_node_name(good), Ok(()), "{good}");
        }
        for bad in ["", "a", "127.0.0.1", ":6001", "a:", "a:65536", "a:x", "a b:1", "a\t:1", " a:1"] {
            assert_eq!(check_node_name(bad), Err(NameError::NodeName(bad.to_owned())), "{bad:?}");
        }
        assert_eq!(check_node_name("a").unwrap_err().to_string(), "\"a\" is not HOST:PORT");
    }

    #[test]
    fn paths_are_slash_and_a_name() {
        for good in ["/ws", "/chat/ws", "/a"] {
            assert_eq!(check_path(good), Ok(()), "{good}");
        }
        for bad in ["", "/", "ws", "/ws?x", "/ws#x", "/w s", "/w\ts"] {
            assert_eq!(check_path(bad), Err(NameError::Path(bad.to_owned())), "{bad:?}");
        }
        assert_eq!(
            check_path("ws").unwrap_err().to_string(),
            "\"ws\" must start with '/' and a name, and hold no '?', '#' or white space"
        );
    }
}
