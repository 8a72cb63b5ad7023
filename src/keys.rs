//! The key policy of the consumer (DESIGN §3): which Redis keys an event may touch. A key
//! that breaks it makes the whole event a permanent error (dead-lettered, nothing applied),
//! so a half-applied event never hides a configuration mistake.

use crate::cache;

/// The longest key accepted, in bytes: the limit the outbox's CHECK constraint enforces.
pub const MAX_KEY_BYTES: usize = 1024;

/// The allow-list of key prefixes. Empty means every key is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPolicy {
    pub allow_prefixes: Vec<String>,
}

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejected {
    #[error("key {index} is empty")]
    Empty { index: usize },
    #[error("key {index} is {len} bytes; at most {MAX_KEY_BYTES} are accepted")]
    TooLong { index: usize, len: usize },
    #[error("key {index} ({key:?}) contains a control character")]
    ControlCharacter { index: usize, key: String },
    #[error(
        "key {index} ({key:?}) contains '*': pattern (wildcard) deletes are not supported, \
         name every key"
    )]
    Wildcard { index: usize, key: String },
    #[error(
        "key {index} ({key:?}) is in invalidator's own namespace {:?}",
        cache::RESERVED_PREFIX
    )]
    Reserved { index: usize, key: String },
    #[error("key {index} ({key:?}) matches no allowed prefix ({allowed})")]
    NotAllowed {
        index: usize,
        key: String,
        allowed: String,
    },
    #[error("key {index}: {source}")]
    Unslottable {
        index: usize,
        #[source]
        source: cache::UnslottableKey,
    },
}

impl KeyPolicy {
    /// Checks every key of an event; the first offence wins. Indexes count from 1, like the
    /// SQL function's messages.
    pub fn check(&self, keys: &[String]) -> Result<(), KeyRejected> {
        for (i, key) in keys.iter().enumerate() {
            self.check_one(i + 1, key)?;
        }
        Ok(())
    }

    fn check_one(&self, index: usize, key: &str) -> Result<(), KeyRejected> {
        // Never echo a huge key back into a header or a log line.
        let shown = || key.chars().take(80).collect::<String>();
        if key.is_empty() {
            return Err(KeyRejected::Empty { index });
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(KeyRejected::TooLong {
                index,
                len: key.len(),
            });
        }
        if key.chars().any(char::is_control) {
            return Err(KeyRejected::ControlCharacter {
                index,
                key: shown().escape_default().to_string(),
            });
        }
        // '?' and '[' are glob characters too, but URL-shaped cache keys use them; '*' is
        // the one that only a pattern delete would mean.
        if key.contains('*') {
            return Err(KeyRejected::Wildcard {
                index,
                key: shown(),
            });
        }
        if key.starts_with(cache::RESERVED_PREFIX) {
            return Err(KeyRejected::Reserved {
                index,
                key: shown(),
            });
        }
        if !self.allow_prefixes.is_empty()
            && !self
                .allow_prefixes
                .iter()
                .any(|p| key.starts_with(p.as_str()))
        {
            return Err(KeyRejected::NotAllowed {
                index,
                key: shown(),
                allowed: self.allow_prefixes.join(", "),
            });
        }
        cache::check_slottable(key).map_err(|source| KeyRejected::Unslottable { index, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    /// With no allow-list every ordinary key passes; with one, only its prefixes do.
    fn allow_list() {
        let all = KeyPolicy::default();
        assert!(all
            .check(&keys(&["product:42", "{t1}:user:7", "page:/a?b=[1]"]))
            .is_ok());
        let some = KeyPolicy {
            allow_prefixes: vec!["product:".into(), "user:".into()],
        };
        assert!(some.check(&keys(&["product:1", "user:2"])).is_ok());
        assert!(matches!(
            some.check(&keys(&["product:1", "order:3"])),
            Err(KeyRejected::NotAllowed { index: 2, .. })
        ));
    }

    #[test]
    /// Empty, over-long, control-character, wildcard, reserved and unslottable keys fail.
    fn bad_keys() {
        let p = KeyPolicy::default();
        assert!(matches!(
            p.check(&keys(&[""])),
            Err(KeyRejected::Empty { .. })
        ));
        assert!(matches!(
            p.check(&["x".repeat(1025)]),
            Err(KeyRejected::TooLong { len: 1025, .. })
        ));
        assert!(p.check(&["x".repeat(1024)]).is_ok());
        assert!(matches!(
            p.check(&keys(&["a\nb"])),
            Err(KeyRejected::ControlCharacter { .. })
        ));
        assert!(matches!(
            p.check(&keys(&["a\u{7f}"])),
            Err(KeyRejected::ControlCharacter { .. })
        ));
        assert!(matches!(
            p.check(&keys(&["product:*"])),
            Err(KeyRejected::Wildcard { .. })
        ));
        assert!(matches!(
            p.check(&keys(&["invalidator:guard:{x}"])),
            Err(KeyRejected::Reserved { .. })
        ));
        assert!(matches!(
            p.check(&keys(&["a}b"])),
            Err(KeyRejected::Unslottable { .. })
        ));
    }
}
