//! Broker-side schema validation and the registry's ids under compaction (issue 18, part 2),
//! on real node processes.
//!
//! - `a_topic_with_schema_validation_takes_only_values_framed_with_its_subjects_ids`: a topic
//!   created with `cairn topic create --config confluent.value.schema.validation=true` on 3
//!   nodes; `node/tests/kafka_python/schema_validation.py` produces an AvroSerializer record
//!   (accepted, read back), a plain-bytes value, an unknown id and another subject's id
//!   (refused with INVALID_RECORD, nothing written), a tombstone (accepted), then turns the
//!   setting off with Kafka's AlterConfigs and the same values get in. `cairn produce` of a
//!   plain value is refused with a message naming the record, and `cairn topic alter` turns
//!   the setting back on.
//! - `kafka_produce_names_each_refused_record_by_its_index`: Kafka's wire answer on one node,
//!   version 9 (INVALID_RECORD with `error_message` and `record_errors`) and version 7 (the
//!   code alone), with the topic created by Kafka's CreateTopics with Redpanda's config name.
//! - `a_topic_with_key_validation_checks_keys_against_its_key_subject`: on one node, a topic
//!   created with `confluent.key.schema.validation=true` (`cairn topic create`; `describe
//!   --configs` shows it) takes a key framed with an id of `<topic>-key` and a null key, and
//!   refuses a plain key and a key framed with a `<topic>-value` id, over Kafka's Produce,
//!   writing nothing of a refused batch.
//! - `record_name_strategies_check_ids_under_record_names`: runs
//!   `node/tests/kafka_python/schema_validation_record_names.py` on 3 nodes: a topic created
//!   over Kafka's CreateTopics validating values with Confluent's RecordNameStrategy and keys
//!   with Redpanda's TopicRecordNameStrategy takes what confluent-kafka's serializers write
//!   with those strategies, and refuses ids registered under the other strategies' subjects.
//! - `ids_are_never_reused_after_compaction_and_restarts`: `_schemas` is compacted; schemas
//!   holding the highest ids are hard-deleted, compaction (tuned with `cairn topic alter
//!   _schemas`) cleans their records and tombstones away, every node restarts, and a new
//!   schema still gets an id above every id given; the deleted subject stays gone.
//!
//! The Python prerequisites are those of `schema_registry.rs` (confluent-kafka 2.16.1 with
//! its schema-registry and Avro extras).

mod support;

use cairn_protocol::Offset;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use support::cluster::TestCluster;
use support::kafka::{kafka_batch, KafkaWire};
use support::registry::{http, http_available, json, AVAILABLE_TIMEOUT, REGISTRY_PACKAGES_HINT};
use support::TestNode;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long compaction of `_schemas` may take once tuned to run at once.
const COMPACTION_TIMEOUT: Duration = Duration::from_secs(60);

const KEPT: &str = r#"{"type":"record","name":"Kept","fields":[]}"#;
const GONE_V1: &str = r#"{"type":"record","name":"Gone","fields":[]}"#;
const GONE_V2: &str =
    r#"{"type":"record","name":"Gone","fields":[{"name":"a","type":"int","default":0}]}"#;
const FRESH: &str = r#"{"type":"record","name":"Fresh","fields":[]}"#;

/// Registers an Avro schema under `subject`; its id.
fn register(address: SocketAddr, subject: &str, schema: &str) -> u64 {
    let body = serde_json::json!({ "schema": schema }).to_string();
    let (status, answer) = http_available(
        address,
        "POST",
        &format!("/subjects/{subject}/versions"),
        &body,
    );
    assert_eq!(status, 200, "{answer}");
    json(&answer)["id"].as_u64().expect("an id")
}

/// `cairn ARGS --bootstrap BOOTSTRAP` with `input` on stdin.
fn cairn(bootstrap: &str, args: &[&str], input: &str) -> Output {
    let mut child = std::process::Command::new(support::cairn_binary())
        .args(args)
        .args(["--bootstrap", bootstrap])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cairn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("cairn finishes")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `cairn topic create TOPIC` with one partition, `replication_factor` and `config`, which
/// must succeed; what `cairn topic describe TOPIC --configs` then prints.
fn create_one_partition_topic(
    bootstrap: &str,
    topic: &str,
    replication_factor: &str,
    config: &str,
) -> String {
    let created = cairn(
        bootstrap,
        &[
            "topic",
            "create",
            topic,
            "--partitions",
            "1",
            "--replication-factor",
            replication_factor,
            "--config",
            config,
        ],
        "",
    );
    assert!(created.status.success(), "{}", text(&created));
    let described = cairn(bootstrap, &["topic", "describe", topic, "--configs"], "");
    String::from_utf8_lossy(&described.stdout).into_owned()
}

fn high_watermark(cluster: &TestCluster, topic: &str) -> Offset {
    cluster
        .node(1)
        .wire()
        .describe_topic(topic)
        .expect("describe")[0]
        .high_watermark
}

#[test]
fn a_topic_with_schema_validation_takes_only_values_framed_with_its_subjects_ids() {
    support::require_python_module(
        "confluent_kafka.schema_registry.avro",
        REGISTRY_PACKAGES_HINT,
    );
    let cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.bootstrap();
    let topic = "validated";
    let shown = create_one_partition_topic(
        &bootstrap,
        topic,
        "3",
        "confluent.value.schema.validation=true",
    );
    assert!(
        shown.contains("confluent.value.schema.validation true                 topic"),
        "{shown}"
    );

    let registries: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| format!("http://{}", node.http_address()))
        .collect();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kafka_python/schema_validation.py");
    let mut command = support::foreign_client(support::python());
    command
        .arg("-u")
        .arg(script)
        .args([&registries.join(","), &cluster.kafka_bootstrap(), topic]);
    support::run_client_scenario("schema_validation.py", command, SCRIPT_TIMEOUT, || {
        cluster.logs()
    });

    // The script turned validation off and wrote 5 records; on again with the native CLI,
    // the native producer is refused with a message naming the record, and nothing is written.
    let altered = cairn(
        &bootstrap,
        &[
            "topic",
            "alter",
            topic,
            "--config",
            "redpanda.value.schema.id.validation=true",
        ],
        "",
    );
    assert!(altered.status.success(), "{}", text(&altered));
    // The partition's leader applies the change when its metadata does, a moment later:
    // a produce before that is written, and the next one is tried.
    let deadline = Instant::now() + AVAILABLE_TIMEOUT;
    let (before, produced) = loop {
        let before = high_watermark(&cluster, topic);
        let produced = cairn(&bootstrap, &["produce", topic], "plain text\n");
        if !produced.status.success() || Instant::now() >= deadline {
            break (before, produced);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!produced.status.success(), "{}", text(&produced));
    let stderr = String::from_utf8_lossy(&produced.stderr);
    assert!(
        stderr.contains(
            "schema validation refused 1 record of the batch for subject 'validated-value': \
             record 0: the value starts with byte 112, not the magic byte 0 of a schema id"
        ),
        "{}",
        text(&produced)
    );
    assert_eq!(high_watermark(&cluster, topic), before);
}

#[test]
fn record_name_strategies_check_ids_under_record_names() {
    support::require_python_module(
        "confluent_kafka.schema_registry.avro",
        REGISTRY_PACKAGES_HINT,
    );
    let cluster = TestCluster::start(3, &[]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kafka_python/schema_validation_record_names.py");
    let mut command = support::foreign_client(support::python());
    command.arg("-u").arg(script).args([
        &format!("http://{}", cluster.node(2).http_address()),
        &cluster.kafka_bootstrap(),
        "named",
    ]);
    support::run_client_scenario(
        "schema_validation_record_names.py",
        command,
        SCRIPT_TIMEOUT,
        || cluster.logs(),
    );
}

#[test]
fn kafka_produce_names_each_refused_record_by_its_index() {
    let node = TestNode::start();
    let mut wire = KafkaWire::connect(node.kafka_address());
    let topic = || TopicName(StrBytes::from_static_str("checked"));
    let created: CreateTopicsResponse = wire.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic())
                .with_num_partitions(1)
                .with_replication_factor(-1)
                .with_configs(vec![CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str(
                        "redpanda.value.schema.id.validation",
                    ))
                    .with_value(Some(StrBytes::from_static_str("true")))])]),
    );
    assert_eq!(created.topics[0].error_code, 0, "{created:?}");
    let before = node.wire().describe_topic("checked").unwrap()[0].high_watermark;
    // A plain value, a value framed with id 7 (no schema is registered), and a tombstone-free
    // batch of both: refused whole.
    let records = kafka_batch(&[("a", "plain"), ("b", "\0\0\0\0\x07payload")]);
    for version in [9, 7] {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(records.clone()))])]);
        let response: ProduceResponse = wire.call(ApiKey::Produce, version, &request);
        let answer = &response.responses[0].partition_responses[0];
        assert_eq!(answer.error_code, 87, "INVALID_RECORD: {answer:?}");
        assert_eq!(answer.base_offset, -1);
        let named: Vec<(i32, String)> = answer
            .record_errors
            .iter()
            .map(|record| {
                let message = record.batch_index_error_message.as_deref().unwrap_or("");
                (record.batch_index, message.to_string())
            })
            .collect();
        if version >= 8 {
            assert_eq!(
                named,
                vec![
                    (
                        0,
                        "the value starts with byte 112, not the magic byte 0 of a schema id"
                            .to_string()
                    ),
                    (1, "schema id 7 is not registered".to_string()),
                ]
            );
            let message = answer.error_message.as_deref().unwrap_or("");
            assert!(
                message.contains("refused 2 records of the batch for subject 'checked-value'"),
                "{message}"
            );
        } else {
            assert!(
                named.is_empty() && answer.error_message.is_none(),
                "{answer:?}"
            );
        }
    }
    assert_eq!(
        node.wire().describe_topic("checked").unwrap()[0].high_watermark,
        before,
        "nothing of a refused batch is written"
    );
}

/// Produces `records` (key, value; a `None` key is null) to partition 0 of `topic` over
/// Kafka's Produce v9; the partition's answer: error code and the refused records' messages.
fn kafka_produce(
    wire: &mut KafkaWire,
    topic: &str,
    records: &[(Option<&[u8]>, &[u8])],
) -> (i16, Vec<String>) {
    let mut builder = cairn_protocol::batch::RecordBatchBuilder::new(1_700_000_000_000);
    for (key, value) in records {
        let record = cairn_protocol::batch::Record::new(value.to_vec());
        builder.push(&match key {
            Some(key) => record.with_key(key.to_vec()),
            None => record,
        });
    }
    let batch = support::kafka::kafka_bytes(builder.build());
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch))])]);
    let response: ProduceResponse = wire.call(ApiKey::Produce, 9, &request);
    let answer = &response.responses[0].partition_responses[0];
    let messages = answer
        .record_errors
        .iter()
        .map(|record| {
            record
                .batch_index_error_message
                .as_deref()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    (answer.error_code, messages)
}

#[test]
fn a_topic_with_key_validation_checks_keys_against_its_key_subject() {
    let node = TestNode::start();
    let bootstrap = node.address().to_string();
    let topic = "keyed";
    let shown = create_one_partition_topic(
        &bootstrap,
        topic,
        "1",
        "confluent.key.schema.validation=true",
    );
    assert!(
        shown.contains("confluent.key.schema.validation true                 topic"),
        "{shown}"
    );
    let key_id = register(node.http_address(), "keyed-key", KEPT) as u32;
    let value_id = register(node.http_address(), "keyed-value", FRESH) as u32;
    assert_ne!(key_id, value_id);
    let framed = |id: u32, payload: &[u8]| {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    };
    let mut wire = KafkaWire::connect(node.kafka_address());
    // Values are not checked: only keys are asked for.
    let good_key = framed(key_id, b"k");
    let (code, refused) = kafka_produce(
        &mut wire,
        topic,
        &[(Some(&good_key), b"plain value"), (None, b"no key")],
    );
    assert_eq!((code, refused.len()), (0, 0), "{refused:?}");
    // The described high watermark is published just after the acknowledgement: wait until it
    // covers the acknowledged batch (high watermark = log end) before taking it as "before".
    let mut before = Offset(0);
    assert!(
        support::eventually(std::time::Duration::from_secs(10), || {
            let partition = &node.wire().describe_topic(topic).unwrap()[0];
            before = partition.high_watermark;
            partition.high_watermark == partition.log_end
        }),
        "the high watermark reaches the log end after an acknowledged produce"
    );
    let value_ids_key = framed(value_id, b"k");
    let (code, refused) = kafka_produce(
        &mut wire,
        topic,
        &[
            (Some(&good_key), b"v"),
            (Some(b"plain key"), b"v"),
            (Some(&value_ids_key), b"v"),
        ],
    );
    assert_eq!(code, 87, "INVALID_RECORD");
    assert_eq!(
        refused,
        vec![
            "the key starts with byte 112, not the magic byte 0 of a schema id".to_string(),
            format!(
                "key schema id {value_id} is not registered under subject 'keyed-key' (it is \
                 under 'keyed-value')"
            ),
        ]
    );
    assert_eq!(
        node.wire().describe_topic(topic).unwrap()[0].high_watermark,
        before,
        "nothing of a refused batch is written"
    );
}

#[test]
fn ids_are_never_reused_after_compaction_and_restarts() {
    let mut cluster = TestCluster::start(3, &[]);
    let bootstrap = cluster.bootstrap();
    let node = |cluster: &TestCluster, id: u32| cluster.node(id).http_address();
    let kept = register(node(&cluster, 1), "kept", KEPT);
    let first = register(node(&cluster, 2), "gone", GONE_V1);
    let second = register(node(&cluster, 3), "gone", GONE_V2);
    let highest = kept.max(first).max(second);
    assert!(first > kept && second > first, "{kept} {first} {second}");

    // `_schemas` is compacted as Confluent creates it.
    let described = cairn(
        &bootstrap,
        &["topic", "describe", "_schemas", "--configs"],
        "",
    );
    let shown = String::from_utf8_lossy(&described.stdout).into_owned();
    assert!(
        shown.contains("cleanup.policy        compact              topic"),
        "{}",
        text(&described)
    );
    // Its policy and partitions stay; how soon it is compacted may be tuned.
    let refused = cairn(
        &bootstrap,
        &[
            "topic",
            "alter",
            "_schemas",
            "--config",
            "cleanup.policy=delete",
        ],
        "",
    );
    assert!(!refused.status.success(), "{}", text(&refused));
    let tuned = cairn(
        &bootstrap,
        &[
            "topic",
            "alter",
            "_schemas",
            "--config",
            "segment.bytes=1",
            "--config",
            "min.compaction.lag.ms=0",
            "--config",
            "delete.retention.ms=0",
        ],
        "",
    );
    assert!(tuned.status.success(), "{}", text(&tuned));

    let (status, answer) = http(node(&cluster, 1), "DELETE", "/subjects/gone", "");
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = http(
        node(&cluster, 2),
        "DELETE",
        "/subjects/gone?permanent=true",
        "",
    );
    assert_eq!(status, 200, "{answer}");

    // Compaction cleans every record of `gone` away, its tombstones too (retention 0); the
    // id high water stays.
    let mut records = Vec::new();
    let compacted = support::eventually(COMPACTION_TIMEOUT, || {
        records = (1..=3)
            .find_map(|id| {
                cluster
                    .node(id)
                    .wire()
                    .try_read_all("_schemas", 0, Offset::ZERO)
                    .ok()
            })
            .unwrap_or_default();
        !records.is_empty()
            && records.iter().all(|record| {
                let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default());
                !key.contains(r#""subject":"gone""#)
            })
    });
    let keys: Vec<String> = records
        .iter()
        .map(|record| String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into())
        .collect();
    assert!(compacted, "gone's records are still in _schemas: {keys:?}");
    assert!(
        keys.iter().any(|key| key.contains("ID_HIGH_WATER")),
        "{keys:?}"
    );

    // Every node restarts and rebuilds the registry from the compacted log.
    for id in 1..=3 {
        assert!(cluster.node_mut(id).terminate().success());
    }
    cluster.launch_all();
    let next = register(node(&cluster, 3), "fresh", FRESH);
    assert!(
        next > highest,
        "id {next} after restart; ids up to {highest} were given"
    );
    // The first schema registered again is a new schema: a new id, never its old one.
    let again = register(node(&cluster, 1), "again", GONE_V1);
    assert!(again > next, "{again} {next}");
    for id in 1..=3 {
        let (status, answer) =
            http_available(node(&cluster, id), "GET", "/subjects/gone/versions", "");
        assert_eq!(
            (status, json(&answer)["error_code"].as_u64()),
            (404, Some(40401)),
            "{answer}"
        );
        let (_, subjects) = http_available(node(&cluster, id), "GET", "/subjects?deleted=true", "");
        assert!(
            !json(&subjects)
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == "gone"),
            "{subjects}"
        );
        let (_, kept_answer) = http_available(
            node(&cluster, id),
            "GET",
            &format!("/schemas/ids/{kept}"),
            "",
        );
        assert!(json(&kept_answer)["schema"].is_string(), "{kept_answer}");
    }
}
