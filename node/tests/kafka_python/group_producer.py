"""The producer of the group scenario (confluent-kafka): an idempotent producer (acks=all)
writes COUNT keyed records `record-N`, paced over a few seconds so that members join and leave
while it runs; exits nonzero unless every record is delivered.

Usage: group_producer.py BOOTSTRAP TOPIC COUNT
"""

import sys
import time

from confluent_kafka import Producer

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
producer = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
})
failed = []
delivered = [0]


def report(error, message):
    if error is not None:
        failed.append(str(error))
    else:
        delivered[0] += 1


for number in range(count):
    producer.produce(topic, key=f"customer-{number % 17}", value=f"record-{number}",
                     on_delivery=report)
    producer.poll(0)
    if number % 100 == 99:
        time.sleep(0.1)
left = producer.flush(60)
assert left == 0, f"{left} records not delivered in time"
assert not failed, f"delivery failures: {failed[:5]}"
assert delivered[0] == count, (delivered[0], count)
print(f"delivered {count}", flush=True)
