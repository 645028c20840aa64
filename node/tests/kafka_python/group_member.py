"""One member of a consumer group (confluent-kafka), as an application runs it: it polls,
records every message it processes, and commits each one synchronously before the next, so a
partition handed to another member resumes right after the last record committed here (a
commit refused because a rebalance completed meanwhile is dropped: at-least-once).

Usage: group_member.py BOOTSTRAP TOPIC GROUP PROTOCOL OUT STOP_FILE
  PROTOCOL  classic (JoinGroup/SyncGroup) or consumer (KIP-848)
  OUT       one line per processed message: partition offset value
  STOP_FILE once it holds `now`, the member leaves the group (close) at once; once it holds
            anything else, after 2 s without messages

Prints `assigned P,P,...` whenever its assignment changes. Exits nonzero after 240 s.
"""

import os
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException

bootstrap, topic, group, protocol, out_path, stop_file = sys.argv[1:7]
HARD_LIMIT_S = 240
IDLE_EXIT_S = 2.0

config = {
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "group.protocol": protocol,
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
}
if protocol == "classic":
    config.update({"session.timeout.ms": 10000, "heartbeat.interval.ms": 500})
consumer = Consumer(config)
owned = set()


def show(assignment):
    print("assigned " + ",".join(str(p) for p in sorted(owned)), flush=True)


def on_assign(consumer, partitions):
    owned.update(p.partition for p in partitions)
    show(owned)


def on_revoke(consumer, partitions):
    owned.difference_update(p.partition for p in partitions)
    show(owned)


def commit(message):
    """Commits `message` synchronously; as the Java client does, a commit refused because the
    member's epoch moved on (a KIP-848 reconciliation in between) is retried with the new one."""
    for attempt in range(50):
        try:
            consumer.commit(message=message, asynchronous=False)
            return
        except KafkaException as error:
            code = error.args[0].code()
            if code in (KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
                        KafkaError.REBALANCE_IN_PROGRESS):
                # A classic rebalance completed meanwhile: the partition may belong to another
                # member now, which resumes from the last commit that counted (Kafka's
                # at-least-once across rebalances).
                print("commit lost to a rebalance:", error.args[0], flush=True)
                return
            if code != KafkaError.STALE_MEMBER_EPOCH and not error.args[0].retriable():
                raise
            # librdkafka's own thread heartbeats and learns the new epoch meanwhile.
            print("commit retried:", error.args[0], flush=True)
            time.sleep(0.1)
    raise AssertionError(f"commit of {message.partition()}@{message.offset()} kept failing")


consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
started = time.monotonic()
last_message = time.monotonic()
with open(out_path, "w") as out:
    while True:
        assert time.monotonic() - started < HARD_LIMIT_S, "still running after the hard limit"
        stop = open(stop_file).read().strip() if os.path.exists(stop_file) else None
        if stop == "now":
            break
        message = consumer.poll(0.2)
        if message is None:
            if stop is not None and time.monotonic() - last_message > IDLE_EXIT_S:
                break
            continue
        if message.error():
            # Retriable conditions (a coordinator moving, a rebalance) are reported and
            # handled by librdkafka itself; anything fatal ends the member.
            if message.error().fatal():
                raise KafkaException(message.error())
            print("error", message.error(), flush=True)
            continue
        last_message = time.monotonic()
        out.write(f"{message.partition()} {message.offset()} {message.value().decode()}\n")
        out.flush()
        commit(message)
consumer.close()
print("left the group", flush=True)
