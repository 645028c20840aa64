"""confluent-kafka's AdminClient against a 3-node Cairn cluster: create, list and describe
topics, describe and alter configs, add partitions, describe the cluster, delete groups and
topics; and the refusals a Kafka broker gives for bad input. Exits nonzero (an AssertionError or a
KafkaException) on the first thing that is not as Kafka would answer.

Usage: admin.py BOOTSTRAP EXPECTED_BROKER_COUNT
"""

import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
)

TIMEOUT_S = 30
SETTLE_S = 30

bootstrap, broker_count = sys.argv[1], int(sys.argv[2])
admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})


def result(future):
    return future.result(timeout=TIMEOUT_S)


def refused(future, code, what):
    try:
        future.result(timeout=TIMEOUT_S)
    except KafkaException as error:
        got = error.args[0]
        assert got.code() == code, f"{what}: expected {KafkaError(code).name()}, got {got}"
        print(f"ok: {what} refused: {got.name()}")
        return
    raise AssertionError(f"{what}: accepted, expected {KafkaError(code).name()}")


def eventually(what, check):
    deadline = time.monotonic() + SETTLE_S
    while True:
        if check():
            return
        assert time.monotonic() < deadline, f"{what}: not within {SETTLE_S} s"
        time.sleep(0.2)


def _deleted(group_id):
    """Deletes `group_id`; False while its members are still leaving."""
    try:
        result(admin.delete_consumer_groups([group_id])[group_id])
        return True
    except KafkaException as error:
        if error.args[0].code() == KafkaError.NON_EMPTY_GROUP:
            return False
        raise


def partitions_of(topic):
    listed = admin.list_topics(topic=topic, timeout=TIMEOUT_S).topics.get(topic)
    if listed is None or listed.error is not None:
        return None
    return len(listed.partitions)


def describe_topic_configs(topic):
    resource = ConfigResource("TOPIC", topic)
    return result(admin.describe_configs([resource])[resource])


# Create two topics, one with a config; both exist with their partition counts.
created = admin.create_topics(
    [
        NewTopic("py-admin", num_partitions=2, replication_factor=3,
                 config={"retention.ms": "3600000", "cleanup.policy": "delete"}),
        NewTopic("py-other", num_partitions=1, replication_factor=1),
    ],
    operation_timeout=TIMEOUT_S,
)
for topic, future in created.items():
    result(future)
    print(f"ok: created {topic}")
eventually("py-admin listed with 2 partitions", lambda: partitions_of("py-admin") == 2)
eventually("py-other listed with 1 partition", lambda: partitions_of("py-other") == 1)

# list_topics: every broker, the controller among them, both topics with leaders.
metadata = admin.list_topics(timeout=TIMEOUT_S)
assert len(metadata.brokers) == broker_count, metadata.brokers
assert metadata.cluster_id == "cairn", metadata.cluster_id
assert metadata.controller_id in metadata.brokers, metadata.controller_id
for topic in ("py-admin", "py-other"):
    assert topic in metadata.topics, list(metadata.topics)
    for partition in metadata.topics[topic].partitions.values():
        assert partition.leader in metadata.brokers, partition
print("ok: list_topics")

# describe_topics (Metadata by name, with topic ids).
described = result(admin.describe_topics(TopicCollection(["py-admin"]))["py-admin"])
assert described.name == "py-admin"
assert len(described.partitions) == 2, described.partitions
assert all(len(partition.replicas) == 3 for partition in described.partitions)
print("ok: describe_topics", described.topic_id)

# describe_configs: Cairn's configs under Kafka's names, with their sources.
configs = describe_topic_configs("py-admin")
assert configs["retention.ms"].value == "3600000", configs["retention.ms"]
assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, configs["retention.ms"].source
assert not configs["retention.ms"].is_read_only
assert configs["retention.bytes"].value == "-1", configs["retention.bytes"]
assert configs["cleanup.policy"].value == "delete"
assert not configs["cleanup.policy"].is_read_only
assert "max.message.bytes" in configs
print("ok: describe_configs topic", sorted(configs))

broker = ConfigResource("BROKER", str(metadata.controller_id))
broker_configs = result(admin.describe_configs([broker])[broker])
assert broker_configs["broker.id"].value == str(metadata.controller_id), broker_configs["broker.id"]
controller = metadata.brokers[metadata.controller_id]
advertised = f"PLAINTEXT://{controller.host}:{controller.port}"
assert broker_configs["advertised.listeners"].value == advertised, broker_configs["advertised.listeners"]
# Not configured: derived from the bound address, as Kafka derives it from `listeners`.
assert broker_configs["advertised.listeners"].source == ConfigSource.DEFAULT_CONFIG.value
print("ok: describe_configs broker", sorted(broker_configs))

# incremental_alter_configs: SET and DELETE, then describe shows them.
resource = ConfigResource("TOPIC", "py-admin", incremental_configs=[
    ConfigEntry("retention.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
    ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
])
result(admin.incremental_alter_configs([resource])[resource])
configs = describe_topic_configs("py-admin")
assert configs["retention.bytes"].value == "1048576", configs["retention.bytes"]
assert configs["retention.ms"].value == "-1", configs["retention.ms"]
print("ok: incremental_alter_configs")

# A refused config changes nothing, not even the valid config beside it.
resource = ConfigResource("TOPIC", "py-admin", incremental_configs=[
    ConfigEntry("retention.bytes", "2097152", incremental_operation=AlterConfigOpType.SET),
    ConfigEntry("segment.ms", "1000", incremental_operation=AlterConfigOpType.SET),
])
refused(admin.incremental_alter_configs([resource])[resource], KafkaError.INVALID_CONFIG,
        "an unknown config")
resource = ConfigResource("TOPIC", "py-admin", incremental_configs=[
    ConfigEntry("cleanup.policy", "compacted", incremental_operation=AlterConfigOpType.SET),
])
refused(admin.incremental_alter_configs([resource])[resource], KafkaError.INVALID_CONFIG,
        "an unknown cleanup.policy")
resource = ConfigResource("TOPIC", "py-admin", incremental_configs=[
    ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET),
])
refused(admin.incremental_alter_configs([resource])[resource], KafkaError.INVALID_CONFIG,
        "a retention that is no number")
configs = describe_topic_configs("py-admin")
assert configs["retention.bytes"].value == "1048576", configs["retention.bytes"]

# validate_only checks without changing.
resource = ConfigResource("TOPIC", "py-admin", incremental_configs=[
    ConfigEntry("retention.bytes", "4096", incremental_operation=AlterConfigOpType.SET),
])
result(admin.incremental_alter_configs([resource], validate_only=True)[resource])
configs = describe_topic_configs("py-admin")
assert configs["retention.bytes"].value == "1048576", configs["retention.bytes"]
print("ok: refused and validate-only alters change nothing")

# create_partitions: grow, validate only, and the refusals.
result(admin.create_partitions([NewPartitions("py-admin", 4)])["py-admin"])
eventually("py-admin grown to 4 partitions", lambda: partitions_of("py-admin") == 4)
result(admin.create_partitions([NewPartitions("py-admin", 6)], validate_only=True)["py-admin"])
assert partitions_of("py-admin") == 4
refused(admin.create_partitions([NewPartitions("py-admin", 3)])["py-admin"],
        KafkaError.INVALID_PARTITIONS, "fewer partitions")
refused(admin.create_partitions([NewPartitions("py-admin", 4)])["py-admin"],
        KafkaError.INVALID_PARTITIONS, "the same partition count")
refused(admin.create_partitions([NewPartitions("py-missing", 2)])["py-missing"],
        KafkaError.UNKNOWN_TOPIC_OR_PART, "partitions of an unknown topic")
assert partitions_of("py-admin") == 4
print("ok: create_partitions")

# describe_cluster: the cluster id, every broker, the controller among them.
cluster = result(admin.describe_cluster())
assert cluster.cluster_id == "cairn", cluster.cluster_id
assert len(cluster.nodes) == broker_count, cluster.nodes
assert cluster.controller is not None and cluster.controller.id in [node.id for node in cluster.nodes], cluster.controller
for node in cluster.nodes:
    assert node.host == "127.0.0.1" and node.port > 0, node
print("ok: describe_cluster", cluster.controller, cluster.nodes)

# Bad input: a topic that exists, an invalid config, unknown topics.
refused(admin.create_topics([NewTopic("py-admin", 1, 1)], operation_timeout=TIMEOUT_S)["py-admin"],
        KafkaError.TOPIC_ALREADY_EXISTS, "creating an existing topic")
refused(admin.create_topics([NewTopic("py-compacted", 1, 1, config={"cleanup.policy": "tidy"})],
                            operation_timeout=TIMEOUT_S)["py-compacted"],
        KafkaError.INVALID_CONFIG, "an unknown cleanup.policy")
assert partitions_of("py-compacted") is None, "a refused topic was created"
refused(admin.describe_configs([ConfigResource("TOPIC", "py-missing")])[ConfigResource("TOPIC", "py-missing")],
        KafkaError.UNKNOWN_TOPIC_OR_PART, "configs of an unknown topic")
refused(admin.delete_topics(["py-missing"], operation_timeout=TIMEOUT_S)["py-missing"],
        KafkaError.UNKNOWN_TOPIC_OR_PART, "deleting an unknown topic")

# delete_consumer_groups: refused while the group has a member, then the group and its
# committed offsets are gone; an unknown group is refused.
member = Consumer({"bootstrap.servers": bootstrap, "group.id": "py-admin-group",
                   "enable.auto.commit": False, "session.timeout.ms": 10000})
member.subscribe(["py-admin"])
deadline = time.monotonic() + SETTLE_S
while not member.assignment():
    assert time.monotonic() < deadline, "the group member got no assignment"
    member.poll(0.2)
member.commit(offsets=[TopicPartition("py-admin", 0, 1)], asynchronous=False)


def listed_groups():
    return {group.group_id for group in result(admin.list_consumer_groups()).valid}


assert "py-admin-group" in listed_groups()
refused(admin.delete_consumer_groups(["py-admin-group"])["py-admin-group"],
        KafkaError.NON_EMPTY_GROUP, "deleting a group with a member")
member.close()
eventually("the group empty and deleted", lambda: _deleted("py-admin-group"))
assert "py-admin-group" not in listed_groups()
refused(admin.delete_consumer_groups(["py-missing-group"])["py-missing-group"],
        KafkaError.GROUP_ID_NOT_FOUND, "deleting an unknown group")
print("ok: delete_consumer_groups")

# delete_topics: both gone.
for topic, future in admin.delete_topics(["py-admin", "py-other"], operation_timeout=TIMEOUT_S).items():
    result(future)
    print(f"ok: deleted {topic}")
eventually("deleted topics no longer listed",
           lambda: not {"py-admin", "py-other"} & set(admin.list_topics(timeout=TIMEOUT_S).topics))
print("admin: all passed")
