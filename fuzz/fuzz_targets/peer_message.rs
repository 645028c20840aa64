//! One frame from another node through every peer decoder: the handshake's hello, challenge
//! and proof, and the replication frame, whose record batches the node then validates
//! (`node/src/peer.rs`) before they reach a replica.
//!
//! Oracle: whatever decodes re-encodes to bytes that decode to the same value.

#![no_main]

use cairn_protocol::batch::RecordBatch;
use cairn_protocol::peer::{
    decode_peer_challenge, decode_peer_frame, decode_peer_hello, decode_peer_proof,
    encode_peer_challenge, encode_peer_frame, encode_peer_hello, encode_peer_proof,
    PeerWireMessage,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(hello) = decode_peer_hello(data) {
        assert_eq!(decode_peer_hello(&encode_peer_hello(&hello)), Some(hello));
    }
    if let Some(challenge) = decode_peer_challenge(data) {
        assert_eq!(
            decode_peer_challenge(&encode_peer_challenge(&challenge)),
            Some(challenge)
        );
    }
    if let Some(proof) = decode_peer_proof(data) {
        assert_eq!(decode_peer_proof(&encode_peer_proof(&proof)), Some(proof));
    }
    if let Ok(frame) = decode_peer_frame(data) {
        for message in &frame.messages {
            if let PeerWireMessage::Append { batches, .. } = &message.message {
                for batch in batches {
                    // A node validates a follower's batches under the 256 MiB reader bound;
                    // here under 1 MiB, so that a decompression bomb stays within the fuzz
                    // allocator's bound (the bound's own handling is the record_batch
                    // target's).
                    let bound = 1024 * 1024;
                    if let Ok(batch) = RecordBatch::validate_bounded(batch.clone(), bound) {
                        assert_eq!(
                            batch.records_bounded(bound).count(),
                            batch.record_count() as usize
                        );
                    }
                }
            }
        }
        assert_eq!(decode_peer_frame(&encode_peer_frame(&frame)), Ok(frame));
    }
});
