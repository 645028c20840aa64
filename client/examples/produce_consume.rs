//! Creates a topic, produces keyed records, and reads them back.
//!
//! Run a node first (`cairn node --node-id 1 --data-dir /tmp/cairn --listen 127.0.0.1:7171`),
//! then: `cargo run -p cairn-client --example produce_consume [BOOTSTRAP]`.

use cairn_client::{
    Admin, ApiError, AutoOffsetReset, ClientConfig, ClientError, Consumer, ConsumerConfig,
    Producer, ProducerConfig, Record, SeekTo, TopicConfig,
};
use std::time::Duration;

const TOPIC: &str = "example";
const RECORDS: usize = 1_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ClientError> {
    let bootstrap = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7171".to_owned());
    let config = ClientConfig::new(&bootstrap)?;

    let admin = Admin::new(config.clone())?;
    match admin
        .create_topic(TOPIC, 3, None, TopicConfig::default())
        .await
    {
        Ok(_) | Err(ClientError::Api(ApiError::TopicAlreadyExists { .. })) => {}
        Err(error) => return Err(error),
    }

    let producer = Producer::new(config.clone(), ProducerConfig::default()).await?;
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let record = Record::new(format!("value-{i}")).with_key(format!("key-{}", i % 10));
        // Waits only if the producer's buffer is full.
        deliveries.push(producer.send(TOPIC, record).await?);
    }
    producer.flush().await?;
    for delivery in deliveries {
        delivery.await?;
    }
    println!("produced {RECORDS} records");

    let mut consumer = Consumer::new(
        config,
        ConsumerConfig::new().auto_offset_reset(AutoOffsetReset::Earliest),
    )?;
    for partition in consumer.assign_topic(TOPIC).await? {
        consumer.seek(TOPIC, partition, SeekTo::Earliest).await?;
    }
    let mut read = 0;
    while read < RECORDS {
        let records = consumer.poll(Duration::from_secs(2)).await?;
        if records.is_empty() {
            break;
        }
        read += records.len();
    }
    println!("read {read} records");
    producer.close().await
}
