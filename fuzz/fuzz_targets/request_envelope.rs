//! One frame's payload through the request decoder with the node's entry limit
//! (`decode_request_within`, `count_entries`), and through the client's response decoder.
//!
//! Oracles: the bounded entry count agrees with the full one (equal up to the limit, past it
//! once the full count is); a request is refused for its entries exactly when it has too
//! many; the two decoding steps agree on what is malformed; and whatever decodes re-encodes
//! to bytes that decode to the same value.

#![no_main]

use cairn_fuzz::REQUEST_ENTRIES_MAX;
use cairn_protocol::frame::{
    count_entries, decode_request, decode_request_within, decode_response, encode_request,
    encode_response, RequestDecodeError,
};
use cairn_protocol::ApiError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let entries = count_entries(data, u64::MAX);
    let bounded = count_entries(data, REQUEST_ENTRIES_MAX);
    if entries <= REQUEST_ENTRIES_MAX {
        assert_eq!(bounded, entries);
    } else {
        assert!(REQUEST_ENTRIES_MAX < bounded && bounded <= entries);
    }

    match decode_request_within(data, REQUEST_ENTRIES_MAX) {
        Ok(frame) => {
            assert!(entries <= REQUEST_ENTRIES_MAX);
            let encoded = encode_request(&frame);
            assert_eq!(decode_request(&encoded), Ok(frame));
        }
        Err(RequestDecodeError::Refused {
            error: ApiError::LimitExceeded { requested, max, .. },
            ..
        }) => {
            assert!(entries > REQUEST_ENTRIES_MAX);
            assert_eq!((requested, max), (bounded, REQUEST_ENTRIES_MAX));
        }
        Err(RequestDecodeError::Malformed { .. }) => {
            assert!(matches!(
                decode_request(data),
                Err(RequestDecodeError::Malformed { .. })
            ));
        }
        Err(RequestDecodeError::Refused { .. }) => {}
    }

    if let Ok(frame) = decode_response(data) {
        let encoded = encode_response(&frame);
        assert_eq!(decode_response(&encoded), Ok(frame));
    }
});
