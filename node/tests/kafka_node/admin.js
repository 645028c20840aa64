// kafkajs' admin client against a 3-node Cairn cluster: createTopics (with configs),
// fetchTopicMetadata, listTopics, describeCluster, describeConfigs, createPartitions,
// fetchTopicOffsets, deleteTopics, and the refusals a Kafka broker gives for bad input.
// Exits nonzero on the first thing that is not as Kafka would answer.
//
// Usage: node admin.js BOOTSTRAP EXPECTED_BROKER_COUNT

'use strict'

const assert = require('node:assert/strict')
const { Kafka, logLevel, ConfigResourceTypes } = require('kafkajs')

const [bootstrap, brokerCountArg] = process.argv.slice(2)
const brokerCount = Number(brokerCountArg)
const SETTLE_MS = 30000

const kafka = new Kafka({
  clientId: 'cairn-kafkajs-admin',
  brokers: bootstrap.split(','),
  logLevel: process.env.KAFKAJS_LOG ? logLevel.DEBUG : logLevel.WARN,
  retry: { retries: 8 },
})
const admin = kafka.admin()

async function eventually (what, check) {
  const deadline = Date.now() + SETTLE_MS
  for (;;) {
    if (await check()) return
    assert.ok(Date.now() < deadline, `${what}: not within ${SETTLE_MS} ms`)
    await new Promise(resolve => setTimeout(resolve, 200))
  }
}

async function refused (promise, type, what) {
  try {
    await promise
  } catch (error) {
    // kafkajs wraps a retriable error, once its retries are spent, in the last one it got.
    const types = [error.type, error.cause?.type, ...(error.errors || []).map(inner => inner.type)]
    assert.ok(types.includes(type), `${what}: expected ${type}, got ${error} (${types})`)
    console.log(`ok: ${what} refused: ${type}`)
    return
  }
  assert.fail(`${what}: accepted, expected ${type}`)
}

async function partitionsOf (topic) {
  const topics = await admin.listTopics()
  if (!topics.includes(topic)) return -1
  const { topics: [metadata] } = await admin.fetchTopicMetadata({ topics: [topic] })
  return metadata.partitions.length
}

async function main () {
  await admin.connect()

  // createTopics: two topics, one with configs; true means created.
  const created = await admin.createTopics({
    waitForLeaders: true,
    topics: [
      {
        topic: 'js-admin',
        numPartitions: 2,
        replicationFactor: 3,
        configEntries: [{ name: 'retention.ms', value: '3600000' }],
      },
      { topic: 'js-other', numPartitions: 1, replicationFactor: 1 },
    ],
  })
  assert.equal(created, true, 'createTopics answered it created nothing')
  await eventually('js-admin with 2 partitions', async () => (await partitionsOf('js-admin')) === 2)
  await eventually('js-other with 1 partition', async () => (await partitionsOf('js-other')) === 1)
  console.log('ok: createTopics')

  // An existing topic: kafkajs answers false (it swallows TOPIC_ALREADY_EXISTS).
  const again = await admin.createTopics({ topics: [{ topic: 'js-admin', numPartitions: 1 }] })
  assert.equal(again, false, 'creating an existing topic answered true')
  console.log('ok: an existing topic is not created again')

  // fetchTopicMetadata: leaders among the replicas, 3 replicas each.
  const { topics: [metadata] } = await admin.fetchTopicMetadata({ topics: ['js-admin'] })
  assert.equal(metadata.name, 'js-admin')
  assert.equal(metadata.partitions.length, 2)
  for (const partition of metadata.partitions) {
    assert.equal(partition.partitionErrorCode, 0, JSON.stringify(partition))
    assert.equal(partition.replicas.length, 3, JSON.stringify(partition))
    assert.ok(partition.replicas.includes(partition.leader), JSON.stringify(partition))
  }
  console.log('ok: fetchTopicMetadata', JSON.stringify(metadata.partitions))

  // describeCluster: every broker, the controller among them, Cairn's cluster id.
  const cluster = await admin.describeCluster()
  assert.equal(cluster.brokers.length, brokerCount, JSON.stringify(cluster))
  assert.ok(cluster.brokers.some(broker => broker.nodeId === cluster.controller), JSON.stringify(cluster))
  assert.equal(cluster.clusterId, 'cairn')
  console.log('ok: describeCluster', JSON.stringify(cluster))

  // describeConfigs: the topic's retention as created.
  const described = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: ConfigResourceTypes.TOPIC, name: 'js-admin', configNames: ['retention.ms', 'cleanup.policy'] }],
  })
  const entries = Object.fromEntries(described.resources[0].configEntries.map(entry => [entry.configName, entry]))
  assert.equal(described.resources[0].errorCode, 0)
  assert.equal(entries['retention.ms'].configValue, '3600000', JSON.stringify(entries))
  assert.equal(entries['cleanup.policy'].configValue, 'delete', JSON.stringify(entries))
  assert.equal(entries['cleanup.policy'].readOnly, false, JSON.stringify(entries))
  console.log('ok: describeConfigs')

  // alterConfigs (the whole config) then describe.
  await admin.alterConfigs({
    validateOnly: false,
    resources: [{ type: ConfigResourceTypes.TOPIC, name: 'js-admin', configEntries: [{ name: 'retention.bytes', value: '1048576' }] }],
  })
  const altered = await admin.describeConfigs({
    includeSynonyms: false,
    resources: [{ type: ConfigResourceTypes.TOPIC, name: 'js-admin', configNames: ['retention.ms', 'retention.bytes'] }],
  })
  const alteredEntries = Object.fromEntries(altered.resources[0].configEntries.map(entry => [entry.configName, entry.configValue]))
  assert.deepEqual(alteredEntries, { 'retention.ms': '-1', 'retention.bytes': '1048576' })
  await refused(admin.alterConfigs({
    resources: [{ type: ConfigResourceTypes.TOPIC, name: 'js-admin', configEntries: [{ name: 'segment.ms', value: '1000' }] }],
  }), 'INVALID_CONFIG', 'an unknown config')
  console.log('ok: alterConfigs')

  // createPartitions: grow, and the refusal of fewer.
  await admin.createPartitions({ topicPartitions: [{ topic: 'js-admin', count: 4 }] })
  await eventually('js-admin grown to 4 partitions', async () => (await partitionsOf('js-admin')) === 4)
  await refused(admin.createPartitions({ topicPartitions: [{ topic: 'js-admin', count: 3 }] }),
    'INVALID_PARTITIONS', 'fewer partitions')
  console.log('ok: createPartitions')

  // fetchTopicOffsets: an empty topic; each partition's log starts with its leader's epoch
  // marker (a control batch), so the end is at or past the start.
  const offsets = await admin.fetchTopicOffsets('js-admin')
  assert.equal(offsets.length, 4, JSON.stringify(offsets))
  for (const offset of offsets) {
    assert.ok(Number(offset.high) >= Number(offset.low), JSON.stringify(offset))
  }
  console.log('ok: fetchTopicOffsets', JSON.stringify(offsets))

  // Bad input.
  await refused(admin.createTopics({ topics: [{ topic: 'js-bad name!', numPartitions: 1 }] }),
    'INVALID_TOPIC_EXCEPTION', 'a topic name with a space')
  await refused(admin.createTopics({ topics: [{ topic: 'js-too-many-replicas', numPartitions: 1, replicationFactor: brokerCount + 2 }] }),
    'INVALID_REPLICATION_FACTOR', 'more replicas than brokers')
  await refused(admin.createTopics({ topics: [{ topic: 'js-compacted', configEntries: [{ name: 'cleanup.policy', value: 'tidy' }] }] }),
    'INVALID_CONFIG', 'an unknown cleanup.policy')
  assert.equal(await partitionsOf('js-compacted'), -1, 'a refused topic was created')
  // UNKNOWN_TOPIC_OR_PARTITION is retriable (a topic may be on its way): asked once.
  const once = kafka.admin({ retry: { retries: 0 } })
  await once.connect()
  await refused(once.deleteTopics({ topics: ['js-missing'], timeout: 10000 }),
    'UNKNOWN_TOPIC_OR_PARTITION', 'deleting an unknown topic')
  await once.disconnect()

  // deleteTopics: both gone.
  await admin.deleteTopics({ topics: ['js-admin', 'js-other'], timeout: 30000 })
  await eventually('deleted topics no longer listed', async () => {
    const topics = await admin.listTopics()
    return !topics.includes('js-admin') && !topics.includes('js-other')
  })
  console.log('ok: deleteTopics')
  await admin.disconnect()
  console.log('admin: all passed')
}

main().then(
  () => process.exit(0),
  error => {
    console.error(error)
    process.exit(1)
  },
)
