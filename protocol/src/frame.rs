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
    Bytes::from(rmp_serde::to_vec_named(frame).expect("request frames always serialize"))
}

pub fn encode_response(frame: &ResponseFrame) -> Bytes {
    Bytes::from(rmp_serde::to_vec_named(frame).expect("response frames always serialize"))
}

pub fn decode_request(bytes: &[u8]) -> Result<RequestFrame, RequestDecodeError> {
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
