//! The local view of the cluster, as a pure state machine: observations in, typed changes out.
//!
//! Each observation round lists every node incarnation chitchat knows, decoded, with `alive`
//! set from the failure detector. [`View::apply`] keys them by node id, keeps for each id the
//! highest live generation, ignores generations lower than one already seen, and returns the
//! [`ClusterChange`]s that turn the previous view into the new one. No I/O and no clock, so
//! every rule is tested by feeding observations.

use std::collections::{BTreeMap, BTreeSet};

use cairn_protocol::NodeId;

use crate::node::{ClusterChange, NodeInfo};

#[derive(Debug, Default)]
pub(crate) struct View {
    nodes: BTreeMap<NodeId, NodeInfo>,
}

impl View {
    /// Every node in the view, alive or not, ordered by node id.
    pub(crate) fn snapshot(&self) -> Vec<NodeInfo> {
        self.nodes.values().cloned().collect()
    }

    /// Folds one observation round into the view and returns the changes, ordered by node id.
    ///
    /// Rules, per node id:
    /// - the highest live generation is the node, unless the view already holds a higher
    ///   generation (a lower generation is a dead or stale incarnation and is ignored);
    /// - a node that was not alive in the view and now is: `Joined`;
    /// - an alive node whose information changed (including its generation): `Updated`;
    /// - an alive node with no acceptable live incarnation: `Left`, kept as not alive;
    /// - a not-alive node that chitchat no longer knows at its generation or above is forgotten
    ///   silently (its `Left` was already emitted).
    pub(crate) fn apply(&mut self, observed: &[NodeInfo]) -> Vec<ClusterChange> {
        let mut best_live: BTreeMap<NodeId, &NodeInfo> = BTreeMap::new();
        let mut highest_known: BTreeMap<NodeId, u64> = BTreeMap::new();
        for info in observed {
            let highest = highest_known.entry(info.node_id).or_insert(0);
            *highest = (*highest).max(info.generation.0);
            if info.alive {
                let best = best_live.entry(info.node_id).or_insert(info);
                if info.generation > best.generation {
                    *best = info;
                }
            }
        }
        let ids: BTreeSet<NodeId> = self
            .nodes
            .keys()
            .chain(highest_known.keys())
            .copied()
            .collect();
        let mut changes = Vec::new();
        for node_id in ids {
            let previous = self.nodes.get(&node_id);
            let candidate = best_live.get(&node_id).filter(|candidate| {
                previous.is_none_or(|previous| candidate.generation >= previous.generation)
            });
            match (candidate, previous) {
                (Some(candidate), previous) => {
                    let mut current = (*candidate).clone();
                    current.alive = true;
                    match previous {
                        Some(previous) if previous.alive => {
                            if *previous != current {
                                changes.push(ClusterChange::Updated(current.clone()));
                            }
                        }
                        _ => changes.push(ClusterChange::Joined(current.clone())),
                    }
                    self.nodes.insert(node_id, current);
                }
                (None, Some(previous)) if previous.alive => {
                    changes.push(ClusterChange::Left(node_id));
                    if let Some(previous) = self.nodes.get_mut(&node_id) {
                        previous.alive = false;
                    }
                }
                (None, Some(previous)) => {
                    let still_known = highest_known
                        .get(&node_id)
                        .is_some_and(|highest| *highest >= previous.generation.0);
                    if !still_known {
                        self.nodes.remove(&node_id);
                    }
                }
                // Known to chitchat but not alive yet (or only at an ignored generation): the
                // node has not joined this view.
                (None, None) => {}
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Generation;
    use crate::hints::LeadershipHints;
    use cairn_protocol::{Epoch, PartitionId};

    fn node(id: u32, generation: u64, alive: bool) -> NodeInfo {
        NodeInfo {
            node_id: NodeId(id),
            generation: Generation(generation),
            gossip_addr: format!("127.0.0.1:{}", 7000 + id).parse().unwrap(),
            client_addr: format!("127.0.0.1:{}", 9000 + id).parse().unwrap(),
            peer_addr: format!("127.0.0.1:{}", 9500 + id).parse().unwrap(),
            kafka_addr: None,
            http_addr: None,
            ready: false,
            alive,
            hints: LeadershipHints::new(),
        }
    }

    fn alive(info: NodeInfo) -> NodeInfo {
        NodeInfo {
            alive: true,
            ..info
        }
    }

    #[test]
    fn join_update_leave_and_rejoin() {
        let mut view = View::default();
        assert_eq!(view.apply(&[node(1, 1, false)]), vec![], "not live yet");
        assert_eq!(
            view.apply(&[node(1, 1, true), node(2, 1, true)]),
            vec![
                ClusterChange::Joined(node(1, 1, true)),
                ClusterChange::Joined(node(2, 1, true))
            ]
        );
        assert_eq!(view.apply(&[node(1, 1, true), node(2, 1, true)]), vec![]);

        let mut ready = node(2, 1, true);
        ready.ready = true;
        ready.hints.insert("t", PartitionId(0), Epoch(4)).unwrap();
        assert_eq!(
            view.apply(&[node(1, 1, true), ready.clone()]),
            vec![ClusterChange::Updated(ready.clone())]
        );

        let mut dead = ready.clone();
        dead.alive = false;
        assert_eq!(
            view.apply(&[node(1, 1, true), dead.clone()]),
            vec![ClusterChange::Left(NodeId(2))]
        );
        assert_eq!(view.snapshot()[1], dead, "a left node stays, not alive");
        assert_eq!(view.apply(&[node(1, 1, true), dead.clone()]), vec![]);
        assert_eq!(
            view.apply(&[node(1, 1, true), ready.clone()]),
            vec![ClusterChange::Joined(ready)]
        );
    }

    #[test]
    fn a_new_generation_replaces_the_old_and_old_ones_are_ignored() {
        let mut view = View::default();
        view.apply(&[node(1, 10, true)]);
        // The restarted process is known but not yet live: the old incarnation still stands.
        assert_eq!(view.apply(&[node(1, 10, true), node(1, 20, false)]), vec![]);
        assert_eq!(
            view.apply(&[node(1, 10, true), node(1, 20, true)]),
            vec![ClusterChange::Updated(node(1, 20, true))]
        );
        // The old incarnation dying, or coming back, changes nothing.
        assert_eq!(view.apply(&[node(1, 10, false), node(1, 20, true)]), vec![]);
        assert_eq!(view.apply(&[node(1, 10, true), node(1, 20, true)]), vec![]);
        // Only the old incarnation live: it is stale, so the node has left.
        assert_eq!(
            view.apply(&[node(1, 10, true), node(1, 20, false)]),
            vec![ClusterChange::Left(NodeId(1))]
        );
        assert_eq!(view.snapshot(), vec![node(1, 20, false)]);
    }

    #[test]
    fn a_restart_after_leaving_joins_with_the_new_generation() {
        let mut view = View::default();
        view.apply(&[node(1, 10, true)]);
        assert_eq!(
            view.apply(&[node(1, 10, false)]),
            vec![ClusterChange::Left(NodeId(1))]
        );
        assert_eq!(
            view.apply(&[node(1, 10, false), node(1, 20, true)]),
            vec![ClusterChange::Joined(node(1, 20, true))]
        );
    }

    #[test]
    fn forgotten_dead_nodes_leave_the_snapshot_silently() {
        let mut view = View::default();
        view.apply(&[node(1, 1, true), node(2, 1, true)]);
        view.apply(&[node(1, 1, true), node(2, 1, false)]);
        assert_eq!(view.snapshot().len(), 2);
        // Chitchat garbage-collected node 2.
        assert_eq!(view.apply(&[node(1, 1, true)]), vec![]);
        assert_eq!(view.snapshot(), vec![alive(node(1, 1, false))]);
        // An alive node that vanishes outright still produces Left first.
        assert_eq!(view.apply(&[]), vec![ClusterChange::Left(NodeId(1))]);
        assert_eq!(view.apply(&[]), vec![]);
        assert!(view.snapshot().is_empty());
    }
}
