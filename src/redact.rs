//! Connection strings that never print their secrets.
//!
//! Settings hold URLs such as `postgres://app:s3cret@db/app` or `rediss://:pw@cache:6380`.
//! Wrapping them in [`Redacted`] makes `Display` and `Debug` print the password as `***`, so a
//! URL can go into a log line or an error message without leaking the secret.

use std::fmt;

/// A connection string whose `Display`/`Debug` hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(String);

impl Redacted {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The real string, for handing to a client library. Never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Redacted {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redacted({:?})", redact(&self.0))
    }
}

/// Replaces the password of a URL (`scheme://user:pw@host`) or of a libpq key/value string
/// (`password=pw`) with `***`. Strings with neither come back unchanged.
pub fn redact(s: &str) -> String {
    if let Some(scheme_end) = s.find("://") {
        let rest = &s[scheme_end + 3..];
        // The authority ends at the first '/', '?' or '#'; the userinfo at its last '@'.
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let mut out = String::with_capacity(s.len());
        out.push_str(&s[..scheme_end + 3]);
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        } else {
            out.push_str(authority);
        }
        let tail = &rest[authority_end..];
        out.push_str(&redact_query_password(tail));
        return out;
    }
    redact_key_value(s)
}

/// `?password=x&…` in a URL's query string.
fn redact_query_password(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_string();
    };
    let (path, query) = tail.split_at(q + 1);
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{path}{}", parts.join("&"))
}

/// libpq `key=value key='quoted value'` strings.
fn redact_key_value(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let Some(pos) = lower.find("password") else {
        return s.to_string();
    };
    let after = &s[pos + "password".len()..];
    let trimmed = after.trim_start();
    let Some(value) = trimmed.strip_prefix('=') else {
        return s.to_string();
    };
    let value = value.trim_start();
    let value_start = s.len() - value.len();
    let value_len = if let Some(stripped) = value.strip_prefix('\'') {
        // Quoted: runs to the next unescaped quote.
        let mut end = stripped.len();
        let mut escaped = false;
        for (i, c) in stripped.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '\'' if !escaped => {
                    end = i;
                    break;
                }
                _ => escaped = false,
            }
        }
        (end + 2).min(value.len())
    } else {
        value.find(char::is_whitespace).unwrap_or(value.len())
    };
    format!("{}***{}", &s[..value_start], &s[value_start + value_len..])
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    /// A URL's password is hidden, the rest is kept for diagnosis.
    fn url_password_hidden() {
        assert_eq!(
            redact("postgres://app:s3cret@db.internal:5432/shop?sslmode=require"),
            "postgres://app:***@db.internal:5432/shop?sslmode=require"
        );
        assert_eq!(
            redact("rediss://:pw@cache:6380/0"),
            "rediss://:***@cache:6380/0"
        );
    }

    #[test]
    /// An '@' inside the password does not leak the part before it.
    fn url_password_with_at_sign() {
        assert_eq!(redact("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
    }

    #[test]
    /// Without a password nothing changes.
    fn url_without_password_unchanged() {
        assert_eq!(
            redact("postgres://root@127.0.0.1/test"),
            "postgres://root@127.0.0.1/test"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    /// A password given as a query parameter is hidden too.
    fn query_password_hidden() {
        assert_eq!(
            redact("postgres://h/db?user=u&password=secret&sslmode=disable"),
            "postgres://h/db?user=u&password=***&sslmode=disable"
        );
    }

    #[test]
    /// libpq key/value strings, quoted or not.
    fn key_value_password_hidden() {
        assert_eq!(
            redact("host=h user=u password=secret dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
        assert_eq!(
            redact("host=h password = 'a b\\' c' dbname=d"),
            "host=h password = *** dbname=d"
        );
    }
}
