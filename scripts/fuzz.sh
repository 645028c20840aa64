#!/usr/bin/env bash
# Fuzzes the decoders that read untrusted bytes (fuzz/, docs/guarantees.md "Fuzzing"): builds
# the four cargo-fuzz targets once, then runs each for a bounded time from its committed corpus
# (fuzz/corpus/<target>/). Fails on any crash: a panic, a failed oracle, an allocation larger
# than one frame (fuzz/src/lib.rs), an input running over 10 s, or RSS over 1 GiB.
#
#   scripts/fuzz.sh [seconds-per-target]      (default 60)
#
# cargo-fuzz needs a nightly toolchain. Either is installed when missing; a machine where that
# cannot be done prints SKIPPED and exits 0, as CI does for rustfmt and clippy. Inputs found
# along the way go to $CARGO_TARGET_DIR/fuzz-corpus/<target>/ (kept between local runs, never
# committed); crashing inputs to fuzz/artifacts/<target>/, with the command that replays them.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
targets=(frame_codec request_envelope record_batch peer_message)
cargo_fuzz_version=0.13.2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

skip() {
    echo "SKIPPED: $1"
    exit 0
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1 \
        || skip "no nightly toolchain, and rustup could not install one (cargo fuzz needs it)"
fi
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $cargo_fuzz_version"; then
    install_dir="$(mktemp -d)"
    cargo install cargo-fuzz --version "=$cargo_fuzz_version" --locked --force \
        --target-dir "$install_dir" >/dev/null 2>&1 \
        || { rm -rf "$install_dir"; skip "cargo-fuzz $cargo_fuzz_version is not installed and could not be"; }
    rm -rf "$install_dir"
fi
echo "$(cargo +nightly --version), $(cargo fuzz --version)"

# Release code with debug assertions and overflow checks, which turn a silent wrap into a
# crash. No sanitizer: the workspace forbids unsafe code, and without AddressSanitizer each
# target runs two to three times as many inputs in its time.
build_flags=(-O --debug-assertions --sanitizer none)
# cargo fuzz has no --locked: check the fuzz workspace's lockfile first, as CI does elsewhere.
cargo +nightly metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null
(cd fuzz && nice cargo +nightly fuzz build "${build_flags[@]}")
host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
binaries="$CARGO_TARGET_DIR/$host/release"

failed=()
for target in "${targets[@]}"; do
    found="$CARGO_TARGET_DIR/fuzz-corpus/$target"
    artifacts="fuzz/artifacts/$target"
    mkdir -p "$found" "$artifacts"
    log="$(mktemp)"
    # The first folder receives new inputs; the committed corpus is only read. Inputs stay
    # below 8 KiB, so any allocation the size of a frame comes from a length the input claims.
    status=0
    nice "$binaries/$target" "$found" "fuzz/corpus/$target" \
        -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=1024 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1 || status=$?
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    coverage="$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)"
    if [ "$status" -eq 0 ]; then
        echo "$target: ${runs:-?} executions in ${seconds} s, ${coverage:-cov: ?} edges, no crash"
    else
        failed+=("$target")
        echo "$target: FAILED after ${runs:-?} executions (libFuzzer exit $status); its report:"
        # Without a sanitizer libFuzzer warns that it lacks the sanitizer's hooks: noise.
        grep -v -E '^(#[0-9]|INFO:|Dictionary|"|###### |WARNING: Failed to find function)' "$log" \
            | tail -40
        sed -n 's/.*Test unit written to //p' "$log" | while read -r artifact; do
            echo "replay: $binaries/$target $artifact"
        done
    fi
    rm -f "$log"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing failed: ${failed[*]}"
    exit 1
fi
echo "fuzzing: ${#targets[@]} targets, ${seconds} s each, no crash"
