"""confluent-kafka-python's ProtobufSerializer / ProtobufDeserializer against Cairn's registry.

Usage: schema_registry_protobuf.py REGISTRY_URL[,REGISTRY_URL...] KAFKA_BOOTSTRAP TOPIC

The message classes are built at run time from descriptors (descriptor_pb2 + message_factory),
so no protoc is needed: `shop/order.proto` imports `shop/money.proto` and Google's Timestamp.
ProtobufSerializer registers the import as a schema of its own (subject `shop/money.proto`),
then the order schema with a reference to it, both as base64 FileDescriptorProtos; Timestamp
is a well-known type the registry knows. ProtobufDeserializer fetches the writer schema and
its reference (`?format=serialized`) through another node's registry. Then the schema
evolves: a field number reused with another type is refused (409), a new field is version 2.
Every wait is bounded; the first failed assertion exits nonzero.
"""

import sys
import time

from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf import timestamp_pb2

from registry_common import DEADLINE_S, produce, read_back

registries, bootstrap, topic = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
subject = f"{topic}-value"
F = descriptor_pb2.FieldDescriptorProto


def field(message, name, number, kind, type_name=None, label=F.LABEL_OPTIONAL):
    added = message.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        added.type_name = type_name


def build_classes(with_note):
    """The Money and Order message classes, in a pool of their own."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    money = descriptor_pb2.FileDescriptorProto(
        name="shop/money.proto", package="shop", syntax="proto3"
    )
    m = money.message_type.add(name="Money")
    field(m, "currency", 1, F.TYPE_STRING)
    field(m, "cents", 2, F.TYPE_INT64)
    pool.Add(money)
    order = descriptor_pb2.FileDescriptorProto(
        name="shop/order.proto",
        package="shop",
        syntax="proto3",
        dependency=["shop/money.proto", "google/protobuf/timestamp.proto"],
    )
    o = order.message_type.add(name="Order")
    field(o, "id", 1, F.TYPE_STRING)
    field(o, "total", 2, F.TYPE_MESSAGE, ".shop.Money")
    field(o, "placed", 3, F.TYPE_MESSAGE, ".google.protobuf.Timestamp")
    field(o, "items", 4, F.TYPE_STRING, label=F.LABEL_REPEATED)
    if with_note:
        field(o, "note", 5, F.TYPE_STRING)
    pool.Add(order)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Order"))


def serialize_until_available(serializer, value):
    """The first registration also creates `_schemas`: ride out its 5xx answers."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return serializer(value, SerializationContext(topic, MessageField.VALUE))
        except Exception as error:  # SerializationError wrapping SchemaRegistryError
            cause = error.__cause__ or error
            status = getattr(cause, "http_status_code", 0)
            if not (isinstance(cause, SchemaRegistryError) and status >= 500):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def order(cls, index, note=None):
    value = cls(id=f"order-{index}", items=[f"item-{index}", "box"])
    value.total.currency = "EUR"
    value.total.cents = 100 * index + 5
    value.placed.seconds = 1_700_000_000 + index
    if note is not None:
        value.note = note
    return value


writer = SchemaRegistryClient({"url": registries[0]})
reader = SchemaRegistryClient({"url": registries[-1]})

V1 = build_classes(with_note=False)
serializer = ProtobufSerializer(V1, writer)
serialize_until_available(serializer, order(V1, 0))
produce(bootstrap, topic, serializer, [order(V1, i) for i in range(10)])

latest = reader.get_latest_version(subject)
assert latest.version == 1, latest.version
assert latest.schema.schema_type == "PROTOBUF", latest.schema.schema_type
references = latest.schema.references
assert [(r.name, r.subject) for r in references] == [("shop/money.proto", "shop/money.proto")], [
    (r.name, r.subject, r.version) for r in references
]
first_id = latest.schema_id
# Registered as a base64 descriptor, served as .proto text (as Confluent's registry does).
text = SchemaRegistryClient({"url": registries[1]}).get_schema(first_id).schema_str
assert text.startswith('syntax = "proto3";\npackage shop;\nimport "shop/money.proto";'), text
assert "repeated string items = 4;" in text, text

# A field number reused with another type: BACKWARD refuses it with 409.
reused = """syntax = "proto3";
package shop;
import "shop/money.proto";

message Order {
  string id = 1;
  string total = 2;
}
"""
refs = [SchemaReference(r.name, r.subject, r.version) for r in references]
try:
    writer.register_schema(subject, Schema(reused, "PROTOBUF", refs))
    raise AssertionError("a field number reused with another type was registered")
except SchemaRegistryError as error:
    assert (error.http_status_code, error.error_code) == (409, 409), error
assert not reader.test_compatibility(subject, Schema(reused, "PROTOBUF", refs))

# A new field is compatible: version 2, a new id.
V2 = build_classes(with_note=True)
produce(bootstrap, topic, ProtobufSerializer(V2, writer), [order(V2, i, note=f"n{i}") for i in range(10, 15)])
# The client caches the latest version it saw: ask with a fresh one.
fresh = SchemaRegistryClient({"url": registries[1]})
assert fresh.get_versions(subject) == [1, 2]
second_id = fresh.get_latest_version(subject).schema_id
assert second_id != first_id

# Read everything back with the newest class, resolving each writer schema by id.
deserializer = ProtobufDeserializer(V2, {}, reader)
seen = read_back(
    bootstrap, topic, "schema-registry-protobuf", 15, deserializer, ids=(first_id, second_id)
)
assert [value.id for value in seen] == [f"order-{i}" for i in range(15)], seen
assert [value.total.cents for value in seen] == [100 * i + 5 for i in range(15)]
assert [value.placed.seconds for value in seen] == [1_700_000_000 + i for i in range(15)]
assert all(value.note == "" for value in seen[:10])
assert [value.note for value in seen[10:]] == [f"n{i}" for i in range(10, 15)]
print(f"protobuf round trip ok: ids {first_id} and {second_id}, {len(seen)} records")
