//! Where a new topic's replicas go: spread evenly over the live nodes, counting what the
//! nodes already hold, with the preferred leaders (the first replica of each set) balanced
//! too.
//!
//! Pure and deterministic: the `__meta` leader computes the assignment once and writes the
//! result into the `CreateTopic` record, so every node applies the same sets whatever its own
//! view of the cluster. Liveness is a gossip opinion: a wrong one costs balance, never safety.

use cairn_protocol::NodeId;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Replica sets for `partitions` new partitions of `topic`, `replication_factor` nodes each,
/// chosen among `live` (distinct node ids). `existing` are the replica sets of the topics that
/// exist already, first replica first; only their nodes that are live count towards the load.
///
/// The caller checks `1 <= replication_factor <= live.len()`.
pub fn assign<'a>(
    topic: &str,
    live: &[NodeId],
    existing: impl IntoIterator<Item = &'a Vec<NodeId>>,
    partitions: u32,
    replication_factor: u16,
) -> Vec<Vec<NodeId>> {
    let mut nodes = live.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    let factor = usize::from(replication_factor);
    assert!(
        factor >= 1 && factor <= nodes.len(),
        "the caller checked the replication factor against the live nodes"
    );
    let mut replicas: HashMap<NodeId, u64> = nodes.iter().map(|&node| (node, 0)).collect();
    let mut leaders = replicas.clone();
    for set in existing {
        for (index, node) in set.iter().enumerate() {
            if let Some(count) = replicas.get_mut(node) {
                *count += 1;
                if index == 0 {
                    *leaders.get_mut(node).expect("same keys") += 1;
                }
            }
        }
    }
    // Ties go round the ring from a place that depends on the topic, so a run of
    // one-partition topics does not put every leader on the lowest node id.
    let mut hasher = DefaultHasher::new();
    topic.hash(&mut hasher);
    let start = (hasher.finish() % nodes.len() as u64) as usize;
    let ring = |index: usize, from: usize| (index + nodes.len() - from) % nodes.len();
    (0..partitions)
        .map(|_| {
            let leader_index = (0..nodes.len())
                .min_by_key(|&index| {
                    let node = nodes[index];
                    (leaders[&node], replicas[&node], ring(index, start))
                })
                .expect("at least one live node");
            let mut set = vec![nodes[leader_index]];
            let mut followers: Vec<usize> = (0..nodes.len())
                .filter(|&index| index != leader_index)
                .collect();
            // Followers: least loaded first, then in ring order after the leader, which is
            // the classic round-robin layout when loads are equal.
            followers.sort_by_key(|&index| (replicas[&nodes[index]], ring(index, leader_index)));
            set.extend(
                followers
                    .into_iter()
                    .take(factor - 1)
                    .map(|index| nodes[index]),
            );
            for (position, node) in set.iter().enumerate() {
                *replicas.get_mut(node).expect("live node") += 1;
                if position == 0 {
                    *leaders.get_mut(node).expect("live node") += 1;
                }
            }
            set
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[u32]) -> Vec<NodeId> {
        ids.iter().map(|&id| NodeId(id)).collect()
    }

    fn counts(sets: &[Vec<NodeId>]) -> (HashMap<NodeId, usize>, HashMap<NodeId, usize>) {
        let mut replicas = HashMap::new();
        let mut leaders = HashMap::new();
        for set in sets {
            *leaders.entry(set[0]).or_insert(0) += 1;
            for node in set {
                *replicas.entry(*node).or_insert(0) += 1;
            }
        }
        (replicas, leaders)
    }

    fn spread(counts: &HashMap<NodeId, usize>, nodes: usize) -> usize {
        let max = counts.values().copied().max().unwrap_or(0);
        let min = if counts.len() < nodes {
            0
        } else {
            counts.values().copied().min().unwrap_or(0)
        };
        max - min
    }

    #[test]
    fn replicas_and_leaders_are_balanced_and_sets_distinct() {
        for nodes in 1..=5u32 {
            let live: Vec<NodeId> = (1..=nodes).map(NodeId).collect();
            for factor in 1..=nodes as u16 {
                for partitions in 1..=12 {
                    let sets = assign("orders", &live, [], partitions, factor);
                    assert_eq!(sets.len(), partitions as usize);
                    for set in &sets {
                        assert_eq!(set.len(), usize::from(factor));
                        let mut sorted = set.clone();
                        sorted.sort_unstable();
                        sorted.dedup();
                        assert_eq!(sorted.len(), set.len(), "distinct replicas: {set:?}");
                        assert!(set.iter().all(|node| live.contains(node)));
                    }
                    let (replicas, leaders) = counts(&sets);
                    let n = nodes as usize;
                    assert!(
                        spread(&replicas, n) <= 1,
                        "{nodes}/{factor}/{partitions}: {sets:?}"
                    );
                    assert!(
                        spread(&leaders, n) <= 1,
                        "{nodes}/{factor}/{partitions}: {sets:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn existing_load_is_counted_and_dead_nodes_ignored() {
        // Node 1 already leads two partitions and holds three replicas; node 9 is not live.
        let existing = [ids(&[1, 2]), ids(&[1, 3]), ids(&[9, 1])];
        let sets = assign("next", &ids(&[1, 2, 3]), &existing, 2, 1);
        assert_eq!(sets, vec![ids(&[2]), ids(&[3])]);
        let sets = assign("next", &ids(&[1, 2, 3]), &existing, 2, 2);
        let (_, leaders) = counts(&sets);
        assert_eq!(leaders.get(&NodeId(1)), None, "{sets:?}");
    }

    #[test]
    fn three_nodes_three_partitions_factor_three_is_a_rotation() {
        let sets = assign("t", &ids(&[3, 1, 2]), [], 3, 3);
        let (_, leaders) = counts(&sets);
        assert_eq!(leaders.len(), 3, "every node leads one: {sets:?}");
        for set in &sets {
            let first = set[0].0;
            let expected: Vec<NodeId> = (0..3)
                .map(|step| NodeId((first - 1 + step) % 3 + 1))
                .collect();
            assert_eq!(set, &expected, "ring order after the leader");
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_sets() {
        let live = ids(&[1, 2, 3, 4]);
        assert_eq!(assign("a", &live, [], 7, 3), assign("a", &live, [], 7, 3));
    }
}
