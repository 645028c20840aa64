// The Java client's idempotent producer (enable.idempotence=true, acks=all) writing to a 3-node
// Cairn cluster while the leader of partition 0 is killed (SIGKILL) mid-stream. A consumer in
// assign mode reads all along (through the new leader epoch: the client validates its position
// with OffsetForLeaderEpoch), another reads every partition to its end afterwards. Each must
// read every record whose delivery was acknowledged exactly once, and none twice. Exits
// nonzero on the first violation.
//
// Usage: java -cp LIB/* IdempotentFailover.java BOOTSTRAP TOPIC NODE_PIDS
//        (NODE_PIDS: "1=PID,2=PID,3=PID")

import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class IdempotentFailover {
    static final int RECORDS = 6000;
    static final int KILL_AFTER_DELIVERED = 1000;
    static final long FLUSH_TIMEOUT_MS = 120_000;
    static final long READ_TIMEOUT_MS = 120_000;

    static String bootstrap;
    static String topic;
    static final Set<String> delivered = ConcurrentHashMap.newKeySet();
    static final Map<String, String> failed = new ConcurrentHashMap<>();

    public static void main(String[] args) {
        try {
            run(args);
            System.out.println("idempotent failover: all passed");
            System.exit(0);
        } catch (Throwable error) {
            error.printStackTrace();
            System.exit(1);
        }
    }

    static void check(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError(what);
        }
    }

    static void run(String[] args) throws Exception {
        bootstrap = args[0];
        topic = args[1];
        Map<Integer, Long> pids = new HashMap<>();
        for (String pair : args[2].split(",")) {
            String[] parts = pair.split("=");
            pids.put(Integer.parseInt(parts[0]), Long.parseLong(parts[1]));
        }

        Properties config = new Properties();
        config.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        config.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        config.put(ProducerConfig.ACKS_CONFIG, "all");
        config.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        config.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "90000");
        config.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        config.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        KafkaProducer<String, String> producer = new KafkaProducer<>(config);

        List<TopicPartition> partitions = new ArrayList<>();
        for (PartitionInfo info : producer.partitionsFor(topic)) {
            partitions.add(new TopicPartition(topic, info.partition()));
        }
        check(partitions.size() == 3, "3 partitions, got " + partitions);

        // The live consumer reads in its own thread while the records are written and through
        // the leader's death; it stops once the main thread has set the partitions' ends and
        // it has reached them.
        Reader live = new Reader("live consumer", partitions);
        Thread liveThread = new Thread(live::readUntilEnds, "live-consumer");
        liveThread.start();

        Integer killed = null;
        AtomicInteger sent = new AtomicInteger();
        for (int number = 0; number < RECORDS; number++) {
            // The kill comes once some records are delivered, while later ones are in flight:
            // the producer retries batches whose writes may have landed, and idempotence must
            // keep them single.
            if (killed == null && delivered.size() >= KILL_AFTER_DELIVERED) {
                killed = killLeader(producer, pids, sent.get());
            }
            if (killed == null && number == RECORDS / 2) {
                long deadline = System.currentTimeMillis() + FLUSH_TIMEOUT_MS;
                while (delivered.size() < KILL_AFTER_DELIVERED) {
                    check(System.currentTimeMillis() < deadline, "only " + delivered.size() + " delivered");
                    Thread.sleep(10);
                }
                killed = killLeader(producer, pids, sent.get());
            }
            String id = "id-" + number;
            producer.send(new ProducerRecord<>(topic, "key-" + (number % 10), id), (metadata, error) -> {
                if (error == null) {
                    delivered.add(id);
                } else {
                    failed.put(id, error.toString());
                }
            });
            sent.incrementAndGet();
            // Spread the stream over time, so that the kill lands while records are in flight.
            if (number % 100 == 99) {
                Thread.sleep(20);
            }
        }
        long flushStart = System.currentTimeMillis();
        producer.flush();
        System.out.printf("delivered %d, failed %d (flushed in %d ms)%n", delivered.size(), failed.size(),
            System.currentTimeMillis() - flushStart);
        // An idempotent producer without transactions may fail records (reported, never written
        // twice); with a majority alive it should deliver nearly all. Failures are printed.
        failed.entrySet().stream().limit(10).forEach(entry ->
            System.out.println("failed: " + entry.getKey() + ": " + entry.getValue()));
        check(killed != null, "no leader killed");
        check(delivered.size() + failed.size() == RECORDS, "every send answered");
        check(!delivered.isEmpty(), "nothing delivered");
        producer.close(Duration.ofSeconds(10));

        Map<TopicPartition, Long> ends = endOffsets(partitions);
        System.out.println("partition ends " + ends);
        live.ends = ends;
        liveThread.join(READ_TIMEOUT_MS + 10_000);
        check(!liveThread.isAlive(), "the live consumer did not finish");
        if (live.error != null) {
            throw new AssertionError("live consumer", live.error);
        }
        live.checkExactlyOnce();

        Reader late = new Reader("late consumer", partitions);
        late.ends = ends;
        late.readUntilEnds();
        if (late.error != null) {
            throw new AssertionError("late consumer", late.error);
        }
        late.checkExactlyOnce();
    }

    /** SIGKILLs the leader of partition 0, with records still in flight. */
    static int killLeader(KafkaProducer<String, String> producer, Map<Integer, Long> pids, int sent) {
        int leader = -1;
        for (PartitionInfo info : producer.partitionsFor(topic)) {
            if (info.partition() == 0) {
                leader = info.leader().id();
            }
        }
        check(pids.containsKey(leader), "partition 0 led by " + leader + ", not one of " + pids.keySet());
        long pid = pids.get(leader);
        boolean signalled = ProcessHandle.of(pid).map(ProcessHandle::destroyForcibly).orElse(false);
        check(signalled, "node " + leader + " (pid " + pid + ") could not be killed");
        System.out.printf("killed node %d (pid %d), the leader of partition 0, after %d deliveries with %d records in flight%n",
            leader, pid, delivered.size(), sent - delivered.size() - failed.size());
        return leader;
    }

    /** Every partition's end (the high watermark), asked a bounded number of times. */
    static Map<TopicPartition, Long> endOffsets(List<TopicPartition> partitions) {
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(consumerConfig())) {
            return consumer.endOffsets(partitions, Duration.ofSeconds(60));
        }
    }

    static Properties consumerConfig() {
        // No group.id: assign() with explicit positions needs no coordinator and commits nothing.
        Properties config = new Properties();
        config.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        config.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        config.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        config.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        config.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        return config;
    }

    /** An assign-mode consumer of every partition from the beginning, counting what it reads. */
    static class Reader {
        final String name;
        final List<TopicPartition> partitions;
        final Map<String, Integer> seen = new HashMap<>();
        volatile Map<TopicPartition, Long> ends;
        volatile Throwable error;

        Reader(String name, List<TopicPartition> partitions) {
            this.name = name;
            this.partitions = partitions;
        }

        void readUntilEnds() {
            try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(consumerConfig())) {
                consumer.assign(partitions);
                consumer.seekToBeginning(partitions);
                long deadline = Long.MAX_VALUE;
                while (true) {
                    Map<TopicPartition, Long> ends = this.ends;
                    if (ends != null) {
                        if (deadline == Long.MAX_VALUE) {
                            deadline = System.currentTimeMillis() + READ_TIMEOUT_MS;
                        }
                        boolean atEnd = true;
                        for (TopicPartition partition : partitions) {
                            // A log may end in an epoch marker, which the consumer skips: its
                            // position passes it.
                            atEnd &= consumer.position(partition, Duration.ofSeconds(30)) >= ends.get(partition);
                        }
                        if (atEnd) {
                            return;
                        }
                        check(System.currentTimeMillis() < deadline,
                            name + ": not read to the end within " + READ_TIMEOUT_MS + " ms: " + ends);
                    }
                    for (ConsumerRecord<String, String> record : consumer.poll(Duration.ofMillis(200))) {
                        seen.merge(record.value(), 1, Integer::sum);
                    }
                }
            } catch (Throwable error) {
                this.error = error;
            }
        }

        void checkExactlyOnce() {
            List<String> duplicates = new ArrayList<>();
            seen.forEach((id, count) -> {
                if (count > 1) {
                    duplicates.add(id + " x" + count);
                }
            });
            List<String> missing = new ArrayList<>();
            for (String id : delivered) {
                if (!seen.containsKey(id)) {
                    missing.add(id);
                }
            }
            check(duplicates.isEmpty(), name + ": " + duplicates.size() + " records read more than once: "
                + duplicates.subList(0, Math.min(10, duplicates.size())));
            check(missing.isEmpty(), name + ": " + missing.size() + " delivered records not read: "
                + missing.subList(0, Math.min(10, missing.size())));
            System.out.printf("%s: %d records read once each, %d delivered%n", name, seen.size(), delivered.size());
        }
    }
}
