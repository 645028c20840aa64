"""kafka-python (3.x) against Cairn: it detects a modern broker from our ApiVersions, an
idempotent producer (acks=all) writes keyed records with headers, and an assign-mode
consumer (no group) reads them back in order, keys, values and headers intact. Exits
nonzero on the first difference.

Usage: kafka_python_round_trip.py BOOTSTRAP TOPIC PARTITIONS
"""

import sys
import time

import kafka
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

RECORDS = 200
TIMEOUT_S = 60

bootstrap, topic, partition_count = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("kafka-python", kafka.__version__)

producer = KafkaProducer(
    bootstrap_servers=bootstrap,
    acks="all",
    enable_idempotence=True,
    request_timeout_ms=30000,
)
# No api_version given: kafka-python probes ApiVersions and infers the broker's version from
# the highest versions advertised. Cairn's Produce 11 makes it a (3, 8) broker.
detected = producer.config["api_version"]
print("detected broker version", detected)
assert detected >= (3, 0), f"kafka-python sees an old broker: {detected}"

expected = {}
futures = []
for number in range(RECORDS):
    partition = number % partition_count
    key = f"key-{number % 7}".encode()
    value = f"value-{number}".encode()
    headers = [("source", b"kafka-python"), ("n", str(number).encode())]
    futures.append(producer.send(topic, key=key, value=value, headers=headers, partition=partition))
    expected.setdefault(partition, []).append((key, value, headers))
for future in futures:
    metadata = future.get(timeout=TIMEOUT_S)
    assert metadata.topic == topic and metadata.offset >= 0, metadata
producer.flush(timeout=TIMEOUT_S)
producer.close(timeout=TIMEOUT_S)
print(f"produced {RECORDS}")

consumer = KafkaConsumer(
    bootstrap_servers=bootstrap,
    group_id=None,
    enable_auto_commit=False,
    auto_offset_reset="earliest",
    consumer_timeout_ms=5000,
)
partitions = [TopicPartition(topic, partition) for partition in range(partition_count)]
consumer.assign(partitions)
consumer.seek_to_beginning(*partitions)
ends = consumer.end_offsets(partitions)
print("end offsets", ends)

read = {partition: [] for partition in range(partition_count)}
deadline = time.monotonic() + TIMEOUT_S
while sum(len(records) for records in read.values()) < RECORDS:
    assert time.monotonic() < deadline, f"read {sum(map(len, read.values()))} of {RECORDS}"
    for _, records in consumer.poll(timeout_ms=1000).items():
        for record in records:
            read[record.partition].append(
                (record.key, record.value, [(name, value) for name, value in record.headers]))
for partition in range(partition_count):
    assert read[partition] == expected[partition], (
        f"partition {partition}: read {read[partition][:3]}..., expected {expected[partition][:3]}...")
for partition in partitions:
    assert consumer.position(partition) == ends[partition], (partition, consumer.position(partition), ends)
consumer.close()
print("kafka-python round trip: all passed")
