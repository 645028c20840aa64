#!/usr/bin/env bash
# Shows that a chaos campaign catches a node that breaks a safety rule. The node is built with
# one cairn-replica `broken-*` feature (forwarded by cairn-node), copied out of the target
# directory, and the normal build is restored (cached: only a re-link). Then short campaigns
# run against the broken binary until the checker reports lost or diverging data; the script
# fails if none of them does.
#
# Usage: scripts/chaos-broken.sh [feature]   (default broken-ack-before-majority)
# Builds share CARGO_TARGET_DIR with the main build; only cairn-replica and cairn-node are
# rebuilt for the feature.
set -euo pipefail
cd "$(dirname "$0")/.."

feature="${1:-broken-ack-before-majority}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
# Seeds tried in turn; a broken build is normally caught by the first.
seeds=(11 12 13)
run_seconds_max=300

# Both builds resolve the features of the workspace's test build (`--examples` and `--tests`
# turn dev-dependencies on, as `cargo test --workspace` does), so after the test suite only
# cairn-replica and cairn-node are compiled again for the feature (about 20 s). A build of
# `-p cairn-node` alone resolves other features and rebuilds most dependencies (2 minutes).
cargo build --workspace --bin cairn --examples --locked --features "cairn-node/$feature"
broken="$target/cairn-$feature"
cp "$target/debug/cairn" "$broken"
# Restore the normal node binary and examples, and build the campaign runner.
cargo build --workspace --bins --tests --examples --locked

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for seed in "${seeds[@]}"; do
    status=0
    timeout "$run_seconds_max" "$target/debug/cairn-chaos" run --nodes 3 --duration 60s \
        --faults partition --seed "$seed" --binary "$broken" --out "$out/seed-$seed" \
        >"$out/seed-$seed.log" 2>&1 || status=$?
    caught=$(grep -E '^\| (lost|unseen|replica_divergence|replica_missing|inconsistent_offsets) \| [1-9]' \
        "$out/seed-$seed.log" || true)
    if grep -q 'network Host' "$out/seed-$seed.log"; then
        # Without a namespace there are no partitions, and an isolated leader acknowledging
        # alone is what this broken build is caught by; say so loudly rather than fail CI for
        # a missing privilege.
        echo "chaos-broken: SKIPPED: no private network namespace here (needs root and" \
            "unshare); partitions are what catch $feature" >&2
        exit 0
    fi
    if [ "$status" -eq 1 ] && [ -n "$caught" ]; then
        echo "chaos-broken: $feature caught with seed $seed:"
        echo "$caught"
        exit 0
    fi
    echo "chaos-broken: $feature not caught with seed $seed (exit $status)"
    tail -30 "$out/seed-$seed.log"
done
echo "chaos-broken: $feature was NOT caught by ${#seeds[@]} campaigns" >&2
exit 1
