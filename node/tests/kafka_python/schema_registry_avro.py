"""confluent-kafka-python's SchemaRegistryClient and Avro serializers against Cairn's registry.

Usage: schema_registry_avro.py REGISTRY_URL[,REGISTRY_URL...] KAFKA_BOOTSTRAP TOPIC

Producing with AvroSerializer registers the schema through the first node's registry and
frames each value with its id; AvroDeserializer on a consumer resolves the ids through
another node's registry. Then the schema evolves: a field without a default is refused
(409), one with a default is version 2, and records of both versions read back. Every wait
is bounded; the first failed assertion exits nonzero.
"""

import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError

from registry_common import produce, read_back, register_until_available

registries, bootstrap, topic = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
subject = f"{topic}-value"

V1 = {
    "type": "record",
    "name": "User",
    "fields": [{"name": "name", "type": "string"}, {"name": "favorite", "type": "int"}],
}
V2_REQUIRED = dict(V1, fields=V1["fields"] + [{"name": "email", "type": "string"}])
V2 = dict(V1, fields=V1["fields"] + [{"name": "email", "type": "string", "default": "none"}])


writer = SchemaRegistryClient({"url": registries[0]})
reader = SchemaRegistryClient({"url": registries[-1]})

first_id = register_until_available(writer, subject, Schema(json.dumps(V1), "AVRO"))
serializer = AvroSerializer(writer, json.dumps(V1))
produce(bootstrap, topic, serializer, [{"name": f"user-{i}", "favorite": i} for i in range(10)])
assert reader.get_latest_version(subject).version == 1
assert reader.get_schema(first_id).schema_type == "AVRO"

# BACKWARD (the default): a new field without a default is refused, with Confluent's 409.
try:
    writer.register_schema(subject, Schema(json.dumps(V2_REQUIRED), "AVRO"))
    raise AssertionError("an incompatible schema was registered")
except SchemaRegistryError as error:
    assert (error.http_status_code, error.error_code) == (409, 409), error
assert not reader.test_compatibility(subject, Schema(json.dumps(V2_REQUIRED), "AVRO"))
assert reader.test_compatibility(subject, Schema(json.dumps(V2), "AVRO"))

second_id = writer.register_schema(subject, Schema(json.dumps(V2), "AVRO"))
assert second_id != first_id
# The client caches the latest version it saw: ask with a fresh one.
assert SchemaRegistryClient({"url": registries[1]}).get_latest_version(subject).version == 2
assert reader.get_versions(subject) == [1, 2]
assert reader.get_version(subject, 2).schema_id == second_id
produce(
    bootstrap,
    topic,
    AvroSerializer(writer, json.dumps(V2)),
    [{"name": f"user-{i}", "favorite": i, "email": f"u{i}@example.com"} for i in range(10, 15)],
)

# Read everything back, resolving both ids through the other node's registry.
deserializer = AvroDeserializer(reader)
seen = read_back(bootstrap, topic, "schema-registry-test", 15, deserializer)
assert [value["name"] for value in seen] == [f"user-{i}" for i in range(15)], seen
assert all("email" not in value for value in seen[:10]), seen[:10]
assert [value["email"] for value in seen[10:]] == [f"u{i}@example.com" for i in range(10, 15)]
print(f"round trip ok: ids {first_id} and {second_id}, {len(seen)} records")
