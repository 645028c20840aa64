//! The nemesis schedule: which fault, when, for how long and against which nodes, drawn from a
//! seed so that `--seed` replays it. Only "current leaders" targets are resolved when the fault
//! starts (who leads depends on the run); everything else is fixed by the seed.

use serde::{Deserialize, Serialize};

/// A small deterministic generator (SplitMix64): the schedule must not depend on a crate's
/// algorithm changing between versions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6a09_e667_f3bc_c908)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high]` (inclusive).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "empty range {low}..={high}");
        low + self.next_u64() % (high - low + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for index in (1..items.len()).rev() {
            let other = self.range(0, index as u64) as usize;
            items.swap(index, other);
        }
    }
}

/// Fault kinds, as `--faults` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    Clock,
    Client,
    /// A client without the cluster secret sends forged peer traffic (issue 14).
    Hostile,
    /// A follower of the retention topic paused while retention passes it (see
    /// `crate::retention`).
    Retention,
    /// The leader of a partition of the compacted topic killed while it decides and applies
    /// compactions, restarted at the end (see `crate::compaction`).
    Compaction,
    /// A power cut of a majority or of every node at one instant: SIGKILL, and every write
    /// not yet fsynced is lost (their data directories are `cairn-powerfs` mounts, see
    /// `crate::power`).
    Power,
}

impl FaultKind {
    pub fn parse_list(text: &str) -> Result<Vec<FaultKind>, String> {
        let mut kinds = Vec::new();
        for name in text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            let kind = match name {
                "kill" => FaultKind::Kill,
                "pause" => FaultKind::Pause,
                "partition" => FaultKind::Partition,
                "clock" => FaultKind::Clock,
                "client" => FaultKind::Client,
                "hostile" => FaultKind::Hostile,
                "retention" => FaultKind::Retention,
                "compaction" => FaultKind::Compaction,
                "power" => FaultKind::Power,
                other => {
                    return Err(format!(
                        "unknown fault kind {other:?} (kill, pause, partition, clock, client, \
                         hostile, retention, compaction, power)"
                    ))
                }
            };
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    }
}

/// Which nodes a process or clock fault hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    Nodes(Vec<u32>),
    /// The nodes leading the most partitions of the campaign's topic when the fault starts,
    /// at most a minority of them.
    Leaders,
}

/// The shape of a network partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// These nodes see nobody (and nobody sees them).
    Isolate(Targets),
    /// Two sides that do not see each other.
    Split {
        minority: Vec<u32>,
        majority: Vec<u32>,
    },
    /// Nodes on a ring see their neighbours only: each sees a majority, no two the same one.
    Ring(Vec<u32>),
    /// Two halves that see the bridge node but not each other.
    Bridge {
        left: Vec<u32>,
        bridge: u32,
        right: Vec<u32>,
    },
    /// Packets from `from` to every other node are dropped (it hears them, they do not hear
    /// it), or the reverse when `deaf` (it speaks, hears nothing).
    OneWay { node: u32, deaf: bool },
}

/// How a clock fault skews a node's clocks (with libfaketime, for the node's whole run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skew {
    /// Every clock, monotonic included, runs at this rate.
    Rate(f64),
    /// The wall clock jumps by this many seconds; monotonic clocks are untouched.
    WallJump(i64),
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL at the start, restart at the end.
    Kill {
        targets: Targets,
    },
    /// SIGSTOP at the start, SIGCONT at the end.
    Pause {
        targets: Targets,
    },
    Partition {
        shape: Shape,
    },
    /// The node restarts with skewed clocks at the start, and normally at the end.
    Clock {
        node: u32,
        skew: Skew,
    },
    /// One workload client is dropped without closing, and replaced by a new one.
    ClientCrash {
        client: u32,
    },
    /// A client without the cluster secret forges peer traffic to these nodes all window.
    Hostile {
        nodes: Vec<u32>,
    },
    /// SIGSTOP of a follower of the retention topic at the start (`fallback` when its leader
    /// cannot be learned), SIGCONT at the end: retention passes its log end meanwhile.
    Retention {
        fallback: u32,
    },
    /// SIGKILL of the leader of this partition of the compacted topic at the start
    /// (`fallback` when its leader cannot be learned), restart at the end.
    Compaction {
        partition: u32,
        fallback: u32,
    },
    /// SIGKILL of these nodes at one instant and their unsynced writes dropped at the start,
    /// restart at the end.
    Power {
        nodes: Vec<u32>,
    },
}

impl Fault {
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Kill { .. } => FaultKind::Kill,
            Fault::Pause { .. } => FaultKind::Pause,
            Fault::Partition { .. } => FaultKind::Partition,
            Fault::Clock { .. } => FaultKind::Clock,
            Fault::ClientCrash { .. } => FaultKind::Client,
            Fault::Hostile { .. } => FaultKind::Hostile,
            Fault::Retention { .. } => FaultKind::Retention,
            Fault::Compaction { .. } => FaultKind::Compaction,
            Fault::Power { .. } => FaultKind::Power,
        }
    }
}

/// A fault with its window, in milliseconds since the campaign started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    pub start_ms: u64,
    pub end_ms: u64,
    pub fault: Fault,
}

/// What the schedule is drawn for.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    pub seed: u64,
    pub nodes: u32,
    pub kinds: Vec<FaultKind>,
    /// Faults start after this (the cluster and workload warm up).
    pub warmup_ms: u64,
    /// No fault is active after this (heal, then drain).
    pub faults_until_ms: u64,
    /// Largest clock rate deviation from 1 (e.g. 0.02 for 0.98..1.02).
    pub clock_rate_max_deviation: f64,
    /// Workload clients a client crash picks from.
    pub clients: u32,
}

fn pick(rng: &mut Rng, nodes: u32, count: usize) -> Vec<u32> {
    let mut all: Vec<u32> = (1..=nodes).collect();
    rng.shuffle(&mut all);
    all.truncate(count);
    all.sort();
    all
}

/// The whole schedule: one fault at a time, each active 3-10 s, separated by quiet periods of
/// 2-6 s (every fifth one 10-15 s), so a fault starts every 5-16 s.
pub fn plan(config: &PlanConfig) -> Vec<Planned> {
    let mut rng = Rng::new(config.seed);
    let mut planned = Vec::new();
    if config.kinds.is_empty() || config.nodes == 0 {
        return planned;
    }
    let nodes = config.nodes;
    let minority = ((nodes - 1) / 2).max(1) as usize;
    let mut at = config.warmup_ms;
    loop {
        let active_ms = rng.range(3_000, 10_000);
        if at + active_ms > config.faults_until_ms {
            break;
        }
        let kind = config.kinds[rng.range(0, config.kinds.len() as u64 - 1) as usize];
        let fault = match kind {
            FaultKind::Kill => Fault::Kill {
                targets: match rng.range(0, 9) {
                    0..=5 => Targets::Nodes(pick(&mut rng, nodes, 1)),
                    6..=8 => Targets::Nodes(pick(&mut rng, nodes, minority)),
                    _ => Targets::Nodes(pick(&mut rng, nodes, nodes as usize)),
                },
            },
            FaultKind::Pause => Fault::Pause {
                targets: match rng.range(0, 2) {
                    0 => Targets::Nodes(pick(&mut rng, nodes, 1)),
                    1 => Targets::Nodes(pick(&mut rng, nodes, minority)),
                    _ => Targets::Leaders,
                },
            },
            FaultKind::Partition => Fault::Partition {
                shape: partition_shape(&mut rng, nodes, minority),
            },
            FaultKind::Clock => {
                let skew = if rng.range(0, 3) == 0 {
                    let hours = rng.range(1, 48) as i64 * 3_600;
                    Skew::WallJump(if rng.range(0, 1) == 0 { hours } else { -hours })
                } else {
                    let deviation = config.clock_rate_max_deviation * (2.0 * rng.unit() - 1.0);
                    Skew::Rate(((1.0 + deviation) * 10_000.0).round() / 10_000.0)
                };
                Fault::Clock {
                    node: pick(&mut rng, nodes, 1)[0],
                    skew,
                }
            }
            FaultKind::Client => Fault::ClientCrash {
                client: rng.range(0, config.clients.max(1) as u64 - 1) as u32,
            },
            FaultKind::Hostile => Fault::Hostile {
                nodes: match rng.range(0, 1) {
                    0 => pick(&mut rng, nodes, 1),
                    _ => (1..=nodes).collect(),
                },
            },
            FaultKind::Retention => Fault::Retention {
                fallback: pick(&mut rng, nodes, 1)[0],
            },
            FaultKind::Compaction => Fault::Compaction {
                partition: rng.range(0, u64::from(crate::compaction::COMPACTED_PARTITIONS) - 1)
                    as u32,
                fallback: pick(&mut rng, nodes, 1)[0],
            },
            // A majority loses power (the acknowledged writes then live on the survivors and
            // on what the majority synced), or everyone does (only what was synced remains).
            FaultKind::Power => Fault::Power {
                nodes: match rng.range(0, 1) {
                    0 => pick(&mut rng, nodes, nodes as usize / 2 + 1),
                    _ => (1..=nodes).collect(),
                },
            },
        };
        planned.push(Planned {
            start_ms: at,
            end_ms: at + active_ms,
            fault,
        });
        let quiet_ms = if planned.len() % 5 == 0 {
            rng.range(10_000, 15_000)
        } else {
            rng.range(2_000, 6_000)
        };
        at += active_ms + quiet_ms;
    }
    planned
}

fn partition_shape(rng: &mut Rng, nodes: u32, minority: usize) -> Shape {
    let mut all: Vec<u32> = (1..=nodes).collect();
    rng.shuffle(&mut all);
    // A ring needs five nodes: with three, neighbours are everyone.
    let shapes = if nodes >= 5 { 6 } else { 5 };
    match rng.range(0, shapes - 1) {
        0 => Shape::Isolate(Targets::Nodes(vec![all[0]])),
        1 => Shape::Isolate(Targets::Leaders),
        2 => {
            let mut minority_side = all[..minority].to_vec();
            let mut majority_side = all[minority..].to_vec();
            minority_side.sort();
            majority_side.sort();
            Shape::Split {
                minority: minority_side,
                majority: majority_side,
            }
        }
        3 => {
            let half = (all.len() - 1) / 2;
            let mut left = all[..half].to_vec();
            let mut right = all[half + 1..].to_vec();
            left.sort();
            right.sort();
            Shape::Bridge {
                left,
                bridge: all[half],
                right,
            }
        }
        4 => Shape::OneWay {
            node: all[0],
            deaf: rng.range(0, 1) == 1,
        },
        _ => Shape::Ring(all),
    }
}

/// The (from, to) node pairs a shape drops, given the resolved isolated set for
/// [`Targets::Leaders`].
pub fn drops(shape: &Shape, nodes: u32, leaders: &[u32]) -> Vec<(u32, u32)> {
    let all: Vec<u32> = (1..=nodes).collect();
    let mut pairs = Vec::new();
    let cut = |a: u32, b: u32, pairs: &mut Vec<(u32, u32)>| {
        if a != b {
            pairs.push((a, b));
            pairs.push((b, a));
        }
    };
    match shape {
        Shape::Isolate(targets) => {
            let isolated: &[u32] = match targets {
                Targets::Nodes(nodes) => nodes,
                Targets::Leaders => leaders,
            };
            for a in isolated {
                for b in all.iter().filter(|b| !isolated.contains(b)) {
                    cut(*a, *b, &mut pairs);
                }
            }
        }
        Shape::Split { minority, majority } => {
            for a in minority {
                for b in majority {
                    cut(*a, *b, &mut pairs);
                }
            }
        }
        Shape::Ring(order) => {
            // Each node keeps its neighbours within `reach` ring steps: itself and 2 * reach
            // others, the smallest such set that is a majority.
            let n = order.len();
            let reach = (n / 2).div_ceil(2);
            for i in 0..n {
                for j in i + 1..n {
                    let distance = (j - i).min(n - (j - i));
                    if distance > reach {
                        cut(order[i], order[j], &mut pairs);
                    }
                }
            }
        }
        Shape::Bridge { left, right, .. } => {
            for a in left {
                for b in right {
                    cut(*a, *b, &mut pairs);
                }
            }
        }
        Shape::OneWay { node, deaf } => {
            for other in all.iter().filter(|other| *other != node) {
                if *deaf {
                    pairs.push((*other, *node));
                } else {
                    pairs.push((*node, *other));
                }
            }
        }
    }
    pairs.sort();
    pairs.dedup();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64, kinds: &[FaultKind]) -> PlanConfig {
        PlanConfig {
            seed,
            nodes: 5,
            kinds: kinds.to_vec(),
            warmup_ms: 5_000,
            faults_until_ms: 300_000,
            clock_rate_max_deviation: 0.02,
            clients: 4,
        }
    }

    #[test]
    fn a_seed_replays_its_schedule_and_another_seed_differs() {
        let all = [
            FaultKind::Kill,
            FaultKind::Pause,
            FaultKind::Partition,
            FaultKind::Clock,
            FaultKind::Client,
            FaultKind::Hostile,
        ];
        let first = plan(&config(7, &all));
        assert_eq!(first, plan(&config(7, &all)));
        assert_ne!(first, plan(&config(8, &all)));
        assert!(first.len() >= 20, "{} faults in 300 s", first.len());
        for pair in first.windows(2) {
            let gap = pair[1].start_ms - pair[0].start_ms;
            assert!((5_000..=25_000).contains(&gap), "{gap} ms between faults");
            assert!(pair[0].end_ms < pair[1].start_ms, "faults overlap");
        }
        assert!(first.last().unwrap().end_ms <= 300_000);
        let kinds: std::collections::BTreeSet<FaultKind> =
            first.iter().map(|planned| planned.fault.kind()).collect();
        assert_eq!(kinds.len(), all.len(), "every kind appears: {kinds:?}");
        for planned in &first {
            if let Fault::Clock {
                skew: Skew::Rate(rate),
                ..
            } = planned.fault
            {
                assert!((0.98..=1.02).contains(&rate), "{rate}");
            }
        }
    }

    #[test]
    fn only_the_chosen_kinds_are_planned() {
        let planned = plan(&config(3, &[FaultKind::Pause]));
        assert!(!planned.is_empty());
        assert!(planned
            .iter()
            .all(|planned| planned.fault.kind() == FaultKind::Pause));
        assert_eq!(
            FaultKind::parse_list("kill, pause").unwrap(),
            vec![FaultKind::Kill, FaultKind::Pause]
        );
        assert_eq!(
            FaultKind::parse_list("retention").unwrap(),
            vec![FaultKind::Retention]
        );
        let retention = plan(&config(5, &[FaultKind::Retention]));
        assert!(!retention.is_empty());
        assert!(retention.iter().all(|planned| matches!(
            planned.fault,
            Fault::Retention { fallback } if (1..=5).contains(&fallback)
        )));
        assert_eq!(
            FaultKind::parse_list("retention,compaction").unwrap(),
            vec![FaultKind::Retention, FaultKind::Compaction]
        );
        let compaction = plan(&config(3, &[FaultKind::Compaction]));
        assert!(!compaction.is_empty());
        assert!(compaction.iter().all(|planned| matches!(
            planned.fault,
            Fault::Compaction { partition, fallback }
                if partition < 2 && (1..=5).contains(&fallback)
        )));
        assert!(compaction
            .iter()
            .any(|planned| matches!(planned.fault, Fault::Compaction { partition: 1, .. })));
        assert!(FaultKind::parse_list("kill,flood").is_err());
        let power = plan(&config(6, &[FaultKind::Power]));
        assert!(!power.is_empty());
        for planned in &power {
            let Fault::Power { nodes } = &planned.fault else {
                panic!("{planned:?}");
            };
            assert!(
                nodes.len() == 3 || nodes.len() == 5,
                "a majority or all: {nodes:?}"
            );
        }
        assert!(power
            .iter()
            .any(|planned| matches!(&planned.fault, Fault::Power { nodes } if nodes.len() == 5)));
    }

    /// Which nodes each node can send to under `pairs`.
    fn reach(nodes: u32, pairs: &[(u32, u32)]) -> Vec<Vec<u32>> {
        (1..=nodes)
            .map(|a| (1..=nodes).filter(|b| !pairs.contains(&(a, *b))).collect())
            .collect()
    }

    #[test]
    fn a_ring_gives_each_node_a_different_majority() {
        let pairs = drops(&Shape::Ring(vec![1, 2, 3, 4, 5]), 5, &[]);
        let seen = reach(5, &pairs);
        assert_eq!(seen[0], vec![1, 2, 5]);
        assert_eq!(seen[2], vec![2, 3, 4]);
        let distinct: std::collections::BTreeSet<&Vec<u32>> = seen.iter().collect();
        assert_eq!(distinct.len(), 5);
        assert!(seen.iter().all(|majority| majority.len() == 3));
    }

    #[test]
    fn shapes_cut_what_they_say() {
        let bridge = Shape::Bridge {
            left: vec![1, 2],
            bridge: 3,
            right: vec![4, 5],
        };
        let seen = reach(5, &drops(&bridge, 5, &[]));
        assert_eq!(seen[0], vec![1, 2, 3]);
        assert_eq!(seen[2], vec![1, 2, 3, 4, 5]);
        let one_way = drops(
            &Shape::OneWay {
                node: 2,
                deaf: false,
            },
            3,
            &[],
        );
        assert_eq!(one_way, vec![(2, 1), (2, 3)]);
        let deaf = drops(
            &Shape::OneWay {
                node: 2,
                deaf: true,
            },
            3,
            &[],
        );
        assert_eq!(deaf, vec![(1, 2), (3, 2)]);
        let leaders = drops(&Shape::Isolate(Targets::Leaders), 3, &[3]);
        assert_eq!(leaders, vec![(1, 3), (2, 3), (3, 1), (3, 2)]);
        let split = Shape::Split {
            minority: vec![1],
            majority: vec![2, 3],
        };
        assert_eq!(reach(3, &drops(&split, 3, &[]))[1], vec![2, 3]);
    }
}
