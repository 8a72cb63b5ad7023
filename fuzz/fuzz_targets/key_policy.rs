//! Fuzz target: the consumer's key policy (`invalidator::keys::KeyPolicy::check`).
//!
//! Input format (readable seeds, every key reachable): the first byte mod 4 is the number of
//! allow-list prefixes; the rest, split on the byte 0xFF (never part of UTF-8), gives those
//! prefixes and then the keys (invalid UTF-8 becomes U+FFFD).
//!
//! Invariants, from the README's key policy: `check` never panics; it accepts a key list
//! exactly when every key is non-empty, at most 1024 bytes, free of control characters and
//! `*`, outside `invalidator:`, starts with an allowed prefix (when there is an allow-list),
//! and has a hash tag or no `}`; a refusal names the first offending key, and that key breaks
//! the rule the error names. For an accepted key, its fill guard and bump marker hash to the
//! key's own cluster slot (one-slot Lua scripts).
#![no_main]

use invalidator::cache::{guard_key, hash_tag, seen_key, slot};
use invalidator::keys::{KeyPolicy, KeyRejected, MAX_KEY_BYTES};
use libfuzzer_sys::fuzz_target;

/// Why the README's key policy refuses `key`, or None. Written from the README, not the code.
fn offence(key: &str, prefixes: &[String]) -> Option<&'static str> {
    if key.is_empty() {
        Some("empty")
    } else if key.len() > MAX_KEY_BYTES {
        Some("too long")
    } else if key.chars().any(|c| c.is_control()) {
        Some("control character")
    } else if key.contains('*') {
        Some("wildcard")
    } else if key.starts_with("invalidator:") {
        Some("reserved")
    } else if !prefixes.is_empty() && !prefixes.iter().any(|p| key.starts_with(p.as_str())) {
        Some("not allowed")
    } else if key.contains('}') && hash_tag(key).is_none() {
        Some("unslottable")
    } else {
        None
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&first, rest)) = bytes.split_first() else {
        return;
    };
    let mut pieces = rest
        .split(|&b| b == 0xFF)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let prefixes: Vec<String> = pieces.by_ref().take(usize::from(first % 4)).collect();
    let keys: Vec<String> = pieces.collect();
    let policy = KeyPolicy {
        allow_prefixes: prefixes.clone(),
    };

    let first_bad = keys
        .iter()
        .enumerate()
        .find_map(|(i, k)| offence(k, &prefixes).map(|why| (i + 1, why)));
    match (policy.check(&keys), first_bad) {
        (Ok(()), None) => {
            for key in &keys {
                assert_eq!(slot(&guard_key(key)), slot(key), "guard of {key:?} in another slot");
                let marker = seen_key(key, uuid_of(bytes));
                assert_eq!(slot(&marker), slot(key), "marker of {key:?} in another slot");
            }
        }
        (Ok(()), Some((index, why))) => {
            panic!("accepted key {index} ({:?}) which is {why}", keys[index - 1])
        }
        (Err(e), None) => panic!("refused a key list the policy allows: {e}"),
        (Err(e), Some((index, _))) => {
            let (got, key) = match &e {
                KeyRejected::Empty { index } => (*index, "empty"),
                KeyRejected::TooLong { index, .. } => (*index, "too long"),
                KeyRejected::ControlCharacter { index, .. } => (*index, "control character"),
                KeyRejected::Wildcard { index, .. } => (*index, "wildcard"),
                KeyRejected::Reserved { index, .. } => (*index, "reserved"),
                KeyRejected::NotAllowed { index, .. } => (*index, "not allowed"),
                KeyRejected::Unslottable { index, .. } => (*index, "unslottable"),
            };
            assert_eq!(got, index, "refusal names key {got}, the first bad one is {index}: {e}");
            // The named rule must really be broken by that key (a key may break several; the
            // order of the checks is the code's choice).
            let k = &keys[index - 1];
            let broken = match key {
                "empty" => k.is_empty(),
                "too long" => k.len() > MAX_KEY_BYTES,
                "control character" => k.chars().any(|c| c.is_control()),
                "wildcard" => k.contains('*'),
                "reserved" => k.starts_with("invalidator:"),
                "not allowed" => !prefixes.iter().any(|p| k.starts_with(p.as_str())),
                _ => k.contains('}') && hash_tag(k).is_none(),
            };
            assert!(broken, "key {index} ({k:?}) refused as {key}, which it is not: {e}");
        }
    }
});

/// A deterministic event id for the marker name.
fn uuid_of(bytes: &[u8]) -> uuid::Uuid {
    let mut b = [0u8; 16];
    for (i, x) in bytes.iter().enumerate() {
        b[i % 16] ^= x;
    }
    uuid::Uuid::from_bytes(b)
}
