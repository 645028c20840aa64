#!/usr/bin/env bash
# Runs the standard workloads (benches/workloads/*.toml) on Cairn, NATS JetStream and Apache
# Kafka and writes report.json, report.md and report.svg into OUT (default: bench-report/).
#
#   scripts/bench-compare.sh [OUT] [WORKLOAD.toml ...] [-- extra cairn-bench-compare flags]
#
# It builds `cairn` (workspace) and `cairn-bench-compare` (benches/compare, a crate outside the
# workspace so CI does not build async-nats) in release, copies the binaries out of the target
# directory (so a parallel build cannot swap them mid-run), and runs them. It needs
# nats-server (Debian: `apt-get install nats-server`; /usr/sbin/nats-server), and for Apache
# Kafka java 17+ and mvn: scripts/apache-kafka.sh fetches Kafka 4.4's jars from Maven Central.
# Systems (`-- --systems a,b,...`, the first is the one the ratios are about): cairn (its own
# client), cairn-kafka (librdkafka through Cairn's Kafka listener), nats-jetstream,
# apache-kafka (librdkafka, the same settings as cairn-kafka; `-- --kafka-fsync` for
# log.flush.interval.messages=1). Default: cairn,nats-jetstream,apache-kafka.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-bench-report}
shift || true
workloads=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do workloads+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ "${#workloads[@]}" -gt 0 ] || workloads=(benches/workloads/*.toml)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || {
    echo "bench-compare: nats-server not found (apt-get install nats-server)" >&2; exit 1; }
cargo build --release -p cairn-node
cargo build --release --manifest-path benches/compare/Cargo.toml
# The default systems, unless the flags name others.
systems=(--systems cairn,nats-jetstream,apache-kafka)
chosen=cairn,nats-jetstream,apache-kafka
previous=
for arg in "$@"; do
    case "$arg" in --systems=*) systems=(); chosen=${arg#--systems=} ;; esac
    if [ "$previous" = --systems ]; then systems=(); chosen=$arg; fi
    previous=$arg
done
case ",$chosen," in *,apache-kafka,*) ./scripts/apache-kafka.sh ;; esac

bin=$(mktemp -d /tmp/cairn-bench-bin.XXXXXX)
trap 'rm -rf "$bin"' EXIT
cp "$CARGO_TARGET_DIR/release/cairn" "$CARGO_TARGET_DIR/release/cairn-bench-compare" "$bin/"
echo "bench-compare: load average $(cut -d' ' -f1-3 /proc/loadavg) before the run" >&2
"$bin/cairn-bench-compare" --out "$out" --cairn-bin "$bin/cairn" "${systems[@]}" \
    --kafka-lib "$CARGO_TARGET_DIR/apache-kafka/lib" "$@" "${workloads[@]}"
