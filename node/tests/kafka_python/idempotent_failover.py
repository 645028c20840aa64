"""An idempotent confluent-kafka producer (enable.idempotence, acks=all) writing to a 3-node
Cairn cluster while the leader of partition 0 is killed (SIGKILL) mid-stream. An
assign-mode consumer reads all along (through the new leader epoch), and another reads every
partition to its end afterwards. Each must read every record whose delivery was reported
exactly once, and no record twice. Exits nonzero on the first violation.

Usage: idempotent_failover.py BOOTSTRAP TOPIC NODE_PIDS   (NODE_PIDS: "1=PID,2=PID,3=PID")
"""

import os
import signal
import sys
import time
from collections import Counter

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

RECORDS = 6000
KILL_AFTER_DELIVERED = 1000
FLUSH_TIMEOUT_S = 120
READ_TIMEOUT_S = 120

bootstrap, topic, pids_arg = sys.argv[1], sys.argv[2], sys.argv[3]
pids = {int(node): int(pid) for node, pid in (pair.split("=") for pair in pids_arg.split(","))}

# KAFKA_DEBUG=eos,msg,broker,protocol (librdkafka's debug contexts) logs to stderr.
debug = {"debug": os.environ["KAFKA_DEBUG"]} if os.environ.get("KAFKA_DEBUG") else {}
producer = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 90000,
    **debug,
})

delivered = set()
failed = []


def on_delivery(error, message):
    record_id = message.value().decode()
    if error is None:
        delivered.add(record_id)
    else:
        failed.append((record_id, error))


killed = None


def kill_leader():
    """SIGKILLs the leader of partition 0, with records still in flight."""
    metadata = producer.list_topics(topic=topic, timeout=30)
    leader = metadata.topics[topic].partitions[0].leader
    assert leader in pids, f"partition 0 led by {leader}, not one of {sorted(pids)}"
    os.kill(pids[leader], signal.SIGKILL)
    in_flight = produced - len(delivered) - len(failed)
    print(f"killed node {leader} (pid {pids[leader]}), the leader of partition 0, after "
          f"{len(delivered)} deliveries with {in_flight} records in flight", flush=True)
    return leader


def assigned_consumer():
    """An assign-mode consumer of every partition from the beginning. confluent-kafka wants a
    group id, but with assign() and no commits no group coordinator is used."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "unused-assign-only",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        **debug,
    })
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions])
    return consumer


def take(consumer, seen, positions, timeout_s):
    """Reads at most one record into `seen` (count by id) and `positions`."""
    message = consumer.poll(timeout_s)
    if message is None:
        return
    if message.error():
        if message.error().code() == KafkaError._PARTITION_EOF:
            return
        raise AssertionError(f"consume error: {message.error()}")
    positions[message.partition()] = message.offset() + 1
    seen[message.value().decode()] += 1


def read_to_end(consumer, seen, positions, ends):
    """Reads until every partition's position reaches its end (a log may end in an epoch
    marker, which a consumer skips: its position passes it)."""
    deadline = time.monotonic() + READ_TIMEOUT_S

    def at_end(partition):
        if positions[partition] >= ends[partition]:
            return True
        position = consumer.position([TopicPartition(topic, partition)])[0].offset
        return position >= ends[partition]

    while not all(at_end(partition) for partition in partitions):
        assert time.monotonic() < deadline, (
            f"not read to the end within {READ_TIMEOUT_S} s: {positions} of {ends}")
        take(consumer, seen, positions, 0.5)


def check(what, seen):
    duplicates = {record_id: count for record_id, count in seen.items() if count > 1}
    missing = delivered - set(seen)
    assert not duplicates, (
        f"{what}: {len(duplicates)} records read more than once: {sorted(duplicates)[:10]}")
    assert not missing, f"{what}: {len(missing)} delivered records not read: {sorted(missing)[:10]}"
    print(f"{what}: {len(seen)} records read once each, {len(delivered)} delivered", flush=True)


# The live consumer reads while the records are written and through the leader's death (a new
# leader epoch: librdkafka validates its position with OffsetForLeaderEpoch); the late one
# reads everything afterwards from the survivors.
partitions = sorted(producer.list_topics(topic=topic, timeout=30).topics[topic].partitions)
live = assigned_consumer()
live_seen = Counter()
live_positions = {partition: 0 for partition in partitions}

produced = 0
for number in range(RECORDS):
    # The kill comes once some records are delivered, while later ones are in flight (no
    # flush first): the producer retries batches whose writes may have landed, and
    # idempotence must keep them single.
    if killed is None and len(delivered) >= KILL_AFTER_DELIVERED:
        killed = kill_leader()
    if killed is None and number == RECORDS // 2:
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while len(delivered) < KILL_AFTER_DELIVERED:
            assert time.monotonic() < deadline, f"only {len(delivered)} delivered"
            producer.poll(0.1)
        killed = kill_leader()
    while True:
        try:
            producer.produce(topic, key=f"key-{number % 10}", value=f"id-{number}",
                             on_delivery=on_delivery)
            produced += 1
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)
    take(live, live_seen, live_positions, 0)
remaining = producer.flush(FLUSH_TIMEOUT_S)
assert remaining == 0, f"{remaining} records still undelivered after {FLUSH_TIMEOUT_S} s"
print(f"delivered {len(delivered)}, failed {len(failed)}", flush=True)
# An idempotent producer without transactions may fail records (reported, never written
# twice); with a majority alive it should deliver nearly all. Failures are printed.
for record_id, error in failed[:10]:
    print(f"failed: {record_id}: {error}")
assert killed is not None
assert len(delivered) > 0




def high_watermark(partition):
    """The partition's end. A request in flight to the killed node fails locally once
    librdkafka drops it (it is no longer in Metadata): asked again, a bounded number of
    times."""
    for attempt in range(10):
        try:
            return live.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)[1]
        except KafkaException as error:
            print(f"watermarks of partition {partition}: {error}; again", flush=True)
            time.sleep(0.5)
    raise AssertionError(f"no watermarks for partition {partition}")


ends = {partition: high_watermark(partition) for partition in partitions}
print("partition ends", ends, flush=True)
read_to_end(live, live_seen, live_positions, ends)
live.close()
check("live consumer", live_seen)

late = assigned_consumer()
late_seen = Counter()
read_to_end(late, late_seen, {partition: 0 for partition in partitions}, ends)
late.close()
check("late consumer", late_seen)
print("idempotent failover: all passed")
