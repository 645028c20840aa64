#!/usr/bin/env bash
# Shows that the deterministic simulation (replica/src/simulation.rs) catches the bugs it exists
# for. cairn-replica has one `broken-*` cargo feature per safety rule of DESIGN section 5, each
# breaking that rule alone; this builds the crate's tests once per feature and requires the
# simulation to FAIL on a seed within the seed set `cargo test` runs, and the failing seed to
# replay to the same failure and trace hash. It exits non-zero if any broken build passes (or
# fails for another reason, such as a compile error).
#
# Usage: scripts/sim-broken.sh [feature ...]   (default: every broken-* feature in
# replica/Cargo.toml). Builds share CARGO_TARGET_DIR with the main build; only cairn-replica
# is rebuilt per feature.
set -euo pipefail
cd "$(dirname "$0")/.."

# The seed set is the one `cargo test` runs; CAIRN_SIM_SEEDS alone is honoured (CAIRN_SIM_SEEDS=1
# shows this script failing when a broken build goes uncaught).
unset CAIRN_SIM_SEED CAIRN_SIM_KEEP_GOING CAIRN_SIM_TRACE CAIRN_SIM_VERBOSE

# A broken build normally fails within seconds; this bounds a hang or a very late catch.
run_seconds_max=300

if [ "$#" -gt 0 ]; then
    features=("$@")
else
    mapfile -t features < <(sed -n 's/^\(broken-[a-z-]*\) = \[\]$/\1/p' replica/Cargo.toml)
fi
if [ "${#features[@]}" -eq 0 ]; then
    echo "sim-broken: no broken-* features found in replica/Cargo.toml" >&2
    exit 1
fi

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
passed=()
for feature in "${features[@]}"; do
    log="$log_dir/$feature.log"
    started=$(date +%s)
    if ! cargo test -p cairn-replica --lib --locked --features "$feature" --no-run \
        >"$log" 2>&1; then
        cat "$log" >&2
        echo "sim-broken: $feature: the build failed" >&2
        exit 1
    fi
    binary=$(sed -n 's/^ *Executable unittests src\/lib.rs (\(.*\))$/\1/p' "$log")
    if [ ! -x "$binary" ]; then
        cat "$log" >&2
        echo "sim-broken: $feature: no test binary in cargo's output" >&2
        exit 1
    fi
    # Expected to fail: a simulation test stops at its first failing seed. Three replicas
    # first, five only if three did not catch it, so a catch does not wait for the other
    # test's full seed set. The binary runs directly (not under cargo) so that the timeout
    # reaches it and no build lock is held.
    status=0
    for test in simulation::simulated_three_ simulation::simulated_five_; do
        timeout "$run_seconds_max" "$binary" "$test" >"$log" 2>&1 || status=$?
        if [ "$status" -ne 0 ]; then
            break
        fi
    done
    elapsed=$(($(date +%s) - started))
    caught=$(grep -m1 -E '^simulation seed [0-9]+ .* failed' "$log" || true)
    if [ "$status" -ne 0 ] && [ -n "$caught" ]; then
        reason=$(grep -m1 -A1 "panicked at" "$log" | tail -1 || true)
        echo "sim-broken: $feature: caught (${elapsed} s): $reason"
        echo "    $caught"
        # The failing seed must replay exactly: the same failure at the same trace hash.
        seed=$(sed -n 's/^simulation seed \([0-9]*\) .*/\1/p' <<<"$caught")
        hash=$(sed -n 's/.*trace hash \([0-9a-f]*\);.*/\1/p' <<<"$caught")
        name=$(sed -n 's/.* -- \(simulation::[a-z_]*\) --exact.*/\1/p' <<<"$caught")
        replayed=$(CAIRN_SIM_SEED="$seed" timeout "$run_seconds_max" "$binary" "$name" --exact \
            2>&1 | grep -m1 -E '^simulation seed [0-9]+ .* failed' || true)
        if [ "$replayed" != "$caught" ]; then
            echo "sim-broken: $feature: seed $seed did not replay to trace hash $hash:" >&2
            echo "    ${replayed:-(no failure)}" >&2
            exit 1
        fi
        echo "    replayed: same failure, trace hash $hash"
    else
        tail -20 "$log" >&2
        echo "sim-broken: $feature: NOT caught (exit $status, ${elapsed} s)" >&2
        passed+=("$feature")
    fi
done

if [ "${#passed[@]}" -gt 0 ]; then
    echo "sim-broken: the simulation missed: ${passed[*]}" >&2
    exit 1
fi
echo "sim-broken: all ${#features[@]} broken builds were caught by the simulation"
