//! Group membership against the scripted coordinator of [`TestServer`]: reconciliation
//! order, fencing and rejoin, commit routing and retries, pause, close.

use crate::test_server::{GroupEvent, TestServer};
use crate::tests::{consumer, fill};
use crate::*;
use cairn_protocol::group::MemberEpoch;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records every callback as a line, and commits positions on revocation.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

fn names(partitions: &[TopicPartition]) -> String {
    let names: Vec<String> = partitions
        .iter()
        .map(|partition| format!("{}/{}", partition.topic, partition.partition))
        .collect();
    names.join(",")
}

impl RebalanceListener for Recorder {
    fn on_revoked(
        &mut self,
        revoked: &[(TopicPartition, Option<Offset>)],
    ) -> Vec<(TopicPartition, Offset)> {
        let partitions: Vec<TopicPartition> = revoked.iter().map(|(p, _)| p.clone()).collect();
        self.0
            .lock()
            .unwrap()
            .push(format!("revoked {}", names(&partitions)));
        CommitPositionsOnRevoke.on_revoked(revoked)
    }

    fn on_assigned(&mut self, assigned: &[TopicPartition]) {
        self.0
            .lock()
            .unwrap()
            .push(format!("assigned {}", names(assigned)));
    }

    fn on_lost(&mut self, lost: &[TopicPartition]) {
        self.0.lock().unwrap().push(format!("lost {}", names(lost)));
    }
}

impl Recorder {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

async fn group_server(partitions: u32) -> TestServer {
    let server = TestServer::start().await;
    server.create_topic("t", partitions);
    server
        .state
        .lock()
        .unwrap()
        .coordinator
        .heartbeat_interval_ms = 20;
    server
}

fn earliest() -> ConsumerConfig {
    ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::default()
    }
}

/// Polls until `done` holds (collecting records), for at most 10 s.
async fn poll_while(
    consumer: &mut Consumer,
    mut done: impl FnMut(&Consumer, &[ConsumerRecord]) -> bool,
) -> Vec<ConsumerRecord> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut records = Vec::new();
    while !done(consumer, &records) {
        assert!(Instant::now() < deadline, "condition not reached in 10 s");
        records.extend(consumer.poll(Duration::from_millis(50)).await.unwrap());
    }
    records
}

fn assigned(consumer: &Consumer) -> Vec<u32> {
    consumer
        .assignment()
        .iter()
        .map(|partition| partition.partition)
        .collect()
}

#[tokio::test]
async fn a_member_reads_its_assignment_from_the_committed_offset() {
    let server = group_server(3).await;
    for partition in 0..3 {
        fill(&server, "t", partition, 5, 1_000).await;
    }
    server
        .state
        .lock()
        .unwrap()
        .coordinator
        .committed
        .insert(("t".into(), 0), Offset(3));
    server.set_assignment("t", &[0, 1]);
    let mut consumer = consumer(&server, earliest());
    consumer.subscribe(&["t"], "g").await.unwrap();
    let records = poll_while(&mut consumer, |_, records| records.len() >= 7).await;
    let offsets = |partition: u32| -> Vec<u64> {
        records
            .iter()
            .filter(|record| record.partition == partition)
            .map(|record| record.offset.0)
            .collect()
    };
    // Partition 0 resumes at its commit, partition 1 has none and starts at the earliest,
    // partition 2 belongs to someone else.
    assert_eq!(offsets(0), vec![3, 4]);
    assert_eq!(offsets(1), vec![0, 1, 2, 3, 4]);
    assert!(offsets(2).is_empty());
    let (member_id, epoch) = consumer.member().unwrap();
    assert_eq!(member_id, "member-1");
    assert!(epoch > MemberEpoch::JOIN);
    // The first heartbeat joined at epoch 0 and named the subscription.
    assert!(matches!(
        server.group_events().first(),
        Some(GroupEvent::Heartbeat { epoch: 0, .. })
    ));
    assert_eq!(
        server
            .state
            .lock()
            .unwrap()
            .coordinator
            .find_coordinator_requests,
        1
    );
}

#[tokio::test]
async fn revoked_partitions_are_released_and_committed_before_new_ones_are_taken() {
    let server = group_server(3).await;
    for partition in 0..3 {
        fill(&server, "t", partition, 4, 1_000).await;
    }
    server.set_assignment("t", &[0, 1]);
    let recorder = Recorder::default();
    let mut consumer = consumer(&server, earliest());
    consumer
        .subscribe_with_listener(&["t"], "g", Box::new(recorder.clone()))
        .await
        .unwrap();
    poll_while(&mut consumer, |_, records| records.len() >= 8).await;
    assert_eq!(consumer.position("t", 0), Some(Offset(4)));

    server.set_assignment("t", &[1, 2]);
    poll_while(&mut consumer, |consumer, _| {
        assigned(consumer) == vec![1, 2]
    })
    .await;
    assert_eq!(
        recorder.lines(),
        vec!["assigned t/0,t/1", "revoked t/0", "assigned t/2"]
    );
    let events = server.group_events();
    // The revoked partition's position was committed, and that commit arrived before any
    // heartbeat that reported the partition released.
    let commit_index = events
        .iter()
        .position(|event| {
            matches!(event, GroupEvent::Commit { offsets, .. } if offsets == &vec![("t".to_owned(), 0, 4)])
        })
        .expect("the revoked partition's position is committed");
    let owns = |event: &GroupEvent, partition: u32| match event {
        GroupEvent::Heartbeat { owned, .. } => owned.contains(&("t".to_owned(), partition)),
        GroupEvent::Commit { .. } => false,
    };
    let first_without_0 = events
        .iter()
        .position(|event| {
            matches!(event, GroupEvent::Heartbeat { epoch, .. } if *epoch > 0)
                && !owns(event, 0)
                && owns(event, 1)
        })
        .expect("a heartbeat reports partition 0 released");
    assert!(commit_index < first_without_0, "{events:?}");
    // Never both the old and the new partition at once.
    assert!(
        !events.iter().any(|event| owns(event, 0) && owns(event, 2)),
        "{events:?}"
    );
    assert_eq!(
        server.state.lock().unwrap().coordinator.committed[&("t".to_owned(), 0)],
        Offset(4)
    );
}

#[tokio::test]
async fn a_fenced_member_loses_its_partitions_and_rejoins_at_epoch_0() {
    let server = group_server(2).await;
    fill(&server, "t", 0, 3, 1_000).await;
    server.set_assignment("t", &[0]);
    let recorder = Recorder::default();
    let mut consumer = consumer(&server, earliest());
    consumer
        .subscribe_with_listener(&["t"], "g", Box::new(recorder.clone()))
        .await
        .unwrap();
    poll_while(&mut consumer, |_, records| records.len() >= 3).await;
    let joined_epoch = consumer.member().unwrap().1;
    server
        .state
        .lock()
        .unwrap()
        .coordinator
        .heartbeat_failures
        .push_back(cairn_protocol::ApiError::FencedMemberEpoch {
            member_id: "member-1".into(),
            current: MemberEpoch(joined_epoch.0 + 5),
            received: joined_epoch,
        });
    poll_while(&mut consumer, |_, _| recorder.lines().len() >= 3).await;
    assert_eq!(
        recorder.lines(),
        vec!["assigned t/0", "lost t/0", "assigned t/0"]
    );
    let events = server.group_events();
    let joins: Vec<&GroupEvent> = events
        .iter()
        .filter(|event| matches!(event, GroupEvent::Heartbeat { epoch: 0, .. }))
        .collect();
    // The first join, then the rejoin owning nothing.
    assert_eq!(joins.len(), 2, "{events:?}");
    assert_eq!(
        joins[1],
        &GroupEvent::Heartbeat {
            epoch: 0,
            owned: Vec::new()
        }
    );
    // Nothing was committed for the lost partition: its epoch no longer may.
    assert!(!events
        .iter()
        .any(|event| matches!(event, GroupEvent::Commit { .. })));
    assert!(consumer.member().unwrap().1 > joined_epoch);
}

#[tokio::test]
async fn commit_sync_follows_the_coordinator_through_not_coordinator() {
    let server = group_server(1).await;
    fill(&server, "t", 0, 6, 1_000).await;
    server.set_assignment("t", &[0]);
    let mut consumer = consumer(&server, earliest());
    // Commits outside a group are refused before anything is sent.
    assert!(matches!(
        consumer.commit_sync().await,
        Err(ClientError::InvalidArgument { .. })
    ));
    consumer.subscribe(&["t"], "g").await.unwrap();
    poll_while(&mut consumer, |_, records| records.len() >= 6).await;
    server
        .state
        .lock()
        .unwrap()
        .coordinator
        .commit_failures
        .extend([
            cairn_protocol::ApiError::NotCoordinator {
                coordinator_hint: None,
            },
            cairn_protocol::ApiError::CoordinatorLoadInProgress,
        ]);
    let lookups_before = server
        .state
        .lock()
        .unwrap()
        .coordinator
        .find_coordinator_requests;
    consumer.commit_sync().await.unwrap();
    let coordinator = &server.state.lock().unwrap().coordinator;
    assert_eq!(coordinator.committed[&("t".to_owned(), 0)], Offset(6));
    let commits = coordinator
        .events
        .iter()
        .filter(|event| matches!(event, GroupEvent::Commit { .. }))
        .count();
    assert_eq!(commits, 3);
    // NotCoordinator dropped the cached coordinator, so it was looked up again.
    assert!(coordinator.find_coordinator_requests > lookups_before);
}

#[tokio::test]
async fn a_refused_commit_is_a_typed_error() {
    let server = group_server(1).await;
    server.set_assignment("t", &[0]);
    let mut consumer = consumer(&server, earliest());
    consumer.subscribe(&["t"], "g").await.unwrap();
    poll_while(&mut consumer, |consumer, _| assigned(consumer) == vec![0]).await;
    server
        .state
        .lock()
        .unwrap()
        .coordinator
        .commit_failures
        .push_back(cairn_protocol::ApiError::FencedMemberEpoch {
            member_id: "member-1".into(),
            current: MemberEpoch(9),
            received: MemberEpoch(1),
        });
    let error = consumer
        .commit_offsets_sync(&[(TopicPartition::new("t", 0), Offset(1))])
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        ClientError::Api(cairn_protocol::ApiError::FencedMemberEpoch { .. })
    ));
    assert!(!server
        .state
        .lock()
        .unwrap()
        .coordinator
        .committed
        .contains_key(&("t".to_owned(), 0)));
    // An async commit reports through its callback.
    let (sender, receiver) = tokio::sync::oneshot::channel();
    consumer
        .commit_async(move |result| {
            let _ = sender.send(result);
        })
        .unwrap();
    receiver.await.unwrap().unwrap();
}

#[tokio::test]
async fn paused_partitions_are_not_fetched_until_resumed() {
    let server = group_server(2).await;
    server.set_assignment("t", &[0, 1]);
    let mut consumer = consumer(&server, earliest());
    consumer.subscribe(&["t"], "g").await.unwrap();
    poll_while(&mut consumer, |consumer, _| {
        assigned(consumer) == vec![0, 1]
    })
    .await;
    let zero = TopicPartition::new("t", 0);
    consumer.pause(std::slice::from_ref(&zero));
    assert_eq!(consumer.paused(), vec![zero.clone()]);
    fill(&server, "t", 0, 3, 1_000).await;
    fill(&server, "t", 1, 3, 1_000).await;
    let records = poll_while(&mut consumer, |_, records| records.len() >= 3).await;
    // Another second of polling brings nothing from the paused partition.
    let mut more = records;
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        more.extend(consumer.poll(Duration::from_millis(50)).await.unwrap());
    }
    assert!(more.iter().all(|record| record.partition == 1), "{more:?}");
    assert_eq!(more.len(), 3);
    consumer.resume(&[zero]);
    let resumed = poll_while(&mut consumer, |_, records| records.len() >= 3).await;
    assert!(resumed.iter().all(|record| record.partition == 0));
}

#[tokio::test]
async fn close_commits_through_the_listener_and_leaves() {
    for (instance_id, leave_epoch) in [(None, -1), (Some("i-1".to_owned()), -2)] {
        let server = group_server(1).await;
        fill(&server, "t", 0, 2, 1_000).await;
        server.set_assignment("t", &[0]);
        let mut consumer = consumer(
            &server,
            ConsumerConfig {
                group_instance_id: instance_id,
                ..earliest()
            },
        );
        consumer
            .subscribe_with_listener(&["t"], "g", Box::new(CommitPositionsOnRevoke))
            .await
            .unwrap();
        poll_while(&mut consumer, |_, records| records.len() >= 2).await;
        consumer.close().await.unwrap();
        let events = server.group_events();
        let last_two = &events[events.len() - 2..];
        assert_eq!(
            last_two,
            &[
                GroupEvent::Commit {
                    epoch: last_two_epoch(&events),
                    offsets: vec![("t".to_owned(), 0, 2)]
                },
                GroupEvent::Heartbeat {
                    epoch: leave_epoch,
                    owned: Vec::new()
                }
            ]
        );
    }
}

/// The epoch of the last heartbeat reply before leaving, as the commit carried it.
fn last_two_epoch(events: &[GroupEvent]) -> i32 {
    match &events[events.len() - 2] {
        GroupEvent::Commit { epoch, .. } => {
            assert!(*epoch > 0);
            *epoch
        }
        other => panic!("expected a commit, got {other:?}"),
    }
}

#[tokio::test]
async fn auto_commit_commits_positions_on_its_interval() {
    let server = group_server(1).await;
    fill(&server, "t", 0, 4, 1_000).await;
    server.set_assignment("t", &[0]);
    let mut consumer = consumer(
        &server,
        ConsumerConfig {
            enable_auto_commit: true,
            auto_commit_interval: Duration::from_millis(50),
            ..earliest()
        },
    );
    consumer.subscribe(&["t"], "g").await.unwrap();
    poll_while(&mut consumer, |_, records| records.len() >= 4).await;
    // Later polls commit what earlier polls returned.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .state
        .lock()
        .unwrap()
        .coordinator
        .committed
        .get(&("t".to_owned(), 0))
        != Some(&Offset(4))
    {
        assert!(Instant::now() < deadline, "no auto-commit in 10 s");
        consumer.poll(Duration::from_millis(60)).await.unwrap();
    }
}

#[test]
fn bad_group_settings_are_refused_before_anything_is_sent() {
    let bad_assignor = ConsumerConfig {
        assignor: Some("fastest".into()),
        ..ConsumerConfig::default()
    };
    assert!(bad_assignor.validate().is_err());
    let bad_instance = ConsumerConfig {
        group_instance_id: Some(String::new()),
        ..ConsumerConfig::default()
    };
    assert!(bad_instance.validate().is_err());
    ConsumerConfig {
        assignor: Some("range".into()),
        group_instance_id: Some("i".into()),
        ..ConsumerConfig::default()
    }
    .validate()
    .unwrap();
}

#[tokio::test]
async fn subscribe_refuses_bad_arguments() {
    let server = group_server(1).await;
    let mut consumer = consumer(&server, earliest());
    assert!(matches!(
        consumer.subscribe(&["t"], "").await,
        Err(ClientError::Api(
            cairn_protocol::ApiError::InvalidGroupId { .. }
        ))
    ));
    assert!(matches!(
        consumer.subscribe(&[], "g").await,
        Err(ClientError::InvalidArgument { .. })
    ));
    consumer.assign(&[("t", 0)]).await.unwrap();
    assert!(matches!(
        consumer.subscribe(&["t"], "g").await,
        Err(ClientError::InvalidArgument { .. })
    ));
    // Nothing reached the coordinator.
    assert!(server.group_events().is_empty());
}

#[tokio::test]
async fn a_coordinator_hint_is_followed_without_a_lookup() {
    let server = group_server(1).await;
    fill(&server, "t", 0, 2, 1_000).await;
    server.set_assignment("t", &[0]);
    let mut consumer = consumer(&server, earliest());
    consumer.subscribe(&["t"], "g").await.unwrap();
    poll_while(&mut consumer, |_, records| records.len() >= 2).await;
    let lookups_before = server
        .state
        .lock()
        .unwrap()
        .coordinator
        .find_coordinator_requests;
    server
        .state
        .lock()
        .unwrap()
        .coordinator
        .commit_failures
        .push_back(cairn_protocol::ApiError::NotCoordinator {
            coordinator_hint: Some(cairn_protocol::NodeId(1)),
        });
    consumer.commit_sync().await.unwrap();
    let coordinator = &server.state.lock().unwrap().coordinator;
    assert_eq!(coordinator.committed[&("t".to_owned(), 0)], Offset(2));
    assert_eq!(coordinator.find_coordinator_requests, lookups_before);
}
