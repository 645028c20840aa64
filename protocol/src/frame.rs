//! Frames and envelopes.
//!
//! On the wire every message is a frame: a 4-byte big-endian length, then that many bytes of
//! rmp-serde. A request frame is a map `{version, correlation_id, request}`, a response frame
//! `{correlation_id, result}`. Maps (not arrays) so that a field added later is skipped by an
//! older reader; enum variants are encoded by name.
//!
//! Decoding a request happens in two steps so that every failure gets the most precise typed
//! answer: if the envelope's header decodes but its request does not (an unknown request type
//! from a newer client, say), the server replies to that correlation id and keeps the
//! connection; if not even the header decodes, it replies once with correlation id 0 and
//! closes the connection.

use crate::error::ApiError;
use crate::messages::{Request, Response};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

/// The protocol versions this build speaks.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
pub const PROTOCOL_VERSION_MAX: u16 = 1;
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Correlation id used for replies to frames whose own id could not be read.
pub const UNKNOWN_CORRELATION_ID: u64 = 0;

/// The node's default `limits.frame_bytes_max` (a node config test pins the two together).
/// The fuzz targets (`fuzz/`) cut frames with it and refuse any allocation larger than it.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 4 * 1024 * 1024;
/// The node's default `limits.request_entries_max`, pinned like [`FRAME_BYTES_MAX_DEFAULT`].
pub const REQUEST_ENTRIES_MAX_DEFAULT: u32 = 65_536;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub version: u16,
    pub correlation_id: u64,
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub correlation_id: u64,
    pub result: Result<Response, ApiError>,
}

/// Just the header of a request envelope; the `request` field is skipped.
#[derive(Deserialize)]
struct RequestHeader {
    version: u16,
    correlation_id: u64,
}

/// Why a request frame could not be turned into a [`RequestFrame`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestDecodeError {
    /// Not even the envelope could be read: answer with correlation id 0 and close.
    #[error("malformed frame: {reason}")]
    Malformed { reason: String },
    /// The envelope was read; the request inside was not understood.
    #[error("request {correlation_id} (version {version}) not understood: {error}")]
    Refused {
        version: u16,
        correlation_id: u64,
        error: ApiError,
    },
}

pub fn encode_request(frame: &RequestFrame) -> Bytes {
    encode_named(frame).expect("request frames always serialize")
}

pub fn encode_response(frame: &ResponseFrame) -> Bytes {
    encode_named(frame).expect("response frames always serialize")
}

/// How many bytes `value` takes as named MessagePack, without writing them anywhere.
pub fn encoded_size<T: Serialize + ?Sized>(value: &T) -> Result<usize, rmp_serde::encode::Error> {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(bytes.len());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    rmp_serde::encode::write_named(&mut counter, value)?;
    Ok(counter.0)
}

/// `value` as named MessagePack, in a buffer allocated once at its exact size: the size is
/// counted first (a batch's bytes are added up, not copied), so each byte is then written
/// once, where growing a buffer from empty copied a frame holding a 32 KiB batch about twice
/// more on the way (a node's profile at 65,000 records/s had 1.3% of its samples there).
pub fn encode_named<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, rmp_serde::encode::Error> {
    let mut buffer = Vec::with_capacity(encoded_size(value)?);
    rmp_serde::encode::write_named(&mut buffer, value)?;
    Ok(Bytes::from(buffer))
}

/// The config key of the entry limit, named in [`ApiError::LimitExceeded`].
pub const REQUEST_ENTRIES_LIMIT: &str = "limits.request_entries_max";

pub fn decode_request(bytes: &[u8]) -> Result<RequestFrame, RequestDecodeError> {
    decode_request_within(bytes, u64::MAX)
}

/// [`decode_request`], refusing a request holding more than `entries_max` entries (list
/// items and map fields, counted over the whole frame) before anything is allocated for it.
/// An entry costs one byte on the wire but tens of bytes decoded (an empty topic name is a
/// 24-byte `String`), so a frame of empty names would otherwise decode to 25 times its size.
pub fn decode_request_within(
    bytes: &[u8],
    entries_max: u64,
) -> Result<RequestFrame, RequestDecodeError> {
    let header: RequestHeader =
        rmp_serde::from_slice(bytes).map_err(|error| RequestDecodeError::Malformed {
            reason: error.to_string(),
        })?;
    if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&header.version) {
        return Err(RequestDecodeError::Refused {
            version: header.version,
            correlation_id: header.correlation_id,
            error: ApiError::UnsupportedVersion {
                requested: header.version,
                min: PROTOCOL_VERSION_MIN,
                max: PROTOCOL_VERSION_MAX,
            },
        });
    }
    let entries = count_entries(bytes, entries_max);
    if entries > entries_max {
        return Err(RequestDecodeError::Refused {
            version: header.version,
            correlation_id: header.correlation_id,
            error: ApiError::LimitExceeded {
                limit: REQUEST_ENTRIES_LIMIT.to_string(),
                requested: entries,
                max: entries_max,
            },
        });
    }
    rmp_serde::from_slice(bytes).map_err(|error| {
        let detail = error.to_string();
        let error = if detail.contains("unknown variant") {
            ApiError::UnknownRequestType { detail }
        } else {
            ApiError::InvalidRequest { reason: detail }
        };
        RequestDecodeError::Refused {
            version: header.version,
            correlation_id: header.correlation_id,
            error,
        }
    })
}

/// Counts the entries (array items and map pairs) of the MessagePack values in `bytes`,
/// stopping as soon as the count passes `stop_above`. One pass, no recursion and no
/// allocation: a counter of values still to visit replaces the stack, so deep nesting costs
/// nothing. Input that is not MessagePack ends the count early; the decoder that runs next
/// reports it.
pub fn count_entries(bytes: &[u8], stop_above: u64) -> u64 {
    let mut position = 0usize;
    let mut to_visit: u64 = 1;
    let mut entries: u64 = 0;
    // Each value takes at least one byte, so this loop ends within `bytes.len()` turns.
    while to_visit > 0 && position < bytes.len() && entries <= stop_above {
        to_visit -= 1;
        let marker = bytes[position];
        position += 1;
        let read_length = |position: &mut usize, width: usize| -> Option<u64> {
            let field = bytes.get(*position..*position + width)?;
            *position += width;
            Some(
                field
                    .iter()
                    .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte)),
            )
        };
        // (entries opened, values they hold, payload bytes to skip)
        let (opened, values, skip) = match marker {
            0x80..=0x8f => {
                let pairs = u64::from(marker & 0x0f);
                (pairs, pairs * 2, 0)
            }
            0x90..=0x9f => {
                let items = u64::from(marker & 0x0f);
                (items, items, 0)
            }
            0xa0..=0xbf => (0, 0, u64::from(marker & 0x1f)),
            0xc4 | 0xd9 => match read_length(&mut position, 1) {
                Some(length) => (0, 0, length),
                None => break,
            },
            0xc5 | 0xda => match read_length(&mut position, 2) {
                Some(length) => (0, 0, length),
                None => break,
            },
            0xc6 | 0xdb => match read_length(&mut position, 4) {
                Some(length) => (0, 0, length),
                None => break,
            },
            // ext 8/16/32: a length, then a type byte and the data.
            0xc7 => match read_length(&mut position, 1) {
                Some(length) => (0, 0, length + 1),
                None => break,
            },
            0xc8 => match read_length(&mut position, 2) {
                Some(length) => (0, 0, length + 1),
                None => break,
            },
            0xc9 => match read_length(&mut position, 4) {
                Some(length) => (0, 0, length + 1),
                None => break,
            },
            0xca => (0, 0, 4),
            0xcb => (0, 0, 8),
            0xcc | 0xd0 => (0, 0, 1),
            0xcd | 0xd1 => (0, 0, 2),
            0xce | 0xd2 => (0, 0, 4),
            0xcf | 0xd3 => (0, 0, 8),
            0xd4 => (0, 0, 2),
            0xd5 => (0, 0, 3),
            0xd6 => (0, 0, 5),
            0xd7 => (0, 0, 9),
            0xd8 => (0, 0, 17),
            0xdc => match read_length(&mut position, 2) {
                Some(items) => (items, items, 0),
                None => break,
            },
            0xdd => match read_length(&mut position, 4) {
                Some(items) => (items, items, 0),
                None => break,
            },
            0xde => match read_length(&mut position, 2) {
                Some(pairs) => (pairs, pairs * 2, 0),
                None => break,
            },
            0xdf => match read_length(&mut position, 4) {
                Some(pairs) => (pairs, pairs * 2, 0),
                None => break,
            },
            // Integers, nil, booleans: the marker is the whole value. 0xc1 is never used;
            // the decoder refuses it.
            _ => (0, 0, 0),
        };
        entries = entries.saturating_add(opened);
        to_visit = to_visit.saturating_add(values);
        position = position.saturating_add(usize::try_from(skip).unwrap_or(usize::MAX));
    }
    entries
}

pub fn decode_response(bytes: &[u8]) -> Result<ResponseFrame, String> {
    rmp_serde::from_slice(bytes).map_err(|error| error.to_string())
}

/// Why a frame could not be cut from the byte stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Cuts the stream into frames of at most `frame_bytes_max` payload bytes, and writes
/// payloads with their length prefix.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    frame_bytes_max: usize,
}

impl FrameCodec {
    pub fn new(frame_bytes_max: usize) -> Self {
        FrameCodec { frame_bytes_max }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if src.len() < LENGTH_PREFIX_BYTES {
            return Ok(None);
        }
        let size = u32::from_be_bytes(src[..4].try_into().expect("4 bytes")) as usize;
        if size > self.frame_bytes_max {
            return Err(FrameError::TooLarge {
                size,
                max: self.frame_bytes_max,
            });
        }
        if src.len() < LENGTH_PREFIX_BYTES + size {
            src.reserve(LENGTH_PREFIX_BYTES + size - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX_BYTES);
        Ok(Some(src.split_to(size)))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        if payload.len() > self.frame_bytes_max {
            return Err(FrameError::TooLarge {
                size: payload.len(),
                max: self.frame_bytes_max,
            });
        }
        dst.reserve(LENGTH_PREFIX_BYTES + payload.len());
        dst.put_u32(payload.len() as u32);
        dst.extend_from_slice(&payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Epoch, Offset};
    use crate::messages::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Golden bytes: these pin the wire encoding. If one changes, old clients break: bump the
    /// protocol version instead of editing the expectation.
    #[test]
    fn golden_metadata_request() {
        let frame = RequestFrame {
            version: 1,
            correlation_id: 7,
            request: Request::Metadata(MetadataRequest {
                topics: Some(vec!["t".into()]),
            }),
        };
        let bytes = encode_request(&frame);
        assert_eq!(
            hex(&bytes),
            concat!(
                "83a776657273696f6e01ae636f7272656c6174696f6e5f696407a77265717565737481",
                "a84d6574616461746181a6746f7069637391a174"
            )
        );
        assert_eq!(decode_request(&bytes).unwrap(), frame);
    }

    #[test]
    fn golden_produce_request_carries_the_batch_as_binary() {
        let frame = RequestFrame {
            version: 1,
            correlation_id: 1,
            request: Request::Produce(ProduceRequest {
                topic: "t".into(),
                partition: 2,
                acks: Acks::All,
                timeout_ms: 30_000,
                batch: Bytes::from_static(&[0xde, 0xad]),
            }),
        };
        let bytes = encode_request(&frame);
        assert_eq!(
            hex(&bytes),
            concat!(
                "83a776657273696f6e01ae636f7272656c6174696f6e5f696401a7726571756573",
                "7481a750726f6475636585a5746f706963a174a9706172746974696f6e02a461636b",
                "73a3416c6caa74696d656f75745f6d73cd7530a56261746368c402dead"
            )
        );
        assert_eq!(decode_request(&bytes).unwrap(), frame);
    }

    #[test]
    fn golden_cluster_status() {
        let request = RequestFrame {
            version: 1,
            correlation_id: 3,
            request: Request::ClusterStatus(ClusterStatusRequest {
                include_internal: true,
            }),
        };
        let bytes = encode_request(&request);
        assert_eq!(
            hex(&bytes),
            concat!(
                "83a776657273696f6e01ae636f7272656c6174696f6e5f696403a77265717565737481",
                "ad436c757374657253746174757381b0696e636c7564655f696e7465726e616cc3"
            )
        );
        assert_eq!(decode_request(&bytes).unwrap(), request);

        let response = ResponseFrame {
            correlation_id: 3,
            result: Ok(Response::ClusterStatus(ClusterStatusResponse {
                node_id: crate::NodeId(1),
                nodes: vec![NodeStatus {
                    node_id: crate::NodeId(2),
                    address: Some("h:1".into()),
                    liveness: Liveness::Down,
                    metadata_voter: true,
                }],
                partitions: vec![PartitionStatus {
                    topic: "t".into(),
                    partition: 0,
                    internal: false,
                    replicas: vec![crate::NodeId(1), crate::NodeId(2)],
                    leader: Some(crate::NodeId(1)),
                    leader_epoch: Epoch(4),
                    offline_replicas: vec![crate::NodeId(2)],
                    repairing_replicas: Vec::new(),
                    corrupted_replicas: Vec::new(),
                    lagging_replicas: Vec::new(),
                }],
            })),
        };
        let bytes = encode_response(&response);
        assert_eq!(
            hex(&bytes),
            concat!(
                "82ae636f7272656c6174696f6e5f696403a6726573756c7481a24f6b81ad436c7573",
                "74657253746174757383a76e6f64655f696401a56e6f6465739184a76e6f64655f69",
                "6402a761646472657373a3683a31a86c6976656e657373a4446f776eae6d65746164",
                "6174615f766f746572c3aa706172746974696f6e739187a5746f706963a174a97061",
                "72746974696f6e00a8696e7465726e616cc2a87265706c69636173920102a66c6561",
                "64657201ac6c65616465725f65706f636804b06f66666c696e655f7265706c696361",
                "739102",
            )
        );
        assert_eq!(decode_response(&bytes).unwrap(), response);
        // Damaged replicas are sent only when there are some, so the bytes above are what
        // nodes that know nothing of them send and expect.
        let mut damaged = response.clone();
        if let Ok(Response::ClusterStatus(status)) = &mut damaged.result {
            status.partitions[0].corrupted_replicas = vec![crate::NodeId(1)];
            status.partitions[0].repairing_replicas = vec![crate::NodeId(2)];
        }
        let bytes = encode_response(&damaged);
        assert!(hex(&bytes).contains(&hex(b"corrupted_replicas")));
        assert_eq!(decode_response(&bytes).unwrap(), damaged);
    }

    #[test]
    fn golden_init_producer_id() {
        let request = RequestFrame {
            version: 1,
            correlation_id: 5,
            request: Request::InitProducerId(InitProducerIdRequest {}),
        };
        let bytes = encode_request(&request);
        assert_eq!(hex(&bytes), "83a776657273696f6e01ae636f7272656c6174696f6e5f696405a77265717565737481ae496e697450726f6475636572496480");
        assert_eq!(decode_request(&bytes).unwrap(), request);
        let response = ResponseFrame {
            correlation_id: 5,
            result: Ok(Response::InitProducerId(InitProducerIdResponse {
                producer_id: 300,
                producer_epoch: 0,
            })),
        };
        let bytes = encode_response(&response);
        assert_eq!(hex(&bytes), "82ae636f7272656c6174696f6e5f696405a6726573756c7481a24f6b81ae496e697450726f6475636572496482ab70726f64756365725f6964cd012cae70726f64756365725f65706f636800");
        assert_eq!(decode_response(&bytes).unwrap(), response);
        let refusal = ResponseFrame {
            correlation_id: 6,
            result: Err(ApiError::OutOfOrderSequence {
                producer_id: 300,
                expected: 5,
                received: 7,
            }),
        };
        let bytes = encode_response(&refusal);
        assert_eq!(hex(&bytes), "82ae636f7272656c6174696f6e5f696406a6726573756c7481a345727281b24f75744f664f7264657253657175656e636583ab70726f64756365725f6964cd012ca8657870656374656405a8726563656976656407");
        assert_eq!(decode_response(&bytes).unwrap(), refusal);
    }

    #[test]
    fn golden_error_response() {
        let frame = ResponseFrame {
            correlation_id: 9,
            result: Err(ApiError::NotLeader {
                leader_hint: Some(crate::NodeId(2)),
                epoch: Epoch(4),
            }),
        };
        let bytes = encode_response(&frame);
        assert_eq!(
            hex(&bytes),
            concat!(
                "82ae636f7272656c6174696f6e5f696409a6726573756c7481a345727281a94e6f",
                "744c656164657282ab6c65616465725f68696e7402a565706f636804"
            )
        );
        assert_eq!(decode_response(&bytes).unwrap(), frame);
    }

    /// The refusals of a forged batch (issue 15), pinned like the others.
    #[test]
    fn golden_forged_batch_refusals() {
        let cases = [
            (
                ApiError::InvalidRecords {
                    reason: "r".into(),
                },
                "82ae636f7272656c6174696f6e5f696403a6726573756c7481a345727281ae496e76616c69645265636f72647381a6726561736f6ea172",
            ),
            (
                ApiError::UnsupportedCompression { codec: 1 },
                "82ae636f7272656c6174696f6e5f696403a6726573756c7481a345727281b6556e737570706f72746564436f6d7072657373696f6e81a5636f64656301",
            ),
            (ApiError::UnsupportedTransactions, "82ae636f7272656c6174696f6e5f696403a6726573756c7481a3457272b7556e737570706f727465645472616e73616374696f6e73"),
            (
                ApiError::ProducerIdNotAllocated { producer_id: 300 },
                "82ae636f7272656c6174696f6e5f696403a6726573756c7481a345727281b650726f647563657249644e6f74416c6c6f636174656481ab70726f64756365725f6964cd012c",
            ),
        ];
        for (error, golden) in cases {
            let frame = ResponseFrame {
                correlation_id: 3,
                result: Err(error),
            };
            let bytes = encode_response(&frame);
            assert_eq!(hex(&bytes), golden, "{frame:?}");
            assert_eq!(decode_response(&bytes).unwrap(), frame);
        }
    }

    #[test]
    fn response_round_trip_with_fetch_payload() {
        let frame = ResponseFrame {
            correlation_id: u64::MAX,
            result: Ok(Response::Fetch(FetchResponse {
                partitions: vec![FetchPartitionResponse {
                    topic: "t".into(),
                    partition: 0,
                    result: Ok(FetchedRecords {
                        log_start: Offset(0),
                        high_watermark: Offset(10),
                        batches: Bytes::from(vec![1u8; 300]),
                    }),
                }],
            })),
        };
        assert_eq!(decode_response(&encode_response(&frame)).unwrap(), frame);
        // Counted and written at once, the bytes are rmp-serde's own.
        let plain = rmp_serde::to_vec_named(&frame).unwrap();
        assert_eq!(encoded_size(&frame).unwrap(), plain.len());
        assert_eq!(encode_response(&frame), plain);
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            decode_request(b"\xc1\xc1\xc1"),
            Err(RequestDecodeError::Malformed { .. })
        ));
        assert!(matches!(
            decode_request(b""),
            Err(RequestDecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn unknown_request_type_keeps_its_correlation_id() {
        #[derive(Serialize)]
        enum Future {
            Teleport { to: String },
        }
        #[derive(Serialize)]
        struct Envelope {
            version: u16,
            correlation_id: u64,
            request: Future,
        }
        let bytes = rmp_serde::to_vec_named(&Envelope {
            version: 1,
            correlation_id: 42,
            request: Future::Teleport { to: "mars".into() },
        })
        .unwrap();
        match decode_request(&bytes) {
            Err(RequestDecodeError::Refused {
                correlation_id: 42,
                error: ApiError::UnknownRequestType { .. },
                ..
            }) => {}
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn unsupported_version_is_refused_with_the_supported_range() {
        let mut frame = RequestFrame {
            version: 9,
            correlation_id: 3,
            request: Request::ListTopics(ListTopicsRequest {
                include_internal: false,
            }),
        };
        let bytes = encode_request(&frame);
        assert_eq!(
            decode_request(&bytes),
            Err(RequestDecodeError::Refused {
                version: 9,
                correlation_id: 3,
                error: ApiError::UnsupportedVersion {
                    requested: 9,
                    min: 1,
                    max: 1
                }
            })
        );
        frame.version = 1;
        assert!(decode_request(&encode_request(&frame)).is_ok());
    }

    #[test]
    fn golden_limit_refusals() {
        let frame = ResponseFrame {
            correlation_id: 2,
            result: Err(ApiError::LimitExceeded {
                limit: REQUEST_ENTRIES_LIMIT.into(),
                requested: 70_000,
                max: 65_536,
            }),
        };
        let bytes = encode_response(&frame);
        assert_eq!(
            hex(&bytes),
            concat!(
                "82ae636f7272656c6174696f6e5f696402a6726573756c7481a345727281ad4c696d",
                "6974457863656564656483a56c696d6974ba6c696d6974732e726571756573745f65",
                "6e74726965735f6d6178a9726571756573746564ce00011170a36d6178ce00010000"
            )
        );
        assert_eq!(decode_response(&bytes).unwrap(), frame);
        let frame = ResponseFrame {
            correlation_id: 0,
            result: Err(ApiError::TooManyConnectionsFromAddress { max: 256 }),
        };
        let bytes = encode_response(&frame);
        assert_eq!(
            hex(&bytes),
            concat!(
                "82ae636f7272656c6174696f6e5f696400a6726573756c7481a345727281bd546f6f",
                "4d616e79436f6e6e656374696f6e7346726f6d4164647265737381a36d6178cd0100"
            )
        );
        assert_eq!(decode_response(&bytes).unwrap(), frame);
    }

    fn metadata_of(topics: usize) -> Vec<u8> {
        encode_request(&RequestFrame {
            version: 1,
            correlation_id: 11,
            request: Request::Metadata(MetadataRequest {
                topics: Some(vec![String::new(); topics]),
            }),
        })
        .to_vec()
    }

    #[test]
    fn entries_are_counted_over_the_whole_frame() {
        // The envelope (3 fields), the request map (1) and the metadata map (1), then the
        // names.
        assert_eq!(count_entries(&metadata_of(0), u64::MAX), 5);
        assert_eq!(count_entries(&metadata_of(70_000), u64::MAX), 70_005);
        // The count stops early once it is past the limit.
        assert!(count_entries(&metadata_of(70_000), 10) <= 70_005);
        assert!(count_entries(&metadata_of(70_000), 10) > 10);
        // A batch is one binary value: its bytes are skipped, not counted.
        let produce = encode_request(&RequestFrame {
            version: 1,
            correlation_id: 1,
            request: Request::Produce(ProduceRequest {
                topic: "t".into(),
                partition: 0,
                acks: Acks::All,
                timeout_ms: 1,
                batch: Bytes::from(vec![0x91u8; 100_000]),
            }),
        });
        assert_eq!(count_entries(&produce, u64::MAX), 9);
        // Truncated or garbage input ends the count; it never panics.
        let whole = metadata_of(3);
        for end in 0..whole.len() {
            count_entries(&whole[..end], u64::MAX);
        }
        count_entries(&[0xdf, 0xff, 0xff, 0xff, 0xff], u64::MAX);
        count_entries(&[0xc6, 0xff, 0xff, 0xff, 0xff], u64::MAX);
        // Deep nesting is a counter, not a stack.
        assert_eq!(count_entries(&vec![0x91u8; 1_000_000], u64::MAX), 1_000_000);
    }

    #[test]
    fn a_request_over_the_entry_limit_is_refused_before_it_is_decoded() {
        assert!(decode_request_within(&metadata_of(99), 104).is_ok());
        assert_eq!(
            decode_request_within(&metadata_of(100), 104),
            Err(RequestDecodeError::Refused {
                version: 1,
                correlation_id: 11,
                error: ApiError::LimitExceeded {
                    limit: "limits.request_entries_max".into(),
                    requested: 105,
                    max: 104,
                },
            })
        );
    }

    #[test]
    fn codec_refuses_oversize_frames_and_waits_for_partial_ones() {
        let mut codec = FrameCodec::new(8);
        let mut buf = BytesMut::new();
        codec.encode(Bytes::from_static(b"abc"), &mut buf).unwrap();
        let mut partial = buf.split_to(5);
        assert!(codec.decode(&mut partial).unwrap().is_none());
        partial.unsplit(buf);
        assert_eq!(&codec.decode(&mut partial).unwrap().unwrap()[..], b"abc");
        let mut big = BytesMut::from(&[0u8, 0, 0, 9][..]);
        assert!(matches!(
            codec.decode(&mut big),
            Err(FrameError::TooLarge { size: 9, max: 8 })
        ));
        assert!(codec
            .encode(Bytes::from_static(b"123456789"), &mut BytesMut::new())
            .is_err());
    }
}
