//! Server-side assignors: who should own which partition (the *target* assignment).
//!
//! Each assignor is a pure function of the members' subscriptions, the partition counts of
//! the subscribed topics and, for `sticky`, the previous target. Members and partitions are
//! walked in sorted order, so the same input always gives the same output on every
//! coordinator (a failover must not reshuffle a group).

use cairn_protocol::group::{ASSIGNOR_RANGE, ASSIGNOR_ROUND_ROBIN, ASSIGNOR_STICKY};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: u32) -> TopicPartition {
        TopicPartition {
            topic: topic.to_string(),
            partition,
        }
    }
}

/// A set of partitions, sorted by topic then partition.
pub type Assignment = BTreeSet<TopicPartition>;

/// Partition count of every existing topic the coordinator may assign.
pub type TopicPartitionCounts = BTreeMap<String, u32>;

/// The assignment strategies a group may use; see [`assign`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Assignor {
    /// Per topic, consecutive ranges of partitions to the members sorted by id (Kafka's
    /// `range`): members reading several co-partitioned topics get the same partition numbers.
    Range,
    /// Every partition, in order, to the next subscribed member in turn.
    RoundRobin,
    /// Keeps every partition where it was when it can, and moves as few as needed so that no
    /// member has more than one partition above another that could take it.
    #[default]
    Sticky,
}

impl Assignor {
    /// Parses a name from [`cairn_protocol::group::ASSIGNOR_NAMES`].
    pub fn from_name(name: &str) -> Option<Assignor> {
        match name {
            ASSIGNOR_RANGE => Some(Assignor::Range),
            ASSIGNOR_ROUND_ROBIN => Some(Assignor::RoundRobin),
            ASSIGNOR_STICKY | "uniform" => Some(Assignor::Sticky),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => ASSIGNOR_RANGE,
            Assignor::RoundRobin => ASSIGNOR_ROUND_ROBIN,
            Assignor::Sticky => ASSIGNOR_STICKY,
        }
    }
}

/// Computes the target assignment. `subscriptions` maps each member id to its topics;
/// subscribed topics missing from `topics` are skipped (they may not exist yet). Every
/// member appears in the result, possibly with an empty assignment, and every partition of
/// a subscribed topic goes to exactly one subscribed member.
pub fn assign(
    assignor: Assignor,
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    topics: &TopicPartitionCounts,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut result: BTreeMap<String, Assignment> = subscriptions
        .keys()
        .map(|member| (member.clone(), Assignment::new()))
        .collect();
    match assignor {
        Assignor::Range => range(subscriptions, topics, &mut result),
        Assignor::RoundRobin => round_robin(subscriptions, topics, &mut result),
        Assignor::Sticky => sticky(subscriptions, topics, previous, &mut result),
    }
    result
}

/// The members subscribed to `topic`, sorted by id.
fn subscribers<'a>(
    subscriptions: &'a BTreeMap<String, BTreeSet<String>>,
    topic: &str,
) -> Vec<&'a String> {
    subscriptions
        .iter()
        .filter(|(_, topics)| topics.contains(topic))
        .map(|(member, _)| member)
        .collect()
}

/// Every partition of every topic someone subscribes to, with its eligible members.
fn wanted_partitions(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    topics: &TopicPartitionCounts,
) -> BTreeMap<TopicPartition, Vec<String>> {
    let subscribed: BTreeSet<&String> = subscriptions.values().flatten().collect();
    let mut wanted = BTreeMap::new();
    for topic in subscribed {
        let Some(&count) = topics.get(topic) else {
            continue;
        };
        let members: Vec<String> = subscribers(subscriptions, topic)
            .into_iter()
            .cloned()
            .collect();
        for partition in 0..count {
            wanted.insert(TopicPartition::new(topic, partition), members.clone());
        }
    }
    wanted
}

fn range(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    topics: &TopicPartitionCounts,
    result: &mut BTreeMap<String, Assignment>,
) {
    for (topic, &count) in topics {
        let members = subscribers(subscriptions, topic);
        if members.is_empty() {
            continue;
        }
        let member_count = members.len() as u32;
        let (base, extra) = (count / member_count, count % member_count);
        let mut next = 0;
        for (index, member) in members.into_iter().enumerate() {
            let take = base + u32::from((index as u32) < extra);
            let assignment = result.get_mut(member).expect("every member has an entry");
            for partition in next..next + take {
                assignment.insert(TopicPartition::new(topic, partition));
            }
            next += take;
        }
    }
}

fn round_robin(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    topics: &TopicPartitionCounts,
    result: &mut BTreeMap<String, Assignment>,
) {
    let members: Vec<&String> = subscriptions.keys().collect();
    if members.is_empty() {
        return;
    }
    let mut turn = 0usize;
    for (partition, _) in wanted_partitions(subscriptions, topics) {
        // The next member in turn that subscribes to this topic; one exists, since the
        // partition is only wanted because someone subscribes.
        for step in 0..members.len() {
            let member = members[(turn + step) % members.len()];
            if subscriptions[member].contains(&partition.topic) {
                result
                    .get_mut(member)
                    .expect("every member has an entry")
                    .insert(partition);
                turn = (turn + step + 1) % members.len();
                break;
            }
        }
    }
}

fn sticky(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    topics: &TopicPartitionCounts,
    previous: &BTreeMap<String, Assignment>,
    result: &mut BTreeMap<String, Assignment>,
) {
    let wanted = wanted_partitions(subscriptions, topics);
    // 1. Keep each partition with its previous owner when that owner is still here and
    //    still subscribed.
    let mut unassigned: Vec<&TopicPartition> = Vec::new();
    let mut owner_of: BTreeMap<&TopicPartition, &String> = BTreeMap::new();
    for (member, assignment) in previous {
        for partition in assignment {
            let eligible = wanted
                .get(partition)
                .is_some_and(|members| members.contains(member));
            if eligible && !owner_of.contains_key(partition) {
                owner_of.insert(partition, member);
            }
        }
    }
    for partition in wanted.keys() {
        match owner_of.get(partition) {
            Some(member) => {
                result
                    .get_mut(*member)
                    .expect("owners are current members")
                    .insert(partition.clone());
            }
            None => unassigned.push(partition),
        }
    }
    // 2. Give each unowned partition to the least loaded member that can take it.
    for partition in unassigned {
        let member = least_loaded(result, &wanted[partition], None)
            .expect("a wanted partition has a subscriber")
            .clone();
        result
            .get_mut(&member)
            .expect("every member has an entry")
            .insert(partition.clone());
    }
    // 3. Move partitions from the most to the least loaded eligible member while the
    //    difference is more than one. Each move lowers the sum of squared loads, so this
    //    ends; the bound only guards against a bug.
    let moves_max = wanted.len() * wanted.len() + 1;
    for _ in 0..moves_max {
        match best_move(result, &wanted) {
            Some((from, to, partition)) => {
                result.get_mut(&from).expect("member").remove(&partition);
                result.get_mut(&to).expect("member").insert(partition);
            }
            None => return,
        }
    }
    panic!("sticky assignor did not converge within {moves_max} moves");
}

/// The member among `candidates` with the fewest partitions (ties: lowest id), skipping
/// `except`.
fn least_loaded<'a>(
    result: &BTreeMap<String, Assignment>,
    candidates: &'a [String],
    except: Option<&String>,
) -> Option<&'a String> {
    candidates
        .iter()
        .filter(|member| Some(*member) != except)
        .min_by_key(|member| (result[*member].len(), *member))
}

/// One move that narrows an imbalance of more than one between two members that could
/// both own the moved partition: from the most loaded member able to give, its highest
/// partition that a much less loaded member can take.
fn best_move(
    result: &BTreeMap<String, Assignment>,
    wanted: &BTreeMap<TopicPartition, Vec<String>>,
) -> Option<(String, String, TopicPartition)> {
    let mut givers: Vec<(&String, &Assignment)> = result.iter().collect();
    givers.sort_by_key(|(member, assignment)| (std::cmp::Reverse(assignment.len()), *member));
    for (giver, assignment) in givers {
        for partition in assignment.iter().rev() {
            if let Some(taker) = least_loaded(result, &wanted[partition], Some(giver)) {
                if result[taker].len() + 1 < assignment.len() {
                    return Some((giver.clone(), taker.clone(), partition.clone()));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriptions(members: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        members
            .iter()
            .map(|(member, topics)| {
                (
                    member.to_string(),
                    topics.iter().map(|topic| topic.to_string()).collect(),
                )
            })
            .collect()
    }

    fn topics(counts: &[(&str, u32)]) -> TopicPartitionCounts {
        counts
            .iter()
            .map(|(topic, count)| (topic.to_string(), *count))
            .collect()
    }

    /// `member -> "t0 t1 u3"`, for exact, readable expectations.
    fn render(result: &BTreeMap<String, Assignment>) -> Vec<String> {
        result
            .iter()
            .map(|(member, assignment)| {
                let partitions: Vec<String> = assignment
                    .iter()
                    .map(|p| format!("{}{}", p.topic, p.partition))
                    .collect();
                format!("{member}: {}", partitions.join(" "))
            })
            .collect()
    }

    #[test]
    fn range_gives_consecutive_partitions_per_topic() {
        let subs = subscriptions(&[("a", &["t", "u"]), ("b", &["t", "u"]), ("c", &["t"])]);
        let result = assign(
            Assignor::Range,
            &subs,
            &topics(&[("t", 7), ("u", 3)]),
            &BTreeMap::new(),
        );
        assert_eq!(
            render(&result),
            ["a: t0 t1 t2 u0 u1", "b: t3 t4 u2", "c: t5 t6"]
        );
    }

    #[test]
    fn round_robin_deals_partitions_in_turn_to_subscribers() {
        let subs = subscriptions(&[("a", &["t", "u"]), ("b", &["u"]), ("c", &["t", "u"])]);
        let result = assign(
            Assignor::RoundRobin,
            &subs,
            &topics(&[("t", 3), ("u", 3)]),
            &BTreeMap::new(),
        );
        // t0 a, t1 c (b does not read t), t2 a, u0 b, u1 c, u2 a.
        assert_eq!(render(&result), ["a: t0 t2 u2", "b: u0", "c: t1 u1"]);
    }

    #[test]
    fn sticky_from_scratch_is_balanced() {
        let subs = subscriptions(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let result = assign(
            Assignor::Sticky,
            &subs,
            &topics(&[("t", 6)]),
            &BTreeMap::new(),
        );
        assert_eq!(render(&result), ["a: t0 t3", "b: t1 t4", "c: t2 t5"]);
    }

    #[test]
    fn sticky_moves_only_what_balance_needs_when_a_member_joins() {
        let subs = subscriptions(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let counts = topics(&[("t", 6)]);
        let before = assign(Assignor::Sticky, &subs, &counts, &BTreeMap::new());
        let subs = subscriptions(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"]), ("d", &["t"])]);
        let after = assign(Assignor::Sticky, &subs, &counts, &before);
        // Exactly one partition moves (a's highest), to the newcomer.
        assert_eq!(render(&after), ["a: t0", "b: t1 t4", "c: t2 t5", "d: t3"]);
    }

    #[test]
    fn sticky_spreads_a_leavers_partitions_over_the_least_loaded() {
        let subs = subscriptions(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"]), ("d", &["t"])]);
        let counts = topics(&[("t", 8)]);
        let before = assign(Assignor::Sticky, &subs, &counts, &BTreeMap::new());
        assert_eq!(
            render(&before),
            ["a: t0 t4", "b: t1 t5", "c: t2 t6", "d: t3 t7"]
        );
        let subs = subscriptions(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
        let after = assign(Assignor::Sticky, &subs, &counts, &before);
        assert_eq!(render(&after), ["a: t0 t3 t4", "b: t1 t5 t7", "c: t2 t6"]);
    }

    /// With uneven subscriptions no member may sit idle, or short by two, while another
    /// member that shares a topic with it has more.
    #[test]
    fn sticky_balances_heterogeneous_subscriptions() {
        let subs = subscriptions(&[("a", &["t", "u"]), ("b", &["t"]), ("c", &["u"])]);
        let counts = topics(&[("t", 4), ("u", 4)]);
        // A previous target that piled everything onto a.
        let mut previous = BTreeMap::new();
        previous.insert(
            "a".to_string(),
            (0..4)
                .flat_map(|p| [TopicPartition::new("t", p), TopicPartition::new("u", p)])
                .collect::<Assignment>(),
        );
        let after = assign(Assignor::Sticky, &subs, &counts, &previous);
        assert_eq!(render(&after), ["a: t0 t1 u3", "b: t2 t3", "c: u0 u1 u2"]);
        for (member, assignment) in &after {
            for partition in assignment {
                assert!(
                    subs[member].contains(&partition.topic),
                    "{member} {partition:?}"
                );
            }
        }
        let all: BTreeSet<&TopicPartition> = after.values().flatten().collect();
        assert_eq!(all.len(), 8);
    }

    #[test]
    fn unknown_topics_are_skipped_and_members_without_partitions_are_listed() {
        let subs = subscriptions(&[("a", &["t"]), ("b", &["missing"])]);
        for assignor in [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky] {
            let result = assign(assignor, &subs, &topics(&[("t", 2)]), &BTreeMap::new());
            assert_eq!(render(&result), ["a: t0 t1", "b: "], "{assignor:?}");
        }
    }

    #[test]
    fn assignor_names_parse_as_kafka_names_them() {
        assert_eq!(Assignor::from_name("range"), Some(Assignor::Range));
        assert_eq!(
            Assignor::from_name("round-robin"),
            Some(Assignor::RoundRobin)
        );
        assert_eq!(Assignor::from_name("uniform"), Some(Assignor::Sticky));
        assert_eq!(Assignor::from_name("sticky"), Some(Assignor::Sticky));
        assert_eq!(Assignor::from_name("cooperative"), None);
        for name in cairn_protocol::group::ASSIGNOR_NAMES {
            assert!(Assignor::from_name(name).is_some(), "{name}");
        }
    }
}
