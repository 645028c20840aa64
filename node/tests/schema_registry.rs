//! The schema registry (issue 18, part 2) on real node processes: Confluent's REST API on every
//! node's HTTP listener, over raw sockets byte for byte; confluent-kafka-python's
//! `SchemaRegistryClient` with its Avro, JSON and Protobuf serializers producing through the
//! Kafka listener; `@confluentinc/schemaregistry` (npm) with kafkajs; and `cairn schema`.
//!
//! - `the_registry_api_answers_on_every_node_and_survives_killing_the_schemas_leader`: ids are
//!   global and stable across nodes and subjects, an incompatible change is refused with 409,
//!   a compatible one gets a new version, errors are Confluent's, and after the `_schemas`
//!   leader is killed a new schema gets a new id while every old one still resolves.
//! - `a_node_without_a_replica_of_schemas_answers_from_the_leaders_log`: on 4 nodes (3
//!   replicas of `_schemas`) every node reads and writes.
//! - `no_client_may_write_schemas_and_followers_forward_registry_writes_to_the_leader`: a
//!   forged registry record produced to `_schemas` over the Cairn and the Kafka protocol, on
//!   every node, is refused as an internal-topic write and changes nothing; a registry write
//!   sent to a follower is forwarded to the leader and answered, and a request already
//!   forwarded once is never forwarded again (503, 50004).
//! - `confluent_kafka_avro_serializers_round_trip_through_the_registry`,
//!   `confluent_kafka_json_serializers_round_trip_through_the_registry`,
//!   `confluent_kafka_protobuf_serializers_round_trip_through_the_registry`: run
//!   `node/tests/kafka_python/schema_registry_{avro,json,protobuf}.py` on 3 nodes: produce
//!   through the Kafka listener with confluent-kafka's serializers, consume back with its
//!   deserializers, an incompatible change refused with 409 and a compatible one a new
//!   version (see `kafka_python.rs` for the Python prerequisites; these scripts also need
//!   confluent-kafka's schema-registry, JSON and Protobuf extras, which .ci/run installs
//!   pinned).
//! - `confluent_schemaregistry_npm_round_trip_with_kafkajs`: runs
//!   `node/tests/kafka_node/schema_registry.js` (installed by `scripts/kafka-clients.sh`).
//! - `cairn_schema_cli_registers_lists_gets_checks_and_deletes`: the `cairn schema` command as
//!   a process, with its exit codes.

mod support;

use cairn_protocol::messages::{MetadataRequest, Request, Response};
use cairn_protocol::NodeId;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::cluster::TestCluster;
use support::kafka::{kafka_batch, KafkaWire};
use support::registry::{http, http_available, json, AVAILABLE_TIMEOUT, REGISTRY_PACKAGES_HINT};

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// A registration body for an Avro schema given as JSON text.
fn schema_body(schema: &str) -> String {
    serde_json::json!({ "schema": schema }).to_string()
}

const USER_V1: &str =
    r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"}]}"#;
const USER_V1_SPACED: &str =
    r#"{ "fields": [ { "type": "string", "name": "name" } ], "name": "User", "type": "record" }"#;
const USER_ADD_REQUIRED: &str = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"},{"name":"age","type":"int"}]}"#;
const USER_ADD_DEFAULT: &str = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"},{"name":"age","type":"int","default":0}]}"#;
const ORDER: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"}]}"#;

/// The node leading `_schemas`/0 by the metadata of the running nodes, other than `not`.
fn schemas_leader(cluster: &mut TestCluster, not: Option<u32>) -> u32 {
    let deadline = Instant::now() + AVAILABLE_TIMEOUT;
    loop {
        for index in 0..cluster.nodes.len() {
            let node = &mut cluster.nodes[index];
            if !node.is_running() {
                continue;
            }
            let request = Request::Metadata(MetadataRequest {
                topics: Some(vec!["_schemas".to_string()]),
            });
            if let Ok(Response::Metadata(metadata)) = node.wire().call(request) {
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
        }
        assert!(Instant::now() < deadline, "no leader for _schemas");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_registry_api_answers_on_every_node_and_survives_killing_the_schemas_leader() {
    let mut cluster = TestCluster::start(3, &[]);
    let [one, two, three] = [1, 2, 3].map(|id| cluster.node(id).http_address());

    // Reads on a registry that has never been written.
    assert_eq!(http(one, "GET", "/subjects", ""), (200, "[]".to_string()));
    let (status, body) = http(two, "GET", "/schemas/types", "");
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!(["JSON", "PROTOBUF", "AVRO"]))
    );
    let (status, body) = http(three, "GET", "/config", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["compatibilityLevel"], "BACKWARD");

    // The first write creates `_schemas`; the same schema keeps its id on every node, in
    // any spelling, and across subjects.
    let user_id = register(one, "users-value", USER_V1);
    for (address, text, subject) in [
        (two, USER_V1_SPACED, "users-value"),
        (three, USER_V1, "users-value"),
        (three, USER_V1, "people-value"),
    ] {
        let (status, body) = http_available(
            address,
            "POST",
            &format!("/subjects/{subject}/versions"),
            &schema_body(text),
        );
        assert_eq!(
            (status, json(&body)["id"].as_u64()),
            (200, Some(user_id)),
            "{body}"
        );
    }
    let (status, body) = http(two, "GET", "/subjects/users-value/versions", "");
    assert_eq!((status, json(&body)), (200, serde_json::json!([1])));

    // BACKWARD (the default) refuses a new field without a default, and stores nothing.
    let (status, body) = http(
        two,
        "POST",
        "/subjects/users-value/versions",
        &schema_body(USER_ADD_REQUIRED),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(json(&body)["error_code"], 409);
    let (status, body) = http(
        three,
        "POST",
        "/compatibility/subjects/users-value/versions/latest?verbose=true",
        &schema_body(USER_ADD_REQUIRED),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["is_compatible"], false);
    // A default makes it compatible: version 2, a new id.
    let (status, body) = http(
        three,
        "POST",
        "/subjects/users-value/versions",
        &schema_body(USER_ADD_DEFAULT),
    );
    assert_eq!(status, 200, "{body}");
    let user_v2_id = json(&body)["id"].as_u64().unwrap();
    assert_ne!(user_v2_id, user_id);
    let (status, body) = http(one, "GET", "/subjects/users-value/versions/latest", "");
    assert_eq!(status, 200, "{body}");
    let latest = json(&body);
    assert_eq!(
        (latest["version"].as_u64(), latest["id"].as_u64()),
        (Some(2), Some(user_v2_id))
    );
    let (status, body) = http(
        two,
        "POST",
        "/subjects/users-value",
        &schema_body(USER_V1_SPACED),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["version"], 1);
    let (status, body) = http(one, "GET", &format!("/schemas/ids/{user_id}"), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(json(&body)["schema"].as_str().unwrap()), json(USER_V1));
    let (status, body) = http(one, "GET", &format!("/schemas/ids/{user_id}/subjects"), "");
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!(["people-value", "users-value"]))
    );

    // Confluent's errors.
    for (address, method, path, body, status, code) in [
        (one, "GET", "/subjects/nobody/versions", "", 404, 40401),
        (
            two,
            "GET",
            "/subjects/users-value/versions/9",
            "",
            404,
            40402,
        ),
        (three, "GET", "/schemas/ids/999", "", 404, 40403),
        (
            one,
            "GET",
            "/subjects/users-value/versions/zero",
            "",
            422,
            42202,
        ),
        (
            two,
            "POST",
            "/subjects/users-value/versions",
            r#"{"schema":"{not avro"}"#,
            422,
            42201,
        ),
        (
            three,
            "POST",
            "/subjects/users-value/versions",
            "[]",
            422,
            42201,
        ),
        (
            one,
            "POST",
            "/subjects/json-value/versions",
            r#"{"schemaType":"JSON","schema":"{\"type\":\"text\"}"}"#,
            422,
            42201,
        ),
        (
            two,
            "POST",
            "/subjects/proto-value/versions",
            r#"{"schemaType":"PROTOBUF","schema":"message A { Missing b = 1; }"}"#,
            422,
            42201,
        ),
        (
            three,
            "POST",
            "/subjects/proto-value/versions",
            r#"{"schemaType":"PROTOBUF","schema":"syntax = \"proto3\"; import \"x.proto\"; message A {}","references":[{"name":"x.proto","subject":"nobody","version":1}]}"#,
            422,
            42201,
        ),
        (
            one,
            "PUT",
            "/config/users-value",
            r#"{"compatibility":"SIDEWAYS"}"#,
            422,
            42203,
        ),
        (
            two,
            "DELETE",
            "/subjects/users-value?permanent=true",
            "",
            404,
            40405,
        ),
    ] {
        let (got, answer) = http(address, method, path, body);
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert_eq!(
            json(&answer)["error_code"],
            code,
            "{method} {path}: {answer}"
        );
    }
    let oversized = schema_body(&format!("\"{}\"", "x".repeat(1024 * 1024)));
    let (status, _) = http(one, "POST", "/subjects/big/versions", &oversized);
    assert_eq!(status, 413);

    // Config per subject, then soft and hard delete.
    let (status, body) = http(
        one,
        "PUT",
        "/config/people-value",
        r#"{"compatibility":"NONE"}"#,
    );
    assert_eq!(
        (status, json(&body)["compatibility"].as_str()),
        (200, Some("NONE")),
        "{body}"
    );
    let (status, body) = http(three, "GET", "/config/people-value", "");
    assert_eq!(
        (status, json(&body)["compatibilityLevel"].as_str()),
        (200, Some("NONE")),
        "{body}"
    );
    let (status, body) = http(two, "DELETE", "/subjects/people-value", "");
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!([1])),
        "{body}"
    );
    let (status, body) = http(three, "GET", "/subjects", "");
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!(["users-value"]))
    );
    let (status, body) = http(one, "DELETE", "/subjects/people-value?permanent=true", "");
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!([1])),
        "{body}"
    );

    // Kill the `_schemas` leader: a survivor registers a new schema with a new id, and every
    // id given before still names its schema.
    let leader = schemas_leader(&mut cluster, None);
    cluster.node_mut(leader).kill();
    let survivor = if leader == 1 { 2 } else { 1 };
    let survivor = cluster.node(survivor).http_address();
    let (status, body) = http_available(
        survivor,
        "POST",
        "/subjects/orders-value/versions",
        &schema_body(ORDER),
    );
    assert_eq!(status, 200, "{body}");
    let order_id = json(&body)["id"].as_u64().unwrap();
    assert!(
        order_id > user_v2_id,
        "ids are not reused: {order_id} after {user_v2_id}"
    );
    for node in [1, 2, 3].into_iter().filter(|node| *node != leader) {
        let address = cluster.node(node).http_address();
        for (id, schema) in [
            (user_id, USER_V1),
            (user_v2_id, USER_ADD_DEFAULT),
            (order_id, ORDER),
        ] {
            let (status, body) = http_available(address, "GET", &format!("/schemas/ids/{id}"), "");
            assert_eq!(status, 200, "node {node} id {id}: {body}");
            assert_eq!(json(json(&body)["schema"].as_str().unwrap()), json(schema));
        }
        let (status, body) = http(
            address,
            "POST",
            "/subjects/users-value/versions",
            &schema_body(USER_ADD_DEFAULT),
        );
        assert_eq!(
            (status, json(&body)["id"].as_u64()),
            (200, Some(user_v2_id)),
            "{body}"
        );
    }
    let new_leader = schemas_leader(&mut cluster, Some(leader));
    assert_ne!(new_leader, leader);
}

#[test]
fn a_node_without_a_replica_of_schemas_answers_from_the_leaders_log() {
    // `_schemas` gets 3 replicas: one of the 4 nodes holds none.
    let cluster = TestCluster::start(4, &[]);
    let addresses: Vec<SocketAddr> = cluster
        .nodes
        .iter()
        .map(|node| node.http_address())
        .collect();
    let (status, body) = http_available(
        addresses[0],
        "POST",
        "/subjects/users-value/versions",
        &schema_body(USER_V1),
    );
    assert_eq!(status, 200, "{body}");
    let user_id = json(&body)["id"].as_u64().unwrap();
    for (index, address) in addresses.iter().enumerate() {
        let (status, body) =
            http_available(*address, "GET", &format!("/schemas/ids/{user_id}"), "");
        assert_eq!(status, 200, "node {}: {body}", index + 1);
        let (status, body) = http_available(
            *address,
            "POST",
            &format!("/subjects/subject-{index}/versions"),
            &schema_body(ORDER),
        );
        assert_eq!(status, 200, "node {}: {body}", index + 1);
        let (status, body) = http(*address, "GET", "/subjects", "");
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            json(&body).as_array().unwrap().len(),
            index + 2,
            "node {}: {body}",
            index + 1
        );
    }
}

/// Registers `schema` (Avro) under `subject` through `address`, riding out the 5xx of a
/// registry whose `_schemas` is being created; its id.
fn register(address: SocketAddr, subject: &str, schema: &str) -> u64 {
    let (status, body) = http_available(
        address,
        "POST",
        &format!("/subjects/{subject}/versions"),
        &schema_body(schema),
    );
    assert_eq!(status, 200, "{body}");
    json(&body)["id"].as_u64().expect("an id")
}

#[test]
fn no_client_may_write_schemas_and_followers_forward_registry_writes_to_the_leader() {
    let mut cluster = TestCluster::start(3, &[]);
    register(cluster.node(1).http_address(), "users-value", USER_V1);
    let leader = schemas_leader(&mut cluster, None);
    let follower = [1, 2, 3].into_iter().find(|node| *node != leader).unwrap();
    let follower_http = cluster.node(follower).http_address();
    let schemas_end = |cluster: &TestCluster| {
        cluster
            .node(leader)
            .wire()
            .describe_topic("_schemas")
            .expect("describe _schemas")[0]
            .high_watermark
    };
    let before = schemas_end(&cluster);

    // A well-formed registry record, as the registry itself writes a global level change:
    // a client may not produce it, on any node, over either protocol.
    let key = r#"{"keytype":"CONFIG","subject":null,"magic":0}"#;
    let value = r#"{"compatibilityLevel":"NONE"}"#;
    for node in [1, 2, 3] {
        let mut batch = cairn_protocol::batch::RecordBatchBuilder::new(1_700_000_000_000);
        batch.push(&cairn_protocol::Record::new(value.to_string()).with_key(key.to_string()));
        let refused =
            cluster
                .node(node)
                .wire()
                .produce_batch("_schemas", 0, batch.build().into_bytes());
        assert!(
            matches!(
                refused,
                Err(cairn_protocol::ApiError::InvalidTopicName { .. })
            ),
            "node {node}: {refused:?}"
        );
        let mut kafka = KafkaWire::connect(cluster.node(node).kafka_address());
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("_schemas")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(kafka_batch(&[(key, value)])))])]);
        let response: ProduceResponse = kafka.call(ApiKey::Produce, 9, &request);
        let answer = &response.responses[0].partition_responses[0];
        assert_eq!(answer.error_code, 17, "INVALID_TOPIC_EXCEPTION: {answer:?}");
    }
    assert_eq!(schemas_end(&cluster), before, "nothing reached _schemas");
    let (status, body) = http(follower_http, "GET", "/config", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["compatibilityLevel"], "BACKWARD");

    // A request already forwarded once is answered by the node it reached: a follower says
    // it does not lead, so a forwarder asks the leader again instead of looping.
    let forwarded = "PUT /config HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n\
                     X-Cairn-Forwarded-By: 9\r\nContent-Type: application/json\r\n\
                     Content-Length: 24\r\n\r\n{\"compatibility\":\"FULL\"}";
    let (status, body) = support::http_raw(follower_http, forwarded.as_bytes(), AVAILABLE_TIMEOUT);
    assert_eq!(status, 503, "{body}");
    assert_eq!(json(&body)["error_code"], 50004, "{body}");

    // The same write from a client, to the follower: forwarded to the leader and applied.
    let (status, body) = http(
        follower_http,
        "PUT",
        "/config",
        r#"{"compatibility":"FULL"}"#,
    );
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!({ "compatibility": "FULL" })),
        "{body}"
    );
    assert!(
        schemas_end(&cluster) > before,
        "the leader wrote the change"
    );
    let leader_http = cluster.node(leader).http_address();
    let (status, body) = http(leader_http, "GET", "/config", "");
    assert_eq!(
        (status, json(&body)["compatibilityLevel"].clone()),
        (200, "FULL".into())
    );
}

/// Runs `node/tests/kafka_python/{script}` against a fresh 3-node cluster with a topic of 3
/// replicas: registries of every node, the Kafka bootstrap, the topic.
fn run_python_registry_scenario(script: &str, module: &str, topic: &str) {
    support::require_python_module(module, REGISTRY_PACKAGES_HINT);
    let cluster = TestCluster::start(3, &[]);
    support::create_topic_cli(&cluster.bootstrap(), topic, 1, 3);
    let registries: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| format!("http://{}", node.http_address()))
        .collect();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kafka_python")
        .join(script);
    let mut command = support::foreign_client(support::python());
    command
        .arg("-u")
        .arg(path)
        .args([&registries.join(","), &cluster.kafka_bootstrap(), topic]);
    support::run_client_scenario(script, command, SCRIPT_TIMEOUT, || cluster.logs());
}

#[test]
fn confluent_kafka_json_serializers_round_trip_through_the_registry() {
    run_python_registry_scenario(
        "schema_registry_json.py",
        "confluent_kafka.schema_registry.json_schema",
        "readings",
    );
}

#[test]
fn confluent_kafka_protobuf_serializers_round_trip_through_the_registry() {
    run_python_registry_scenario(
        "schema_registry_protobuf.py",
        "confluent_kafka.schema_registry.protobuf",
        "orders",
    );
}

#[test]
fn confluent_kafka_avro_serializers_round_trip_through_the_registry() {
    support::require_python_module(
        "confluent_kafka.schema_registry.avro",
        REGISTRY_PACKAGES_HINT,
    );
    let cluster = TestCluster::start(3, &[]);
    support::create_topic_cli(&cluster.bootstrap(), "users", 1, 3);
    let registries: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| format!("http://{}", node.http_address()))
        .collect();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kafka_python/schema_registry_avro.py");
    let mut command = support::foreign_client(support::python());
    command.arg("-u").arg(script).args([
        &registries.join(","),
        &cluster.kafka_bootstrap(),
        "users",
    ]);
    support::run_client_scenario("schema_registry_avro.py", command, SCRIPT_TIMEOUT, || {
        cluster.logs()
    });
}

#[test]
fn confluent_schemaregistry_npm_round_trip_with_kafkajs() {
    let modules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kafka_node");
    assert!(
        modules
            .join("node_modules/@confluentinc/schemaregistry/package.json")
            .exists(),
        "@confluentinc/schemaregistry is not installed: run scripts/kafka-clients.sh (npm ci \
         in node/tests/kafka_node against its committed lock file; CI's .ci/run runs it)"
    );
    let cluster = TestCluster::start(3, &[]);
    support::create_topic_cli(&cluster.bootstrap(), "clicks", 1, 3);
    let registries: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| format!("http://{}", node.http_address()))
        .collect();
    let mut command = support::foreign_client("node");
    command
        .current_dir(&modules)
        .arg("schema_registry.js")
        .args([&registries.join(","), &cluster.kafka_bootstrap(), "clicks"]);
    support::run_client_scenario("schema_registry.js", command, SCRIPT_TIMEOUT, || {
        cluster.logs()
    });
}

/// `cairn schema ...` with `--registry registry`; (exit code, stdout, stderr).
fn cairn_schema(registry: &str, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(support::cairn_binary())
        .arg("schema")
        .args(args)
        .args(["--registry", registry])
        .stdin(Stdio::null())
        .output()
        .expect("run cairn schema");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn cairn_schema_cli_registers_lists_gets_checks_and_deletes() {
    let cluster = TestCluster::start(3, &[]);
    let registry = format!("http://{}", cluster.node(2).http_address());
    let files = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let v1 = file("v1.avsc", USER_V1);
    let required = file("required.avsc", USER_ADD_REQUIRED);
    let with_default = file("default.avsc", USER_ADD_DEFAULT);

    // The first write creates `_schemas`: retried while the registry answers 5xx.
    let deadline = Instant::now() + AVAILABLE_TIMEOUT;
    let (code, out, err) = loop {
        let answer = cairn_schema(
            &registry,
            &["register", "users-value", "-f", &v1, "--output", "json"],
        );
        if answer.0 == 0 || !answer.2.contains("(50") || Instant::now() >= deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 0, "{out}{err}");
    let first = json(&out);
    assert_eq!(first["version"], 1, "{out}");
    let first_id = first["id"].as_u64().unwrap();

    // BACKWARD refuses a new field without a default: check says so (exit 1), register is
    // refused with Confluent's 409 (exit 1), and nothing is stored.
    let (code, out, _) = cairn_schema(&registry, &["check", "users-value", "-f", &required]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("incompatible"), "{out}");
    let (code, _, err) = cairn_schema(&registry, &["register", "users-value", "-f", &required]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("409"), "{err}");
    let (code, out, _) = cairn_schema(&registry, &["check", "users-value", "-f", &with_default]);
    assert_eq!(
        (code, out.trim()),
        (0, "compatible with 'users-value' version latest")
    );
    let (code, out, err) =
        cairn_schema(&registry, &["register", "users-value", "-f", &with_default]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("registered 'users-value' version 2 with id "),
        "{out}"
    );

    let (code, out, _) = cairn_schema(&registry, &["list"]);
    assert_eq!((code, out.as_str()), (0, "users-value\n"));
    let (code, out, _) = cairn_schema(&registry, &["list", "users-value"]);
    assert_eq!((code, out.as_str()), (0, "1\n2\n"));
    let (code, out, _) = cairn_schema(
        &registry,
        &["get", "users-value", "-v", "1", "--output", "json"],
    );
    assert_eq!(code, 0);
    assert_eq!(json(&out)["id"].as_u64(), Some(first_id));
    let (code, out, _) = cairn_schema(&registry, &["get", "--id", &first_id.to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("\"name\":\"User\""), "{out}");

    // Protobuf with a reference; the type comes from the `.proto` extension.
    let common = file(
        "common.proto",
        "syntax = \"proto3\";\npackage common;\nmessage Id { string value = 1; }\n",
    );
    let order = file(
        "order.proto",
        "syntax = \"proto3\";\nimport \"common.proto\";\nmessage Order { common.Id id = 1; }\n",
    );
    assert_eq!(
        cairn_schema(&registry, &["register", "common", "-f", &common]).0,
        0
    );
    let (code, _, err) = cairn_schema(&registry, &["register", "orders", "-f", &order]);
    assert_eq!(code, 1, "an unresolved import is refused: {err}");
    assert!(err.contains("42201"), "{err}");
    let (code, _, err) = cairn_schema(
        &registry,
        &[
            "register",
            "orders",
            "-f",
            &order,
            "-r",
            "common.proto=common:1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cairn_schema(&registry, &["get", "orders"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("type PROTOBUF") && out.contains("reference common.proto=common:1"),
        "{out}"
    );

    // Deletes: soft first, then permanent; a referenced subject stays.
    let (code, _, err) = cairn_schema(&registry, &["delete", "common"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("42206"), "{err}");
    let (code, _, err) = cairn_schema(&registry, &["delete", "users-value", "--permanent"]);
    assert!(code == 1 && err.contains("40405"), "{err}");
    assert_eq!(
        cairn_schema(&registry, &["delete", "users-value", "-v", "1"]).0,
        0
    );
    let (code, out, _) = cairn_schema(&registry, &["list", "users-value"]);
    assert_eq!((code, out.as_str()), (0, "2\n"));

    // Arguments refused before anything is sent: exit 2.
    let (code, _, err) = cairn_schema("https://127.0.0.1:1", &["list"]);
    assert!(code == 2 && err.contains("http://"), "{err}");
    for args in [
        vec!["register", "x", "-f", "/nonexistent/schema.avsc"],
        vec!["register", "x", "-f", &v1, "-r", "no-version"],
        vec!["get", "users-value", "-v", "0"],
        vec!["register", "x", "-f", &v1, "-t", "xml"],
    ] {
        let (code, _, err) = cairn_schema(&registry, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    // A registry that is not there: exit 1.
    let (code, _, err) = cairn_schema("http://127.0.0.1:1", &["list"]);
    assert_eq!(code, 1, "{err}");
}
