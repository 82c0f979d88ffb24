//! Acks together (`genesys_worker::intake::acks`) against a real RabbitMQ quorum queue: what the
//! broker still holds after the channel closes is exactly what was not acked.

use std::time::Duration;

use futures_util::StreamExt;
use genesys_worker::intake::acks::{AckStats, Acks};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

use crate::helpers::{connect_broker, random_name};

/// A quorum queue holding messages "0" … "n-1".
async fn queue_of(connection: &Connection, n: usize) -> String {
    let queue = format!("acks-{}", random_name());
    let channel = connection.create_channel().await.unwrap();
    testkit::declare_quorum_queue(&channel, &queue).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..n {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                i.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    queue
}

/// Takes `n` deliveries from `queue` on a new channel: their tags and bodies, in order.
async fn take(connection: &Connection, queue: &str, n: usize) -> (Channel, Vec<(u64, String)>) {
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(n as u16, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "acks-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut taken = Vec::new();
    while taken.len() < n {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery within 10 s")
            .unwrap()
            .unwrap();
        taken.push((
            delivery.delivery_tag,
            String::from_utf8(delivery.data.clone()).unwrap(),
        ));
    }
    (channel, taken)
}

/// The bodies left in `queue` (ready again once the consuming channel closed).
async fn left_in(connection: &Connection, queue: &str) -> Vec<String> {
    let channel = connection.create_channel().await.unwrap();
    let mut left = Vec::new();
    // A quorum queue takes returned messages back through its log: give it a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        while let Some(message) = channel
            .basic_get(queue.into(), lapin::options::BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            left.push(String::from_utf8(message.delivery.data.clone()).unwrap());
        }
        if !left.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    left
}

#[tokio::test]
async fn deliveries_that_finish_together_are_acked_in_one_frame() {
    let connection = connect_broker().await;
    let queue = queue_of(&connection, 20).await;
    let (channel, taken) = take(&connection, &queue, 20).await;
    let acks = Acks::start(channel.clone());
    for (tag, _) in &taken {
        acks.received(*tag);
    }
    // They finish out of order, all before the runner looks.
    for (tag, _) in taken.iter().rev() {
        acks.finished(*tag);
    }
    let stats = acks.close().await;
    channel.close(200, "done".into()).await.unwrap();
    assert_eq!(stats, AckStats { acked: 20, frames: 1 });
    assert!(left_in(&connection, &queue).await.is_empty());
}

#[tokio::test]
async fn an_ack_never_covers_a_delivery_still_in_flight() {
    let connection = connect_broker().await;
    let queue = queue_of(&connection, 12).await;
    let (channel, taken) = take(&connection, &queue, 12).await;
    let acks = Acks::start(channel.clone());
    for (tag, _) in &taken {
        acks.received(*tag);
    }
    // The fourth is still in flight (a slow job); one after it is nacked by its own task.
    let in_flight = taken[3].0;
    let nacked = taken[7].0;
    channel
        .basic_nack(
            nacked,
            lapin::options::BasicNackOptions {
                requeue: true,
                multiple: false,
            },
        )
        .await
        .unwrap();
    acks.settled(nacked);
    for (tag, _) in &taken {
        if *tag != in_flight && *tag != nacked {
            acks.finished(*tag);
        }
    }
    // Those behind the gap wait for it a little, then go alone: all acked before the close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = acks.close().await;
    channel.close(200, "done".into()).await.unwrap();
    // 0..=2 together, then 4, 5, 6, 8, 9, 10, 11 each alone.
    assert_eq!(stats, AckStats { acked: 10, frames: 8 });
    let mut left = left_in(&connection, &queue).await;
    left.sort();
    assert_eq!(left, vec![taken[3].1.clone(), taken[7].1.clone()]);
}
