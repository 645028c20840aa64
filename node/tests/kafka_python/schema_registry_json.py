"""confluent-kafka-python's JSONSerializer / JSONDeserializer against Cairn's registry.

Usage: schema_registry_json.py REGISTRY_URL[,REGISTRY_URL...] KAFKA_BOOTSTRAP TOPIC

Producing with JSONSerializer registers a JSON Schema (schemaType JSON) through the first
node's registry and frames each value with its id; JSONDeserializer on a consumer fetches the
writer schema by id through the last node's registry and validates each value against it. The
schema is a closed content model (additionalProperties false), as Confluent recommends: adding
an optional property is then BACKWARD compatible (version 2), while adding a required one is
refused with 409. Every wait is bounded; the first failed assertion exits nonzero.
"""

import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from registry_common import produce, read_back, register_until_available

registries, bootstrap, topic = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
subject = f"{topic}-value"

V1 = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Reading",
    "type": "object",
    "properties": {"sensor": {"type": "string"}, "celsius": {"type": "number"}},
    "required": ["sensor", "celsius"],
    "additionalProperties": False,
}
V2 = dict(V1, properties=dict(V1["properties"], unit={"type": "string"}))
V2_REQUIRED = dict(V2, required=V1["required"] + ["unit"])


writer = SchemaRegistryClient({"url": registries[0]})
reader = SchemaRegistryClient({"url": registries[-1]})

first_id = register_until_available(writer, subject, Schema(json.dumps(V1), "JSON"))
produce(
    bootstrap,
    topic,
    JSONSerializer(json.dumps(V1), writer),
    [{"sensor": f"s{i}", "celsius": 20.5 + i} for i in range(10)],
)
registered = reader.get_schema(first_id)
assert registered.schema_type == "JSON", registered.schema_type
assert json.loads(registered.schema_str) == V1, registered.schema_str

# A value the schema refuses never leaves the producer.
try:
    JSONSerializer(json.dumps(V1), writer)(
        {"sensor": "x"}, SerializationContext(topic, MessageField.VALUE)
    )
    raise AssertionError("a value missing a required property was serialized")
except Exception as error:  # the serializer's SerializationError
    assert "celsius" in str(error), error

# BACKWARD (the default): a new required property is refused; an optional one is version 2.
try:
    writer.register_schema(subject, Schema(json.dumps(V2_REQUIRED), "JSON"))
    raise AssertionError("an incompatible schema was registered")
except SchemaRegistryError as error:
    assert (error.http_status_code, error.error_code) == (409, 409), error
second_id = writer.register_schema(subject, Schema(json.dumps(V2), "JSON"))
assert second_id != first_id
assert SchemaRegistryClient({"url": registries[1]}).get_versions(subject) == [1, 2]
produce(
    bootstrap,
    topic,
    JSONSerializer(json.dumps(V2), writer),
    [{"sensor": f"s{i}", "celsius": 20.5 + i, "unit": "C"} for i in range(10, 15)],
)

# Read everything back; the deserializer fetches each writer schema by id and validates.
deserializer = JSONDeserializer(None, schema_registry_client=reader)
seen = read_back(
    bootstrap, topic, "schema-registry-json", 15, deserializer, ids=(first_id, second_id)
)
assert [value["sensor"] for value in seen] == [f"s{i}" for i in range(15)], seen
assert all("unit" not in value for value in seen[:10]), seen[:10]
assert [value["unit"] for value in seen[10:]] == ["C"] * 5, seen[10:]
print(f"json round trip ok: ids {first_id} and {second_id}, {len(seen)} records")
