"""Broker-side schema validation with the record name strategies, with confluent-kafka-python.

Usage: schema_validation_record_names.py REGISTRY_URL KAFKA_BOOTSTRAP TOPIC

The topic is created through Kafka's CreateTopics validating values with Confluent's
RecordNameStrategy (class name) and keys with Redpanda's spelling of TopicRecordNameStrategy;
DescribeConfigs shows every setting under both vendors' names. Records serialized with the
same strategies (their schemas registered under `com.example.User` and `<topic>-shop.Key`)
are accepted; a value registered under `<topic>-value` (TopicNameStrategy) and a key
registered under its bare record name are refused with INVALID_RECORD, and nothing of them is
written. Every wait is bounded; the first failed assertion exits nonzero.
"""

import json
import sys
import time

from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from confluent_kafka.schema_registry import (
    Schema,
    SchemaRegistryClient,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

import registry_common
from registry_common import DEADLINE_S, register_until_available

registry, bootstrap, topic = sys.argv[1], sys.argv[2], sys.argv[3]

RECORD = "io.confluent.kafka.serializers.subject.RecordNameStrategy"
USER = {
    "type": "record",
    "name": "User",
    "namespace": "com.example",
    "fields": [{"name": "name", "type": "string"}],
}
KEY = {"type": "record", "name": "Key", "namespace": "shop", "fields": [{"name": "id", "type": "long"}]}
# Ids are global: the same schema under two subjects is one id. The refused records use
# other versions of the same records, so their ids are registered only under the other
# strategies' subjects.
USER_ELSEWHERE = dict(USER, fields=USER["fields"] + [{"name": "age", "type": "int", "default": 0}])
KEY_ELSEWHERE = dict(KEY, fields=KEY["fields"] + [{"name": "shard", "type": "int", "default": 0}])

admin = AdminClient({"bootstrap.servers": bootstrap})
created = admin.create_topics(
    [
        NewTopic(
            topic,
            num_partitions=1,
            replication_factor=-1,
            config={
                "confluent.value.schema.validation": "true",
                "confluent.value.subject.name.strategy": RECORD,
                "redpanda.key.schema.id.validation": "true",
                "redpanda.key.subject.name.strategy": "TopicRecordNameStrategy",
            },
        )
    ]
)
created[topic].result(30)

resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
configs = admin.describe_configs([resource])[resource].result(30)
shown = {name: configs[name].value for name in configs}
for name, value in {
    "confluent.value.schema.validation": "true",
    "redpanda.value.schema.id.validation": "true",
    "confluent.key.schema.validation": "true",
    "redpanda.key.schema.id.validation": "true",
    "confluent.value.subject.name.strategy": RECORD,
    "redpanda.value.subject.name.strategy": "RecordNameStrategy",
    "confluent.key.subject.name.strategy": (
        "io.confluent.kafka.serializers.subject.TopicRecordNameStrategy"
    ),
    "redpanda.key.subject.name.strategy": "TopicRecordNameStrategy",
}.items():
    assert shown.get(name) == value, f"{name}: {shown.get(name)!r}, expected {value!r}"

client = SchemaRegistryClient({"url": registry})
# The first registration also creates `_schemas`.
register_until_available(client, "warm-up-value", Schema(json.dumps(KEY), "AVRO"))


def serializer(schema, strategy):
    return AvroSerializer(client, json.dumps(schema), conf={"subject.name.strategy": strategy})


values = {
    "record": serializer(USER, record_subject_name_strategy),
    "topic": serializer(USER_ELSEWHERE, topic_subject_name_strategy),
}
keys = {
    "topic_record": serializer(KEY, topic_record_subject_name_strategy),
    "record": serializer(KEY_ELSEWHERE, record_subject_name_strategy),
}


def framed(which, part, data):
    field = MessageField.KEY if part == "key" else MessageField.VALUE
    table = keys if part == "key" else values
    return table[which](data, SerializationContext(topic, field))


def produce_one(key, value):
    return registry_common.produce_one(bootstrap, topic, key, value)


def high_watermark():
    return registry_common.high_watermark(bootstrap, topic, "record-names-watermarks")


good_key = framed("topic_record", "key", {"id": 7})
good_value = framed("record", "value", {"name": "ada"})
subjects = client.get_subjects()
assert "com.example.User" in subjects and f"{topic}-shop.Key" in subjects, subjects

# The partition's leader applies the topic's settings with its metadata: the first produce
# may meet a leader still electing; the accepted record is retried within the deadline.
deadline = time.monotonic() + DEADLINE_S
start = high_watermark()
while (error := produce_one(good_key, good_value)) is not None:
    assert error.code() != KafkaError.INVALID_RECORD, f"the strategies' record refused: {error}"
    assert time.monotonic() < deadline, error
    time.sleep(0.2)
written = high_watermark()
assert written > start, (start, written)

for why, key, value in [
    ("value under <topic>-value", good_key, framed("topic", "value", {"name": "bob"})),
    ("key under its bare record name", framed("record", "key", {"id": 8}), good_value),
]:
    error = produce_one(key, value)
    assert error is not None, f"{why}: accepted"
    assert error.code() == KafkaError.INVALID_RECORD, f"{why}: {error}"
    assert high_watermark() == written, f"{why}: something was written"
    print(f"refused ({why}): {error}")
print(f"record name strategies ok: {sorted(subjects)}")
