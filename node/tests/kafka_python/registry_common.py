"""What the schema-registry scenarios share: registering while `_schemas` is being created,
producing framed values with acks=all, and reading a partition back with a deserializer.

Every wait is bounded by DEADLINE_S; the first failed assertion exits nonzero.
"""

import time

from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

DEADLINE_S = 120


def value_context(topic):
    return SerializationContext(topic, MessageField.VALUE)


def register_until_available(client, subject, schema):
    """The first registration also creates `_schemas`: ride out its 5xx answers."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return client.register_schema(subject, schema)
        except SchemaRegistryError as error:
            if error.http_status_code < 500 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def produce(bootstrap, topic, serializer, values):
    """Serializes each value (checking Confluent's magic byte) and produces it, keyed by its
    index, with acks=all; fails unless every record is acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    failures = []
    for index, value in enumerate(values):
        framed = serializer(value, value_context(topic))
        assert framed[0] == 0, f"magic byte {framed[0]}"
        producer.produce(
            topic,
            key=str(index),
            value=framed,
            on_delivery=lambda error, _: error and failures.append(error),
        )
    assert producer.flush(60) == 0, "records left undelivered"
    assert not failures, failures


def read_back(bootstrap, topic, group, count, deserialize, ids=None):
    """Reads partition 0 from the beginning until `count` values, each deserialized (and its
    schema id checked against `ids` when given); fails on fewer within the deadline."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    seen = []
    deadline = time.monotonic() + DEADLINE_S
    while len(seen) < count and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        assert message.error() is None, message.error()
        if ids is not None:
            assert int.from_bytes(message.value()[1:5], "big") in ids
        seen.append(deserialize(message.value(), value_context(topic)))
    consumer.close()
    assert len(seen) == count, f"read {len(seen)} of {count} records"
    return seen


def produce_one(bootstrap, topic, key, value):
    """Produces one record in a batch of its own with acks=all; the delivery error (None when
    written)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    outcome = []
    producer.produce(topic, key=key, value=value, on_delivery=lambda error, _: outcome.append(error))
    assert producer.flush(60) == 0, "a record left undelivered"
    assert len(outcome) == 1, outcome
    return outcome[0]


def high_watermark(bootstrap, topic, group):
    """Partition 0's high watermark, asked through a consumer of `group`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)[1]
    finally:
        consumer.close()
