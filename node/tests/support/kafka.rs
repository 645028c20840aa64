//! A Kafka wire client for tests: requests encoded with the kafka-protocol crate (as a
//! Kafka client encodes them) over a blocking `TcpStream` with a read timeout, so a test can
//! send exact bytes, pipeline requests and read replies one by one.

use super::READ_TIMEOUT;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use cairn_protocol::batch::{Record, RecordBatchBuilder};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

pub struct KafkaWire {
    stream: TcpStream,
    next_correlation_id: i32,
}

impl KafkaWire {
    pub fn connect(address: SocketAddr) -> KafkaWire {
        let stream = TcpStream::connect(address).expect("connect to the Kafka listener");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set a read timeout");
        KafkaWire {
            stream,
            next_correlation_id: 1,
        }
    }

    /// Writes one frame: a 4-byte length, then `payload`.
    pub fn send_raw(&mut self, payload: &[u8]) {
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).expect("write a frame");
    }

    /// Sends a request; returns its correlation id.
    pub fn send<T: Encodable>(&mut self, api_key: ApiKey, version: i16, body: &T) -> i32 {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let mut bytes = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("cairn-test")))
            .encode(&mut bytes, api_key.request_header_version(version))
            .expect("the request header encodes");
        body.encode(&mut bytes, version)
            .expect("the request encodes");
        self.send_raw(&bytes);
        correlation_id
    }

    /// The next frame, or `None` once the node closed the connection. A read timeout fails
    /// the test.
    pub fn receive_raw(&mut self) -> Option<Bytes> {
        let mut length = [0u8; 4];
        match self.stream.read_exact(&mut length) {
            Ok(()) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                return None
            }
            Err(error) => panic!("reading a reply failed: {error}"),
        }
        let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
        self.stream
            .read_exact(&mut payload)
            .expect("a whole reply frame");
        Some(Bytes::from(payload))
    }

    /// The next reply, decoded as `api_key` at `version`, with its correlation id.
    pub fn receive<T: Decodable>(&mut self, api_key: ApiKey, version: i16) -> (i32, T) {
        let mut frame = self
            .receive_raw()
            .expect("a reply, not a closed connection");
        let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
            .expect("the response header decodes");
        let body = T::decode(&mut frame, version).expect("the response decodes");
        assert!(!frame.has_remaining(), "the response has trailing bytes");
        (header.correlation_id, body)
    }

    /// Sends a request and reads its reply.
    pub fn call<Q: Encodable, R: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        body: &Q,
    ) -> R {
        let sent = self.send(api_key, version, body);
        let (received, response) = self.receive(api_key, version);
        assert_eq!(received, sent, "replies come back in request order");
        response
    }

    /// True once the node has closed the connection (reads end without a reply).
    pub fn is_closed_by_node(&mut self) -> bool {
        self.receive_raw().is_none()
    }
}

/// A record batch as a Kafka producer sends it: Cairn's builder writes the same records and
/// checksum; Kafka's header has a 4-byte partition leader epoch where Cairn's has 8 bytes.
pub fn kafka_batch(records: &[(&str, &str)]) -> Bytes {
    let mut builder = RecordBatchBuilder::new(1_700_000_000_000);
    for (key, value) in records {
        builder.push(&Record::new(value.to_string()).with_key(key.to_string()));
    }
    kafka_bytes(builder.build())
}

/// `batch` as a Kafka producer sends it (see [`kafka_batch`]).
pub fn kafka_bytes(batch: cairn_protocol::batch::RecordBatch) -> Bytes {
    let cairn = batch.into_bytes();
    let batch_length = u32::from_be_bytes(cairn[8..12].try_into().unwrap());
    let mut kafka = BytesMut::with_capacity(cairn.len() - 4);
    kafka.put_slice(&cairn[..8]);
    kafka.put_u32(batch_length - 4);
    kafka.put_i32(-1);
    kafka.put_slice(&cairn[20..]);
    kafka.freeze()
}
