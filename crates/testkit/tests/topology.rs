//! The topologies of `testkit::topology` start, work and fail over. One test per topology; they
//! run one at a time.

use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use testkit::random_name;
use testkit::topology::{one_at_a_time, redis_cli, redis_role, RabbitCluster, RedisCluster, SentinelRedis};

const CONNECTION_NAME: &str = "topology-test";

async fn connect(url: &str) -> Connection {
    let properties = ConnectionProperties::default().with_connection_name(CONNECTION_NAME.into());
    Connection::connect(url, properties)
        .await
        .expect("the node takes connections")
}

async fn confirmed_channel(connection: &Connection) -> Channel {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

async fn publish(channel: &Channel, queue: &str, body: &[u8]) {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "the publish of {body:?} was not confirmed");
}

async fn get(channel: &Channel, queue: &str) -> Option<Vec<u8>> {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .map(|message| message.delivery.data)
}

#[tokio::test]
async fn rabbit_cluster_replicates_quorum_queues_and_survives_the_leaders_death() {
    let _one = one_at_a_time().await;
    let mut cluster = RabbitCluster::start().await;
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.amqp_url(), cluster.urls().join(","));
    for i in [0, 2] {
        assert_eq!(cluster.running_nodes(i).await, vec![0, 1, 2], "node {i}'s view");
    }

    // A quorum queue declared through node 0 gets a member on every node.
    let connection = connect(&cluster.url(0)).await;
    assert_eq!(cluster.nodes_of_connections(CONNECTION_NAME).await, vec![0]);
    let channel = confirmed_channel(&connection).await;
    let queue = format!("topology-test-{}", random_name());
    testkit::declare_quorum_queue(&channel, &queue).await;
    assert_eq!(cluster.queue_members(&queue).await, vec![0, 1, 2]);
    publish(&channel, &queue, b"before").await;
    let leader = cluster.wait_for_leader(&queue, None).await;

    // Its leader dies: the queue is served through another node, with the message it held.
    drop(channel);
    let _ = connection.close(200, "moving".into()).await;
    let started = Instant::now();
    cluster.kill_node(leader);
    assert!(!cluster.is_up(leader));
    let new_leader = cluster.wait_for_leader(&queue, Some(leader)).await;
    eprintln!("[topology] new leader of {queue} after {:.1?}", started.elapsed());
    let other = (0..3).find(|&i| i != leader).unwrap();
    let connection = connect(&cluster.url(other)).await;
    let channel = confirmed_channel(&connection).await;
    assert_eq!(get(&channel, &queue).await.as_deref(), Some(&b"before"[..]));
    publish(&channel, &queue, b"after").await;
    assert_eq!(get(&channel, &queue).await.as_deref(), Some(&b"after"[..]));
    assert_eq!(cluster.running_nodes(new_leader).await.len(), 2);

    // The dead node comes back on its data and rejoins.
    let started = Instant::now();
    cluster.start_node(leader).await;
    eprintln!("[topology] node {leader} back after {:.1?}", started.elapsed());
    assert_eq!(cluster.running_nodes(leader).await, vec![0, 1, 2]);
    assert_eq!(cluster.queue_members(&queue).await, vec![0, 1, 2]);
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn sentinels_promote_the_replica_when_the_primary_dies() {
    let _one = one_at_a_time().await;
    let redis = SentinelRedis::start().await;
    let env = redis.redis_env();
    assert!(env.contains(&("REDIS_TOPOLOGY".into(), "sentinel".into())));
    assert!(env.contains(&("REDIS_SENTINEL_MASTER".into(), "mymaster".into())));
    let [first, replica] = redis.redis_ports()[..] else {
        panic!("two Redis servers")
    };
    assert_eq!(redis.primary_port().await, first);
    assert_eq!(redis_role(replica).await.as_deref(), Some("slave"));
    redis_cli(first, &["SET", "topology-test", "kept"]).await.unwrap();
    // Replicated before the primary dies.
    assert_eq!(
        redis_cli(first, &["WAIT", "1", "5000"]).await.unwrap().trim(),
        "1"
    );

    let started = Instant::now();
    assert_eq!(redis.kill_primary().await, first);
    let promoted = redis.wait_for_failover(first).await;
    let took = started.elapsed();
    eprintln!("[topology] sentinel failover in {took:.1?}");
    assert_eq!(promoted, replica);
    assert!(took < Duration::from_secs(15), "the failover took {took:?}");
    assert_eq!(
        redis_cli(promoted, &["GET", "topology-test"])
            .await
            .unwrap()
            .trim(),
        "kept"
    );
    redis_cli(promoted, &["SET", "topology-test", "written after"])
        .await
        .unwrap();

    // The old primary comes back (empty, as a master of its own): the Sentinels keep the new
    // one (they make the old one its replica some 10 s later).
    redis.restart_node(first).await;
    assert!(redis_role(first).await.is_some());
    assert_eq!(redis.primary_port().await, replica);
}

#[tokio::test]
async fn redis_cluster_serves_every_slot_and_fails_over() {
    let _one = one_at_a_time().await;
    let cluster = RedisCluster::start().await;
    let env = cluster.redis_env();
    assert!(env.contains(&("REDIS_TOPOLOGY".into(), "cluster".into())));
    let urls = &env.iter().find(|(k, _)| k == "REDIS_URL").unwrap().1;
    assert_eq!(urls.split(',').count(), 6);
    assert_eq!(cluster.covered_slots().await, 16384);
    let primaries = cluster.primaries().await;
    assert_eq!(primaries.len(), 3);

    // A key, on the primary serving its slot.
    let slot: u16 = redis_cli(primaries[0], &["CLUSTER", "KEYSLOT", "{topology}k"])
        .await
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let primary = cluster
        .nodes()
        .await
        .into_iter()
        .find(|n| n.primary && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
        .expect("a primary serves every slot")
        .port;
    let slots = cluster.slots_of(primary).await;
    redis_cli(primary, &["SET", "{topology}k", "kept"]).await.unwrap();
    assert_eq!(
        redis_cli(primary, &["WAIT", "1", "5000"]).await.unwrap().trim(),
        "1"
    );

    // Graceful: the replica takes over on request.
    let started = Instant::now();
    let replica = cluster.failover(primary).await;
    eprintln!(
        "[topology] graceful cluster failover in {:.1?}",
        started.elapsed()
    );
    assert_ne!(replica, primary);
    assert_eq!(cluster.slots_of(replica).await, slots);
    assert_eq!(redis_role(primary).await.as_deref(), Some("slave"));

    // Hard: the new primary dies; its replica (the first primary) takes its slots back.
    assert_eq!(
        redis_cli(replica, &["WAIT", "1", "5000"]).await.unwrap().trim(),
        "1"
    );
    let started = Instant::now();
    let back = cluster.fail_over_by_killing(replica).await;
    let took = started.elapsed();
    eprintln!("[topology] cluster failover after a SIGKILL in {took:.1?}");
    assert_eq!(back, primary);
    assert!(took < Duration::from_secs(15), "the failover took {took:?}");
    assert_eq!(cluster.slots_of(primary).await, slots);
    assert_eq!(cluster.covered_slots().await, 16384);
    let any = cluster.live_ports().await[0];
    assert_eq!(
        redis_cli(any, &["-c", "GET", "{topology}k"])
            .await
            .unwrap()
            .trim(),
        "kept"
    );
}
