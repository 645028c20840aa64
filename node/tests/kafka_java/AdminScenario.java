// The Java client's Admin against a 3-node Cairn cluster: create, list and describe topics,
// describe and alter configs, add partitions, describe the cluster, delete; and the refusals a
// Kafka broker gives for bad input, each with the exception Kafka's own brokers cause. Exits
// nonzero on the first thing that is not as Kafka would answer.
//
// Usage: java -cp LIB/* AdminScenario.java BOOTSTRAP EXPECTED_BROKER_COUNT

import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.AlterConfigsOptions;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.CreatePartitionsOptions;
import org.apache.kafka.clients.admin.CreateTopicsOptions;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.NewPartitions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.KafkaFuture;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.errors.InvalidConfigurationException;
import org.apache.kafka.common.errors.InvalidPartitionsException;
import org.apache.kafka.common.errors.InvalidReplicationFactorException;
import org.apache.kafka.common.errors.InvalidTopicException;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;

public class AdminScenario {
    static final long TIMEOUT_S = 30;
    static final long SETTLE_MS = 30_000;

    static Admin admin;

    public static void main(String[] args) {
        try {
            run(args);
            System.out.println("admin: all passed");
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

    static <T> T result(KafkaFuture<T> future) throws Exception {
        return future.get(TIMEOUT_S, TimeUnit.SECONDS);
    }

    /** The future fails with `expected` (Kafka's exception for the error code). */
    static void refused(KafkaFuture<?> future, Class<? extends Throwable> expected, String what) throws Exception {
        try {
            future.get(TIMEOUT_S, TimeUnit.SECONDS);
        } catch (ExecutionException error) {
            Throwable cause = error.getCause();
            check(expected.isInstance(cause), what + ": expected " + expected.getSimpleName() + ", got " + cause);
            System.out.println("ok: " + what + " refused: " + cause.getClass().getSimpleName() + ": " + cause.getMessage());
            return;
        }
        throw new AssertionError(what + ": accepted, expected " + expected.getSimpleName());
    }

    static void eventually(String what, BooleanSupplier condition) throws Exception {
        long deadline = System.currentTimeMillis() + SETTLE_MS;
        while (!condition.getAsBoolean()) {
            check(System.currentTimeMillis() < deadline, what + ": not within " + SETTLE_MS + " ms");
            Thread.sleep(200);
        }
    }

    /** The topic's partition count, or -1 when it is not there. */
    static int partitionsOf(String topic) {
        try {
            TopicDescription description = result(admin.describeTopics(List.of(topic)).topicNameValues().get(topic));
            return description.partitions().size();
        } catch (ExecutionException error) {
            if (error.getCause() instanceof UnknownTopicOrPartitionException) {
                return -1;
            }
            throw new RuntimeException(error);
        } catch (Exception error) {
            throw new RuntimeException(error);
        }
    }

    static Config topicConfigs(String topic) throws Exception {
        ConfigResource resource = new ConfigResource(ConfigResource.Type.TOPIC, topic);
        return result(admin.describeConfigs(List.of(resource)).values().get(resource));
    }

    /** Waits until `topic`'s config `name` reads `value`. DescribeConfigs goes to any node,
     *  which may not have applied a change the __meta leader just made (as a Kafka broker's
     *  metadata cache lags its controller). */
    static void configEventually(String topic, String name, String value) throws Exception {
        eventually(topic + " " + name + " = " + value, () -> {
            try {
                ConfigEntry entry = topicConfigs(topic).get(name);
                return entry != null && value.equals(entry.value());
            } catch (Exception error) {
                throw new RuntimeException(error);
            }
        });
    }

    static KafkaFuture<Void> alter(String topic, boolean validateOnly, AlterConfigOp... ops) {
        ConfigResource resource = new ConfigResource(ConfigResource.Type.TOPIC, topic);
        return admin.incrementalAlterConfigs(Map.of(resource, List.of(ops)),
            new AlterConfigsOptions().validateOnly(validateOnly)).values().get(resource);
    }

    static AlterConfigOp set(String name, String value) {
        return new AlterConfigOp(new ConfigEntry(name, value), AlterConfigOp.OpType.SET);
    }

    static void run(String[] args) throws Exception {
        String bootstrap = args[0];
        int brokerCount = Integer.parseInt(args[1]);
        Properties config = new Properties();
        config.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        config.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
        admin = Admin.create(config);

        // createTopics: two topics, one with configs.
        Map<String, KafkaFuture<Void>> created = admin.createTopics(List.of(
            new NewTopic("java-admin", 2, (short) 3).configs(Map.of("retention.ms", "3600000", "cleanup.policy", "delete")),
            new NewTopic("java-other", 1, (short) 1))).values();
        for (Map.Entry<String, KafkaFuture<Void>> entry : created.entrySet()) {
            result(entry.getValue());
            System.out.println("ok: created " + entry.getKey());
        }
        eventually("java-admin with 2 partitions", () -> partitionsOf("java-admin") == 2);
        eventually("java-other with 1 partition", () -> partitionsOf("java-other") == 1);

        // listTopics: both, without internal topics.
        Set<String> names = result(admin.listTopics().names());
        check(names.containsAll(Set.of("java-admin", "java-other")), "listed " + names);
        check(names.stream().noneMatch(name -> name.startsWith("__")), "internal topics listed: " + names);
        System.out.println("ok: listTopics " + names);

        // describeTopics: partitions with leaders among the replicas, 3 replicas, a topic id.
        TopicDescription described = result(admin.describeTopics(List.of("java-admin")).topicNameValues().get("java-admin"));
        check(described.name().equals("java-admin"), "name " + described.name());
        check(!described.isInternal(), "java-admin internal");
        check(described.partitions().size() == 2, "partitions " + described.partitions());
        for (TopicPartitionInfo partition : described.partitions()) {
            check(partition.replicas().size() == 3, "replicas " + partition);
            check(partition.leader() != null && partition.replicas().contains(partition.leader()), "leader " + partition);
            check(!partition.isr().isEmpty(), "isr " + partition);
        }
        check(!described.topicId().toString().equals("AAAAAAAAAAAAAAAAAAAAAA"), "no topic id");
        System.out.println("ok: describeTopics " + described.topicId());
        TopicDescription byId = result(admin.describeTopics(
            org.apache.kafka.common.TopicCollection.ofTopicIds(List.of(described.topicId()))).topicIdValues().get(described.topicId()));
        check(byId.name().equals("java-admin"), "described by id: " + byId.name());
        System.out.println("ok: describeTopics by id");

        // describeConfigs: Cairn's configs under Kafka's names, with their sources.
        configEventually("java-admin", "retention.ms", "3600000");
        Config configs = topicConfigs("java-admin");
        ConfigEntry retention = configs.get("retention.ms");
        check(retention != null && retention.value().equals("3600000"), "retention.ms " + retention);
        check(retention.source() == ConfigEntry.ConfigSource.DYNAMIC_TOPIC_CONFIG, "retention.ms source " + retention.source());
        check(!retention.isReadOnly(), "retention.ms read-only");
        check(configs.get("retention.bytes").value().equals("-1"), "retention.bytes " + configs.get("retention.bytes"));
        check(configs.get("cleanup.policy").value().equals("delete"), "cleanup.policy " + configs.get("cleanup.policy"));
        check(!configs.get("cleanup.policy").isReadOnly(), "cleanup.policy read-only");
        check(configs.get("max.message.bytes") != null, "no max.message.bytes");
        System.out.println("ok: describeConfigs topic " + configs.entries().size() + " entries");

        DescribeClusterResult cluster = admin.describeCluster();
        Node controller = result(cluster.controller());
        ConfigResource broker = new ConfigResource(ConfigResource.Type.BROKER, controller.idString());
        Config brokerConfigs = result(admin.describeConfigs(List.of(broker)).values().get(broker));
        check(brokerConfigs.get("broker.id").value().equals(controller.idString()), "broker.id " + brokerConfigs.get("broker.id"));
        System.out.println("ok: describeConfigs broker " + brokerConfigs.entries().size() + " entries");

        // incrementalAlterConfigs: SET and DELETE, then describe shows them.
        result(alter("java-admin", false, set("retention.bytes", "1048576"),
            new AlterConfigOp(new ConfigEntry("retention.ms", null), AlterConfigOp.OpType.DELETE)));
        configEventually("java-admin", "retention.bytes", "1048576");
        configEventually("java-admin", "retention.ms", "-1");
        System.out.println("ok: incrementalAlterConfigs");

        // A refused alter changes nothing, not even the valid config beside it.
        refused(alter("java-admin", false, set("retention.bytes", "2097152"), set("segment.ms", "1000")),
            InvalidConfigurationException.class, "an unknown config");
        refused(alter("java-admin", false, set("cleanup.policy", "compacted")),
            InvalidConfigurationException.class, "an unknown cleanup.policy");
        refused(alter("java-admin", false, set("retention.ms", "soon")),
            InvalidConfigurationException.class, "a retention that is no number");
        refused(alter("java-admin", false, new AlterConfigOp(new ConfigEntry("retention.bytes", "1"), AlterConfigOp.OpType.APPEND)),
            InvalidConfigurationException.class, "APPEND to a config that is no list");
        result(alter("java-admin", true, set("retention.bytes", "4096")));
        configEventually("java-admin", "retention.bytes", "1048576");
        System.out.println("ok: refused and validate-only alters change nothing");

        // cleanup.policy is a list: APPEND and SUBTRACT add and take away policies.
        result(alter("java-admin", false, new AlterConfigOp(new ConfigEntry("cleanup.policy", "compact"), AlterConfigOp.OpType.APPEND)));
        configEventually("java-admin", "cleanup.policy", "compact,delete");
        result(alter("java-admin", false, new AlterConfigOp(new ConfigEntry("cleanup.policy", "compact"), AlterConfigOp.OpType.SUBTRACT)));
        configEventually("java-admin", "cleanup.policy", "delete");
        refused(alter("java-admin", false, new AlterConfigOp(new ConfigEntry("cleanup.policy", "delete"), AlterConfigOp.OpType.SUBTRACT)),
            InvalidConfigurationException.class, "SUBTRACT of the last policy");
        System.out.println("ok: APPEND and SUBTRACT on cleanup.policy");

        // createPartitions: grow, validate only, and the refusals.
        result(admin.createPartitions(Map.of("java-admin", NewPartitions.increaseTo(4))).values().get("java-admin"));
        eventually("java-admin grown to 4 partitions", () -> partitionsOf("java-admin") == 4);
        result(admin.createPartitions(Map.of("java-admin", NewPartitions.increaseTo(6)),
            new CreatePartitionsOptions().validateOnly(true)).values().get("java-admin"));
        eventually("java-admin still 4 partitions after validate-only", () -> partitionsOf("java-admin") == 4);
        refused(admin.createPartitions(Map.of("java-admin", NewPartitions.increaseTo(3))).values().get("java-admin"),
            InvalidPartitionsException.class, "fewer partitions");
        refused(admin.createPartitions(Map.of("java-admin", NewPartitions.increaseTo(4))).values().get("java-admin"),
            InvalidPartitionsException.class, "the same partition count");
        refused(admin.createPartitions(Map.of("java-missing", NewPartitions.increaseTo(2))).values().get("java-missing"),
            UnknownTopicOrPartitionException.class, "partitions of an unknown topic");
        eventually("java-admin still 4 partitions after the refusals", () -> partitionsOf("java-admin") == 4);
        System.out.println("ok: createPartitions");

        // describeCluster: the cluster id, every broker, the controller among them.
        String clusterId = result(cluster.clusterId());
        Collection<Node> nodes = result(cluster.nodes());
        check(clusterId.equals("cairn"), "cluster id " + clusterId);
        check(nodes.size() == brokerCount, "nodes " + nodes);
        check(nodes.contains(controller), "controller " + controller + " not among " + nodes);
        for (Node node : nodes) {
            check(node.host().equals("127.0.0.1") && node.port() > 0, "node " + node);
        }
        System.out.println("ok: describeCluster " + clusterId + " controller " + controller + " nodes " + nodes);

        // Bad input: each refused with Kafka's exception, nothing created.
        refused(admin.createTopics(List.of(new NewTopic("java-admin", 1, (short) 1))).values().get("java-admin"),
            TopicExistsException.class, "creating an existing topic");
        refused(admin.createTopics(List.of(new NewTopic("java-compacted", 1, (short) 1)
                .configs(Map.of("cleanup.policy", "tidy")))).values().get("java-compacted"),
            InvalidConfigurationException.class, "an unknown cleanup.policy");
        refused(admin.createTopics(List.of(new NewTopic("java-bad name!", 1, (short) 1))).values().get("java-bad name!"),
            InvalidTopicException.class, "a topic name with a space");
        refused(admin.createTopics(List.of(new NewTopic("java-no-partitions", 0, (short) 1))).values().get("java-no-partitions"),
            InvalidPartitionsException.class, "zero partitions");
        refused(admin.createTopics(List.of(new NewTopic("java-too-many-replicas", 1, (short) (brokerCount + 2))))
                .values().get("java-too-many-replicas"),
            InvalidReplicationFactorException.class, "more replicas than brokers");
        result(admin.createTopics(List.of(new NewTopic("java-validated", 1, (short) 1)),
            new CreateTopicsOptions().validateOnly(true)).values().get("java-validated"));
        for (String topic : List.of("java-compacted", "java-no-partitions", "java-too-many-replicas", "java-validated")) {
            check(partitionsOf(topic) == -1, "a refused or validate-only topic was created: " + topic);
        }
        refused(admin.describeConfigs(List.of(new ConfigResource(ConfigResource.Type.TOPIC, "java-missing")))
                .values().get(new ConfigResource(ConfigResource.Type.TOPIC, "java-missing")),
            UnknownTopicOrPartitionException.class, "configs of an unknown topic");
        refused(admin.describeTopics(List.of("java-missing")).topicNameValues().get("java-missing"),
            UnknownTopicOrPartitionException.class, "describing an unknown topic");
        refused(admin.deleteTopics(List.of("java-missing")).topicNameValues().get("java-missing"),
            UnknownTopicOrPartitionException.class, "deleting an unknown topic");

        // deleteTopics: both gone.
        for (Map.Entry<String, KafkaFuture<Void>> entry : admin.deleteTopics(List.of("java-admin", "java-other")).topicNameValues().entrySet()) {
            result(entry.getValue());
            System.out.println("ok: deleted " + entry.getKey());
        }
        eventually("deleted topics no longer listed", () -> {
            try {
                Set<String> listed = result(admin.listTopics().names());
                return !listed.contains("java-admin") && !listed.contains("java-other");
            } catch (Exception error) {
                throw new RuntimeException(error);
            }
        });
        admin.close();
    }
}
