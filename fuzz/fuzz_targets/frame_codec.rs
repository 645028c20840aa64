//! A client's byte stream, arriving in arbitrary pieces, cut into frames by the node's
//! `FrameCodec` with the default frame limit; every frame goes through the request decoder as
//! the listener runs it (`node/src/server/mod.rs`), the first also through the peer hello
//! decoder when it is not a request.
//!
//! Input: one byte `n`, then `n % 8 + 1` chunk sizes (each byte + 1), used in turn to cut the
//! rest, the stream. Oracle: however the stream is cut, the codec yields the same frames and
//! ends in the same state as when it is given the stream at once.

#![no_main]

use bytes::BytesMut;
use cairn_fuzz::{FRAME_BYTES_MAX, REQUEST_ENTRIES_MAX};
use cairn_protocol::frame::{decode_request_within, FrameCodec, FrameError, RequestDecodeError};
use cairn_protocol::peer::decode_peer_hello;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// How a stream ended: refused for a frame's size, or waiting for this many more bytes.
#[derive(Debug, PartialEq)]
enum End {
    TooLarge { size: usize },
    Waiting { buffered: usize },
}

/// Feeds `stream` to a fresh codec in pieces of `chunks` sizes (in turn), decoding after each
/// piece until the codec waits or refuses, as `FramedRead` does.
fn cut(stream: &[u8], chunks: &[usize]) -> (Vec<BytesMut>, End) {
    let mut codec = FrameCodec::new(FRAME_BYTES_MAX);
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut sizes = chunks.iter().cycle();
    loop {
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= FRAME_BYTES_MAX);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { size, max }) => {
                    assert_eq!(max, FRAME_BYTES_MAX);
                    assert!(size > max);
                    return (frames, End::TooLarge { size });
                }
                Err(FrameError::Io(error)) => panic!("the codec invented an I/O error: {error}"),
            }
        }
        if rest.is_empty() {
            return (
                frames,
                End::Waiting {
                    buffered: buffer.len(),
                },
            );
        }
        let size = (*sizes.next().expect("at least one chunk size")).min(rest.len());
        buffer.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 8) + 1;
    if rest.len() < count {
        return;
    }
    let (chunks, stream) = rest.split_at(count);
    let chunks: Vec<usize> = chunks.iter().map(|&size| usize::from(size) + 1).collect();

    let (frames, end) = cut(stream, &chunks);
    let (whole_frames, whole_end) = cut(stream, &[stream.len().max(1)]);
    assert_eq!(
        frames, whole_frames,
        "the frames depend on how the stream was cut"
    );
    assert_eq!(
        end, whole_end,
        "the end state depends on how the stream was cut"
    );

    for (index, frame) in frames.iter().enumerate() {
        match decode_request_within(frame, REQUEST_ENTRIES_MAX) {
            Err(RequestDecodeError::Malformed { .. }) if index == 0 => {
                let _ = decode_peer_hello(frame);
            }
            _ => {}
        }
    }
});
