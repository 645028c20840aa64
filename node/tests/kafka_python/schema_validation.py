"""Broker-side schema validation with confluent-kafka-python, against a topic created with
`confluent.value.schema.validation=true`.

Usage: schema_validation.py REGISTRY_URL[,REGISTRY_URL...] KAFKA_BOOTSTRAP TOPIC

An AvroSerializer record (its schema registered through the first node's registry, the
topic's leader possibly on another node) is accepted and read back; a plain-bytes value, an
unknown id and an id registered only under another subject are refused with INVALID_RECORD,
and the high watermark shows nothing of them was written; a tombstone passes. Kafka's
DescribeConfigs shows the setting under both vendors' names; AlterConfigs turning it off
(Redpanda's name) lets the refused values in. Every wait is bounded; the first failed
assertion exits nonzero.
"""

import json
import struct
import sys
import time

from confluent_kafka import Consumer, KafkaError, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import AdminClient, ConfigResource
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

import registry_common
from registry_common import DEADLINE_S, register_until_available

registries, bootstrap, topic = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
CONFLUENT = "confluent.value.schema.validation"
REDPANDA = "redpanda.value.schema.id.validation"

USER = {"type": "record", "name": "User", "fields": [{"name": "name", "type": "string"}]}
OTHER = {"type": "record", "name": "Other", "fields": [{"name": "n", "type": "long"}]}


def produce_one(value, key="k"):
    return registry_common.produce_one(bootstrap, topic, key, value)


def high_watermark():
    return registry_common.high_watermark(bootstrap, topic, "validation-watermarks")


def framed(schema_id, payload=b"\x02a"):
    return b"\x00" + struct.pack(">I", schema_id) + payload


def expect_refused(value, why):
    before = high_watermark()
    error = produce_one(value)
    assert error is not None, f"{why}: accepted"
    assert error.code() == KafkaError.INVALID_RECORD, f"{why}: {error}"
    assert high_watermark() == before, f"{why}: something was written"
    print(f"refused ({why}): {error}")


def describe_validation(admin):
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(30)
    return configs[CONFLUENT].value, configs[REDPANDA].value


writer = SchemaRegistryClient({"url": registries[0]})
reader = SchemaRegistryClient({"url": registries[-1]})
other_id = register_until_available(writer, "unrelated-value", Schema(json.dumps(OTHER), "AVRO"))

# A serialized record: the serializer registers `<topic>-value` through node 1's registry.
# The leader's log may start with its epoch marker: offsets are counted from here.
start = high_watermark()
serializer = AvroSerializer(writer, json.dumps(USER))
value = serializer({"name": "ada"}, SerializationContext(topic, MessageField.VALUE))
user_id = struct.unpack(">I", value[1:5])[0]
assert user_id != other_id
assert produce_one(value) is None, "a serialized record was refused"
assert high_watermark() == start + 1, (start, high_watermark())

expect_refused(b"plain bytes", "no magic byte")
expect_refused(framed(user_id + other_id + 1000), "unknown id")
expect_refused(framed(other_id), "id of another subject")
# A tombstone carries no schema: it passes.
assert produce_one(None) is None, "a tombstone was refused"
assert high_watermark() == start + 2, (start, high_watermark())

admin = AdminClient({"bootstrap.servers": bootstrap})
assert describe_validation(admin) == ("true", "true"), describe_validation(admin)

# Read the serialized record back through another node's registry.
consumer = Consumer(
    {"bootstrap.servers": bootstrap, "group.id": "validation-reader", "enable.auto.commit": False}
)
consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
deserializer = AvroDeserializer(reader)
seen = []
deadline = time.monotonic() + DEADLINE_S
while len(seen) < 2 and time.monotonic() < deadline:
    message = consumer.poll(1.0)
    if message is None:
        continue
    assert message.error() is None, message.error()
    seen.append(message.value())
consumer.close()
assert len(seen) == 2, seen
assert deserializer(seen[0], SerializationContext(topic, MessageField.VALUE)) == {"name": "ada"}
assert seen[1] is None

# Off, by Redpanda's name through Kafka's AlterConfigs: the refused values get in.
resource = ConfigResource(ConfigResource.Type.TOPIC, topic, set_config={REDPANDA: "false"})
admin.alter_configs([resource])[resource].result(30)
assert describe_validation(admin) == ("false", "false"), describe_validation(admin)
# The partition's leader applies the change when its metadata does, a moment later.
deadline = time.monotonic() + DEADLINE_S
while produce_one(b"plain bytes") is not None:
    assert time.monotonic() < deadline, "validation stayed on"
    time.sleep(0.2)
for value in [framed(user_id + other_id + 1000), framed(other_id)]:
    assert produce_one(value) is None, f"refused with validation off: {value!r}"
assert high_watermark() == start + 5, (start, high_watermark())
print(f"validation ok: ids {user_id} (topic) and {other_id} (other subject)")
