// kafkajs against a 3-node Cairn cluster: an idempotent producer (acks -1) and a consumer
// group. Two consumers of one group split a topic's partitions and read every record exactly
// once, committing as they go; the committed offsets reach each partition's end; then, with
// more records written, a third consumer of the group resumes from the committed offsets and
// reads exactly the new records. Exits nonzero on the first violation.
//
// Usage: node producer_group.js BOOTSTRAP TOPIC

'use strict'

const assert = require('node:assert/strict')
const { Kafka, logLevel } = require('kafkajs')

const [bootstrap, topic] = process.argv.slice(2)
const group = `${topic}-group`
const PARTITIONS = 4
const FIRST = 400
const SECOND = 100
const SETTLE_MS = 60000

const kafka = new Kafka({
  clientId: 'cairn-kafkajs',
  brokers: bootstrap.split(','),
  logLevel: process.env.KAFKAJS_LOG ? logLevel.DEBUG : logLevel.WARN,
})

async function eventually (what, check) {
  const deadline = Date.now() + SETTLE_MS
  for (;;) {
    if (await check()) return
    assert.ok(Date.now() < deadline, `${what}: not within ${SETTLE_MS} ms`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

async function produce (producer, from, count) {
  for (let start = from; start < from + count; start += 20) {
    const messages = []
    for (let number = start; number < Math.min(start + 20, from + count); number++) {
      messages.push({ key: `key-${number % 8}`, value: `id-${number}`, headers: { source: 'kafkajs' } })
    }
    const answers = await producer.send({ topic, acks: -1, messages })
    for (const answer of answers) assert.equal(answer.errorCode, 0, JSON.stringify(answer))
  }
}

/** A group member that counts what it reads and keeps its latest assignment. */
function member (name) {
  const consumer = kafka.consumer({ groupId: group, heartbeatInterval: 1000, maxWaitTimeInMs: 500 })
  const state = { name, consumer, seen: new Map(), assignment: null, joins: 0 }
  consumer.on(consumer.events.GROUP_JOIN, event => {
    state.assignment = (event.payload.memberAssignment[topic] || []).slice().sort()
    state.joins++
    console.log(`${name} joined (${event.payload.memberId}): partitions ${state.assignment}`)
  })
  return state
}

/** Per partition, the offset after the last record read (what a commit names). */
const nextByPartition = new Map()

async function start (state, seenByAll) {
  await state.consumer.connect()
  await state.consumer.subscribe({ topics: [topic], fromBeginning: true })
  await state.consumer.run({
    eachMessage: async ({ partition, message }) => {
      const id = message.value.toString()
      assert.equal(message.headers.source.toString(), 'kafkajs')
      state.seen.set(id, (state.seen.get(id) || 0) + 1)
      seenByAll.set(id, (seenByAll.get(id) || 0) + 1)
      const after = Number(message.offset) + 1
      nextByPartition.set(partition, Math.max(nextByPartition.get(partition) || 0, after))
    },
  })
}

function expectExactly (what, seen, from, count) {
  const duplicates = [...seen].filter(([, times]) => times > 1).map(([id]) => id)
  assert.deepEqual(duplicates, [], `${what}: read more than once`)
  for (let number = from; number < from + count; number++) {
    assert.ok(seen.has(`id-${number}`), `${what}: id-${number} not read`)
  }
  assert.equal(seen.size, count, `${what}: read ${seen.size}, expected ${count}`)
  console.log(`${what}: ${count} records read once each`)
}

async function main () {
  const admin = kafka.admin()
  await admin.connect()
  assert.equal(await admin.createTopics({
    waitForLeaders: true,
    topics: [{ topic, numPartitions: PARTITIONS, replicationFactor: 3 }],
  }), true)

  // Two members; the records come once both hold a share of the partitions.
  const seenByAll = new Map()
  const first = member('consumer-1')
  const second = member('consumer-2')
  await start(first, seenByAll)
  await eventually('consumer-1 assigned', () => first.assignment !== null)
  await start(second, seenByAll)
  await eventually('the partitions split between both members', () => {
    if (!first.assignment || !second.assignment) return false
    const all = [...first.assignment, ...second.assignment].sort()
    return first.assignment.length > 0 && second.assignment.length > 0 &&
      JSON.stringify(all) === JSON.stringify([...Array(PARTITIONS).keys()])
  })
  console.log(`split: consumer-1 ${first.assignment}, consumer-2 ${second.assignment}`)

  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 })
  await producer.connect()
  await produce(producer, 0, FIRST)
  console.log(`produced ${FIRST} records idempotently`)

  await eventually(`${FIRST} records read`, () => seenByAll.size >= FIRST)
  expectExactly('the group', seenByAll, 0, FIRST)
  assert.ok(first.seen.size > 0 && second.seen.size > 0,
    `both members read: ${first.seen.size} and ${second.seen.size}`)

  // The members commit as they go (kafkajs' autoCommit): the committed offsets reach where
  // they stopped reading, at or below the ends (a leader change appends an epoch marker, a
  // control batch, after the last record).
  const ends = await admin.fetchTopicOffsets(topic)
  let committed
  await eventually('committed offsets where the members stopped', async () => {
    [committed] = await admin.fetchOffsets({ groupId: group, topics: [topic] })
    return ends.every(end => committed.partitions.some(
      partition => partition.partition === end.partition &&
        Number(partition.offset) === nextByPartition.get(end.partition) &&
        Number(partition.offset) <= Number(end.high)))
  })
  console.log('committed', JSON.stringify(committed.partitions), 'ends', JSON.stringify(ends))
  await first.consumer.disconnect()
  await second.consumer.disconnect()

  // A third member resumes from the committed offsets: only the new records.
  await produce(producer, FIRST, SECOND)
  await producer.disconnect()
  const resumedSeen = new Map()
  const third = member('consumer-3')
  await start(third, resumedSeen)
  await eventually(`${SECOND} new records read`, () => resumedSeen.size >= SECOND)
  await third.consumer.disconnect()
  expectExactly('the resumed member', resumedSeen, FIRST, SECOND)

  await admin.deleteTopics({ topics: [topic], timeout: 30000 })
  await admin.disconnect()
  console.log('producer and group: all passed')
}

main().then(
  () => process.exit(0),
  error => {
    console.error(error)
    process.exit(1)
  },
)
