//! Fuzz target: the record decoder (`invalidator::wire::decode`) on arbitrary bytes.
//!
//! Invariants: `decode` never panics; an accepted event is schema version 1 with at least
//! one key; and it round-trips: `decode(event.encode()) == Ok(event)`, so what the DLQ tools
//! and the consumer re-encode is exactly what they read; and the hand-written encoder writes
//! exactly what serde_json writes for the same event.
#![no_main]

use invalidator::wire::{decode, SCHEMA_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(event) = decode(bytes) else {
        return;
    };
    assert_eq!(event.v, SCHEMA_VERSION, "accepted a foreign schema version");
    assert!(!event.keys.is_empty(), "accepted an event without keys");
    let encoded = event.encode();
    assert_eq!(
        String::from_utf8_lossy(&encoded),
        serde_json::to_string(&event).expect("an event serializes"),
        "the encoder and serde_json disagree"
    );
    assert_eq!(
        decode(&encoded).as_ref(),
        Ok(&event),
        "round trip changed the event; re-encoded as {:?}",
        String::from_utf8_lossy(&encoded)
    );
});
