// The Java client's consumer group against a 3-node Cairn cluster (the classic group protocol).
// Two consumers of one group subscribe to a 4-partition topic and split its partitions; they
// read every record exactly once and commit with commitSync; Admin sees the committed offsets
// at the partitions' ends. Then, with more records written, a third consumer of the group
// resumes from the committed offsets and reads exactly the new records. Exits nonzero on the
// first violation.
//
// Usage: java -cp LIB/* GroupScenario.java BOOTSTRAP TOPIC

import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class GroupScenario {
    static final int PARTITIONS = 4;
    static final int FIRST = 400;
    static final int SECOND = 100;
    static final long SETTLE_MS = 60_000;

    static String bootstrap;
    static String topic;
    static String group;

    public static void main(String[] args) {
        try {
            run(args);
            System.out.println("group: all passed");
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

    static void eventually(String what, BooleanSupplier condition) throws InterruptedException {
        long deadline = System.currentTimeMillis() + SETTLE_MS;
        while (!condition.getAsBoolean()) {
            check(System.currentTimeMillis() < deadline, what + ": not within " + SETTLE_MS + " ms");
            Thread.sleep(100);
        }
    }

    static void produce(int from, int count) throws Exception {
        Properties config = new Properties();
        config.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        config.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        config.put(ProducerConfig.ACKS_CONFIG, "all");
        config.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        config.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(config)) {
            List<java.util.concurrent.Future<?>> sends = new ArrayList<>();
            for (int number = from; number < from + count; number++) {
                sends.add(producer.send(new ProducerRecord<>(topic, "key-" + (number % 8), "id-" + number)));
            }
            for (java.util.concurrent.Future<?> send : sends) {
                send.get(60, TimeUnit.SECONDS);
            }
        }
        System.out.println("produced " + count + " records from id-" + from);
    }

    /** One group member polling in its own thread, committing with commitSync after each poll. */
    static class Member implements Runnable {
        final String name;
        final Map<String, Integer> seen;
        final Map<String, Integer> mine = new ConcurrentHashMap<>();
        /** Per partition, the offset after the last record read (what a commit names). */
        final Map<Integer, Long> next;
        volatile Set<Integer> assignment = Set.of();
        volatile boolean assigned;
        volatile boolean stop;
        volatile Throwable error;
        final Thread thread;

        Member(String name, Map<String, Integer> seen, Map<Integer, Long> next) {
            this.name = name;
            this.seen = seen;
            this.next = next;
            this.thread = new Thread(this, name);
            thread.start();
        }

        public void run() {
            Properties config = new Properties();
            config.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            config.put(ConsumerConfig.GROUP_ID_CONFIG, group);
            config.put(ConsumerConfig.CLIENT_ID_CONFIG, name);
            config.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
            config.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
            config.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
            config.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
            try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(config)) {
                consumer.subscribe(List.of(topic), new ConsumerRebalanceListener() {
                    public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
                        // Eager or cooperative: what was read is committed before it moves.
                        consumer.commitSync(Duration.ofSeconds(30));
                    }

                    public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
                        Set<Integer> now = new TreeSet<>();
                        for (TopicPartition partition : consumer.assignment()) {
                            now.add(partition.partition());
                        }
                        assignment = now;
                        assigned = true;
                        System.out.println(name + " assigned " + now);
                    }
                });
                while (!stop) {
                    var records = consumer.poll(Duration.ofMillis(200));
                    for (ConsumerRecord<String, String> record : records) {
                        seen.merge(record.value(), 1, Integer::sum);
                        mine.merge(record.value(), 1, Integer::sum);
                        next.merge(record.partition(), record.offset() + 1, Math::max);
                    }
                    if (!records.isEmpty()) {
                        consumer.commitSync(Duration.ofSeconds(30));
                    }
                }
            } catch (Throwable error) {
                this.error = error;
                error.printStackTrace();
            }
        }

        void close() throws InterruptedException {
            stop = true;
            thread.join(60_000);
            check(!thread.isAlive(), name + " did not close");
            if (error != null) {
                throw new AssertionError(name, error);
            }
        }
    }

    static void expectExactly(String what, Map<String, Integer> seen, int from, int count) {
        List<String> duplicates = new ArrayList<>();
        seen.forEach((id, times) -> {
            if (times > 1) {
                duplicates.add(id);
            }
        });
        check(duplicates.isEmpty(), what + ": read more than once: " + duplicates);
        for (int number = from; number < from + count; number++) {
            check(seen.containsKey("id-" + number), what + ": id-" + number + " not read");
        }
        check(seen.size() == count, what + ": read " + seen.size() + ", expected " + count);
        System.out.println(what + ": " + count + " records read once each");
    }

    static void run(String[] args) throws Exception {
        bootstrap = args[0];
        topic = args[1];
        group = topic + "-group";
        Properties adminConfig = new Properties();
        adminConfig.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(adminConfig)) {
            admin.createTopics(List.of(new NewTopic(topic, PARTITIONS, (short) 3))).all().get(30, TimeUnit.SECONDS);

            // Two members; the records come once both hold a share of the partitions.
            Map<String, Integer> seen = new ConcurrentHashMap<>();
            Map<Integer, Long> next = new ConcurrentHashMap<>();
            Member first = new Member("consumer-1", seen, next);
            eventually("consumer-1 assigned", () -> first.assigned || first.error != null);
            Member second = new Member("consumer-2", seen, next);
            eventually("the partitions split between both members", () -> {
                check(first.error == null && second.error == null, "a member failed");
                Set<Integer> all = new TreeSet<>(first.assignment);
                all.addAll(second.assignment);
                return !first.assignment.isEmpty() && !second.assignment.isEmpty()
                    && first.assignment.size() + second.assignment.size() == PARTITIONS && all.size() == PARTITIONS;
            });
            System.out.println("split: consumer-1 " + first.assignment + ", consumer-2 " + second.assignment);

            produce(0, FIRST);
            eventually(FIRST + " records read", () -> seen.size() >= FIRST || first.error != null || second.error != null);
            first.close();
            second.close();
            expectExactly("the group", seen, 0, FIRST);
            check(!first.mine.isEmpty() && !second.mine.isEmpty(),
                "both members read: " + first.mine.size() + " and " + second.mine.size());

            // The committed offsets (OffsetFetch) are where the members stopped reading, at or
            // below the partitions' ends (a leader change appends an epoch marker, a control
            // batch, after the last record).
            Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
            for (int partition = 0; partition < PARTITIONS; partition++) {
                latest.put(new TopicPartition(topic, partition), OffsetSpec.latest());
            }
            Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> ends =
                admin.listOffsets(latest).all().get(30, TimeUnit.SECONDS);
            Map<TopicPartition, OffsetAndMetadata> committed =
                admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get(30, TimeUnit.SECONDS);
            for (TopicPartition partition : latest.keySet()) {
                long read = next.getOrDefault(partition.partition(), -1L);
                check(committed.get(partition) != null
                        && committed.get(partition).offset() == read
                        && read <= ends.get(partition).offset(),
                    partition + ": committed " + committed.get(partition) + ", read up to " + read
                        + ", end " + ends.get(partition).offset());
            }
            System.out.println("committed where the members stopped: " + committed + ", ends " + ends);

            // A third member resumes from the committed offsets: only the new records.
            produce(FIRST, SECOND);
            Map<String, Integer> resumed = new ConcurrentHashMap<>();
            Member third = new Member("consumer-3", resumed, new ConcurrentHashMap<>());
            eventually(SECOND + " new records read", () -> resumed.size() >= SECOND || third.error != null);
            third.close();
            expectExactly("the resumed member", resumed, FIRST, SECOND);

            admin.deleteTopics(List.of(topic)).all().get(30, TimeUnit.SECONDS);
        }
    }
}
