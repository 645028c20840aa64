// @confluentinc/schemaregistry (Confluent's JavaScript registry client and serdes) against
// Cairn's registry, with kafkajs carrying the records through Cairn's Kafka listener: register
// an Avro schema through one node, serialize with AvroSerializer, produce, consume, and
// deserialize with AvroDeserializer resolving the id through another node. An incompatible
// change is refused with Confluent's 409. Exits nonzero on the first violation.
//
// Usage: node schema_registry.js REGISTRY_URL[,REGISTRY_URL...] BOOTSTRAP TOPIC

'use strict'

const assert = require('node:assert/strict')
const { Kafka, logLevel } = require('kafkajs')
const {
  AvroDeserializer,
  AvroSerializer,
  RestError,
  SchemaRegistryClient,
  SerdeType,
} = require('@confluentinc/schemaregistry')

const [registries, bootstrap, topic] = process.argv.slice(2)
const urls = registries.split(',')
const subject = `${topic}-value`
const RECORDS = 10
const SETTLE_MS = 60000

const V1 = {
  type: 'record',
  name: 'Click',
  namespace: 'web',
  fields: [
    { name: 'page', type: 'string' },
    { name: 'millis', type: 'long' },
  ],
}
const V2_REQUIRED = { ...V1, fields: [...V1.fields, { name: 'user', type: 'string' }] }

async function registerUntilAvailable (client, schema) {
  // The first registration also creates `_schemas`: ride out its 5xx answers.
  const deadline = Date.now() + SETTLE_MS
  for (;;) {
    try {
      return await client.register(subject, schema)
    } catch (error) {
      if (!(error instanceof RestError) || error.status < 500 || Date.now() > deadline) throw error
      await new Promise(resolve => setTimeout(resolve, 500))
    }
  }
}

async function main () {
  const writer = new SchemaRegistryClient({ baseURLs: [urls[0]] })
  const reader = new SchemaRegistryClient({ baseURLs: [urls[urls.length - 1]] })
  const id = await registerUntilAvailable(writer, { schemaType: 'AVRO', schema: JSON.stringify(V1) })

  const incompatible = { schemaType: 'AVRO', schema: JSON.stringify(V2_REQUIRED) }
  await assert.rejects(writer.register(subject, incompatible), error => {
    assert.ok(error instanceof RestError, `not a RestError: ${error}`)
    assert.equal(error.status, 409)
    assert.equal(error.errorCode, 409)
    return true
  })

  const serializer = new AvroSerializer(writer, SerdeType.VALUE, { useLatestVersion: true })
  const values = Array.from({ length: RECORDS }, (_, index) => ({ page: `/p/${index}`, millis: 1000 + index }))
  const messages = []
  for (const [index, value] of values.entries()) {
    const framed = await serializer.serialize(topic, value)
    assert.equal(framed[0], 0, 'magic byte')
    assert.equal(framed.readUInt32BE(1), id, 'schema id')
    messages.push({ key: `k${index}`, value: framed })
  }

  const kafka = new Kafka({
    clientId: 'cairn-schemaregistry',
    brokers: bootstrap.split(','),
    logLevel: process.env.KAFKAJS_LOG ? logLevel.DEBUG : logLevel.WARN,
  })
  // kafkajs' default producer, as a newcomer writes it: not idempotent, so its batches carry
  // producer id -1 with sequence 0, which Kafka (and Cairn) accept.
  const producer = kafka.producer()
  await producer.connect()
  await producer.send({ topic, acks: -1, messages })
  await producer.disconnect()

  const deserializer = new AvroDeserializer(reader, SerdeType.VALUE, {})
  const consumer = kafka.consumer({ groupId: `${topic}-schemaregistry` })
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  const seen = []
  let failure = null
  await consumer.run({
    eachMessage: async ({ message }) => {
      try {
        seen.push(await deserializer.deserialize(topic, message.value))
      } catch (error) {
        failure = failure || error
      }
    },
  })
  const deadline = Date.now() + SETTLE_MS
  while (seen.length < RECORDS && !failure && Date.now() < deadline) {
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  await consumer.disconnect()
  if (failure) throw failure
  assert.equal(seen.length, RECORDS, `read ${seen.length} of ${RECORDS} records`)
  assert.deepEqual(
    seen.map(value => ({ page: value.page, millis: Number(value.millis) })),
    values,
  )
  console.log(`schemaregistry round trip ok: id ${id}, ${seen.length} records`)
}

main().then(
  () => process.exit(0),
  error => {
    console.error(error)
    process.exit(1)
  },
)
