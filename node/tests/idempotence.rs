//! Idempotent producing against a real node process: producer ids from the cluster, retried
//! batches written once (also after SIGKILL and restart), gaps and fenced epochs refused, and
//! the client's producer riding out a lost acknowledgement without a duplicate.

mod support;

use cairn_client::{ClientConfig, Producer, ProducerConfig, Record};
use cairn_protocol::batch::RecordBatch;
use cairn_protocol::frame::decode_response;
use cairn_protocol::messages::{InitProducerIdRequest, ProduceResponse};
use cairn_protocol::{ApiError, Offset, Request, Response};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use support::{batch_of, TestNode, Wire};

fn init_producer_id(wire: &mut Wire) -> i64 {
    match wire.call(Request::InitProducerId(InitProducerIdRequest {})) {
        Ok(Response::InitProducerId(response)) => {
            assert_eq!(response.producer_epoch, 0);
            assert!(response.producer_id >= 0);
            response.producer_id
        }
        other => panic!("unexpected reply {other:?}"),
    }
}

fn idempotent(values: &[&[u8]], producer_id: i64, epoch: i16, sequence: i32) -> RecordBatch {
    batch_of(values).with_producer(producer_id, epoch, sequence)
}

fn produce(wire: &mut Wire, batch: &RecordBatch) -> Result<ProduceResponse, ApiError> {
    wire.produce_batch("t", 0, batch.bytes().clone())
}

fn values(wire: &mut Wire) -> Vec<(Offset, String)> {
    wire.read_all("t", 0, Offset(0))
        .into_iter()
        .map(|record| {
            (
                record.offset,
                String::from_utf8(record.value.as_deref().unwrap_or_default().to_vec()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn producer_ids_are_unique_across_calls_and_restarts() {
    let mut node = TestNode::start();
    let mut wire = node.wire();
    let first = init_producer_id(&mut wire);
    let second = init_producer_id(&mut wire);
    assert!(second > first);
    node.kill();
    node.restart();
    let mut wire = node.wire();
    let third = init_producer_id(&mut wire);
    assert!(
        third > second,
        "{third} after {second}: ids are never reused"
    );
}

#[test]
fn a_resent_batch_is_written_once_and_answered_with_its_first_offset() {
    let node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("t", 1).unwrap();
    let producer_id = init_producer_id(&mut wire);
    wire.produce("t", 0, &[b"plain"]).unwrap();
    let first = idempotent(&[b"a", b"b"], producer_id, 0, 0);
    let written = produce(&mut wire, &first).unwrap();
    assert!(!written.duplicate);
    // The acknowledgement was lost: the producer sends the very same bytes again.
    let again = produce(&mut wire, &first).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.base_offset, written.base_offset);
    // A gap is refused with what the leader expected, and nothing is written.
    let gap = idempotent(&[b"d"], producer_id, 0, 3);
    assert_eq!(
        produce(&mut wire, &gap),
        Err(ApiError::OutOfOrderSequence {
            producer_id,
            expected: 2,
            received: 3,
        })
    );
    let next = idempotent(&[b"c"], producer_id, 0, 2);
    let continued = produce(&mut wire, &next).unwrap();
    assert_eq!(continued.base_offset, written.base_offset.plus(2));
    assert_eq!(
        values(&mut wire)
            .into_iter()
            .map(|(_, value)| value)
            .collect::<Vec<_>>(),
        vec!["plain", "a", "b", "c"]
    );
    // An idempotent batch with a negative sequence is malformed, not a plain batch.
    let bad = idempotent(&[b"x"], producer_id, 0, -1);
    assert!(matches!(
        produce(&mut wire, &bad),
        Err(ApiError::InvalidRequest { .. })
    ));
}

#[test]
fn pipelined_retries_after_sigkill_and_restart_are_not_written_twice() {
    let mut node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("t", 1).unwrap();
    let producer_id = init_producer_id(&mut wire);
    let batches: Vec<RecordBatch> = (0..20)
        .map(|index| {
            let value = format!("v{index}");
            idempotent(&[value.as_bytes()], producer_id, 0, index)
        })
        .collect();
    let mut acknowledged = Vec::new();
    for batch in &batches {
        acknowledged.push(produce(&mut wire, batch).unwrap().base_offset);
    }
    // The node dies; the producer did not hear about the last five and sends them again.
    node.kill();
    node.restart();
    let mut wire = node.wire();
    for (index, batch) in batches.iter().enumerate().skip(15) {
        let reply = produce(&mut wire, batch).unwrap();
        assert!(
            reply.duplicate,
            "batch {index} was recognised after restart"
        );
        assert_eq!(reply.base_offset, acknowledged[index]);
    }
    let next = idempotent(&[b"v20"], producer_id, 0, 20);
    assert!(!produce(&mut wire, &next).unwrap().duplicate);
    let read = values(&mut wire);
    let expected: Vec<String> = (0..21).map(|index| format!("v{index}")).collect();
    assert_eq!(
        read.iter()
            .map(|(_, value)| value.clone())
            .collect::<Vec<_>>(),
        expected,
        "every value exactly once, in order"
    );
    for (index, offset) in acknowledged.iter().enumerate() {
        assert_eq!(read[index].0, *offset);
    }
}

#[test]
fn an_older_producer_epoch_is_fenced_and_a_newer_one_restarts_at_zero() {
    let node = TestNode::start();
    let mut wire = node.wire();
    wire.create_topic("t", 1).unwrap();
    let producer_id = init_producer_id(&mut wire);
    produce(&mut wire, &idempotent(&[b"a"], producer_id, 1, 0)).unwrap();
    assert_eq!(
        produce(&mut wire, &idempotent(&[b"b"], producer_id, 0, 1)),
        Err(ApiError::InvalidProducerEpoch {
            producer_id,
            current: 1,
            received: 0,
        })
    );
    assert_eq!(
        produce(&mut wire, &idempotent(&[b"b"], producer_id, 2, 1)),
        Err(ApiError::OutOfOrderSequence {
            producer_id,
            expected: 0,
            received: 1,
        })
    );
    produce(&mut wire, &idempotent(&[b"b"], producer_id, 2, 0)).unwrap();
    assert_eq!(
        values(&mut wire)
            .into_iter()
            .map(|(_, value)| value)
            .collect::<Vec<_>>(),
        vec!["a", "b"]
    );
}

/// A TCP proxy in front of a node that can lose produce acknowledgements: it forwards bytes
/// both ways, but when asked, it swallows the next successful `Produce` reply and closes the
/// connection, as a network failure right after the node wrote the batch would.
struct LossyProxy {
    address: SocketAddr,
    target: Arc<OnceLock<SocketAddr>>,
    replies_to_lose: Arc<AtomicUsize>,
}

impl LossyProxy {
    fn bind() -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let address = listener.local_addr().unwrap();
        let target: Arc<OnceLock<SocketAddr>> = Arc::new(OnceLock::new());
        let replies_to_lose = Arc::new(AtomicUsize::new(0));
        let (accept_target, accept_losses) = (Arc::clone(&target), Arc::clone(&replies_to_lose));
        // Ends with the test process; each connection's threads end when either side closes.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Some(&target) = accept_target.get() else {
                    continue;
                };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let losses = Arc::clone(&accept_losses);
                let (client_in, server_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || copy_requests(client_in, server_out));
                std::thread::spawn(move || copy_replies(server, client, losses));
            }
        });
        LossyProxy {
            address,
            target,
            replies_to_lose,
        }
    }

    fn forward_to(&self, node: SocketAddr) {
        self.target.set(node).expect("set once");
    }

    fn lose_produce_replies(&self, count: usize) {
        self.replies_to_lose.store(count, Ordering::SeqCst);
    }
}

fn copy_requests(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    while let Ok(read) = from.read(&mut buffer) {
        if read == 0 || to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn copy_replies(mut from: TcpStream, mut to: TcpStream, losses: Arc<AtomicUsize>) {
    loop {
        let mut length = [0u8; 4];
        if from.read_exact(&mut length).is_err() {
            break;
        }
        let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
        if from.read_exact(&mut payload).is_err() {
            break;
        }
        let produced = matches!(
            decode_response(&payload).map(|frame| frame.result),
            Ok(Ok(Response::Produce(_)))
        );
        let lose = produced
            && losses
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok();
        if lose || to.write_all(&length).is_err() || to.write_all(&payload).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_producer_whose_acknowledgement_is_lost_writes_the_batch_once() {
    // With idempotence (the default), then without it: the control shows the fault is real.
    for enable_idempotence in [true, false] {
        let proxy = LossyProxy::bind();
        let advertised = proxy.address.to_string();
        let node = TestNode::start_with(&["--advertised-address", &advertised]);
        proxy.forward_to(node.address());
        let mut wire = node.wire();
        wire.create_topic("t", 1).unwrap();
        let client = ClientConfig::new(&advertised)
            .unwrap()
            .retry_backoff(Duration::from_millis(20))
            .retry_backoff_max(Duration::from_millis(100));
        let config = ProducerConfig::default().enable_idempotence(enable_idempotence);
        let offsets = tokio::time::timeout(Duration::from_secs(60), async {
            let producer = Producer::new(client, config).await.unwrap();
            proxy.lose_produce_replies(1);
            let first = producer.send_to("t", 0, Record::new("a")).await.unwrap();
            let second = producer.send_to("t", 0, Record::new("b")).await.unwrap();
            producer.flush().await.unwrap();
            let first = first.await.unwrap().offset.unwrap();
            let second = second.await.unwrap().offset.unwrap();
            producer.close().await.unwrap();
            (first, second)
        })
        .await
        .expect("the producer finishes in time");
        assert_eq!(
            proxy.replies_to_lose.load(Ordering::SeqCst),
            0,
            "a reply was lost"
        );
        let stored = values(&mut wire);
        if enable_idempotence {
            let expected: Vec<(Offset, String)> =
                vec![(offsets.0, "a".into()), (offsets.1, "b".into())];
            assert_eq!(
                stored, expected,
                "written once, at the acknowledged offsets"
            );
        } else {
            let stored: Vec<String> = stored.into_iter().map(|(_, value)| value).collect();
            assert_eq!(
                stored,
                vec!["a", "b", "a", "b"],
                "the control writes it twice"
            );
        }
    }
}
