//! Idempotent producing across a leader change, with three real `cairn node` processes: the
//! producer state travels with the replicated log, so the new leader recognises a retry of a
//! batch its predecessor wrote and answers it with the original offset.

mod support;

use cairn_protocol::batch::RecordBatch;
use cairn_protocol::messages::{
    CreateTopicRequest, InitProducerIdRequest, MetadataRequest, ProduceResponse, TopicConfig,
};
use cairn_protocol::{ApiError, NodeId, Offset, Request, Response};
use std::time::{Duration, Instant};
use support::cluster::TestCluster;
use support::{batch_of, produce_request, Wire};

/// How long the cluster may take to answer one request through elections and restarts.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `request` to the running nodes, following `NotLeader` hints and retrying retriable
/// refusals, until one answers or `CALL_TIMEOUT` passes.
fn call(cluster: &mut TestCluster, request: &Request) -> Response {
    let deadline = Instant::now() + CALL_TIMEOUT;
    let mut target: Option<u32> = None;
    let mut next = 0usize;
    loop {
        let node_id = target.take().unwrap_or_else(|| {
            next += 1;
            (next % cluster.nodes.len()) as u32 + 1
        });
        let node = cluster.node_mut(node_id);
        if node.is_running() {
            let mut wire = node.wire();
            match wire.call(request.clone()) {
                Ok(response) => return response,
                Err(ApiError::NotLeader {
                    leader_hint: Some(NodeId(leader)),
                    ..
                }) => target = Some(leader),
                Err(error) if error.is_retriable() => {}
                Err(error) => panic!("{} refused: {error:?}", request.kind()),
            }
        }
        assert!(
            Instant::now() < deadline,
            "no node answered {}",
            request.kind()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node leading `topic`/0 according to the running nodes, once one other than `not` is
/// reported.
fn leader(cluster: &mut TestCluster, topic: &str, not: Option<u32>) -> u32 {
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        let request = Request::Metadata(MetadataRequest {
            topics: Some(vec![topic.to_string()]),
        });
        if let Response::Metadata(metadata) = call(cluster, &request) {
            let leader = metadata.topics[0]
                .result
                .as_ref()
                .ok()
                .and_then(|topic| topic.partitions[0].leader);
            if let Some(NodeId(leader)) = leader {
                if Some(leader) != not && cluster.node_mut(leader).is_running() {
                    return leader;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader for {topic}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Produces `batch` to the leader of `topic`/0, riding out an election in progress.
fn produce(cluster: &mut TestCluster, topic: &str, batch: &RecordBatch) -> ProduceResponse {
    let request = produce_request(topic, 0, batch.bytes().clone());
    match call(cluster, &request) {
        Response::Produce(response) => response,
        other => panic!("unexpected reply {other:?}"),
    }
}

fn idempotent(value: &str, producer_id: i64, sequence: i32) -> RecordBatch {
    batch_of(&[value.as_bytes()]).with_producer(producer_id, 0, sequence)
}

#[test]
fn a_new_leader_recognises_retries_of_batches_its_predecessor_wrote() {
    let mut cluster = TestCluster::start(3, &[]);
    let created = call(
        &mut cluster,
        &Request::CreateTopic(CreateTopicRequest {
            name: "idem".to_string(),
            partitions: 1,
            replication_factor: Some(3),
            config: TopicConfig::default(),
        }),
    );
    assert!(matches!(created, Response::CreateTopic(_)));
    let producer_id = match call(
        &mut cluster,
        &Request::InitProducerId(InitProducerIdRequest {}),
    ) {
        Response::InitProducerId(response) => response.producer_id,
        other => panic!("unexpected reply {other:?}"),
    };
    let batches: Vec<RecordBatch> = (0..10)
        .map(|index| idempotent(&format!("v{index}"), producer_id, index))
        .collect();
    let acknowledged: Vec<Offset> = batches
        .iter()
        .map(|batch| {
            let response = produce(&mut cluster, "idem", batch);
            assert!(!response.duplicate);
            response.base_offset
        })
        .collect();
    // The leader dies; its last five acknowledgements never reached the producer, which
    // sends those batches again to whoever leads next.
    let old_leader = leader(&mut cluster, "idem", None);
    cluster.node_mut(old_leader).kill();
    let new_leader = leader(&mut cluster, "idem", Some(old_leader));
    assert_ne!(new_leader, old_leader);
    for (index, batch) in batches.iter().enumerate().skip(5) {
        let response = produce(&mut cluster, "idem", batch);
        assert!(
            response.duplicate,
            "batch {index} was written again by the new leader"
        );
        assert_eq!(response.base_offset, acknowledged[index]);
    }
    let next = produce(&mut cluster, "idem", &idempotent("v10", producer_id, 10));
    assert!(!next.duplicate);
    // The old leader comes back as a follower; every replica ends with each value once.
    cluster.node_mut(old_leader).restart();
    let expected: Vec<String> = (0..11).map(|index| format!("v{index}")).collect();
    // Leadership may move again while the old leader rejoins (elections on a loaded machine):
    // read from whoever leads now, until the log holds exactly the expected values.
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        let leader_now = leader(&mut cluster, "idem", None);
        let mut wire: Wire = cluster.node(leader_now).wire();
        if let Ok(records) = wire.try_read_all("idem", 0, Offset(0)) {
            let read: Vec<String> = records
                .into_iter()
                .map(|record| {
                    String::from_utf8(record.value.as_deref().unwrap_or_default().to_vec()).unwrap()
                })
                .collect();
            if read == expected {
                break;
            }
            assert!(read.len() <= expected.len(), "read {read:?}");
        }
        assert!(
            Instant::now() < deadline,
            "the log never held each value once"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
