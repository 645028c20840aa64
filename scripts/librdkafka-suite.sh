#!/usr/bin/env bash
# librdkafka's own integration tests (tests/0nnn-*: its `test-runner`) against a real 3-node
# Cairn cluster from this build, started with `cairn dev` on 127.0.0.1.
#
# Where the suite comes from: the crates.io crate rdkafka-sys bundles the whole librdkafka tree,
# tests included. Cargo fetches the pinned version (a throwaway manifest that depends on it;
# nothing is compiled by Cargo), the script checks the .crate's sha256 against the pin below,
# unpacks it under $CARGO_TARGET_DIR/librdkafka-suite and builds librdkafka and test-runner there
# with its own ./configure and make (no TLS, SASL, curl or zstd: no test this script runs needs
# them against Cairn). Download and build are skipped when already done for that version.
#
# How the suite is pointed at Cairn: test.conf names the bootstrap brokers; TEST_KAFKA_VERSION
# is the broker version the runner gates tests on (see broker_version below). Each test number
# runs as its own test-runner process (a test that times out kills its whole process: the
# runner SIGKILLs the test thread), bounded by the runner's own per-test timeouts and by
# `timeout`; the whole run stops starting tests after LIBRDKAFKA_SUITE_TIMEOUT seconds.
#
# scripts/librdkafka-suite.allow says what each test is expected to do, one test a line:
#   NAME pass                 expected to pass (run by --allowed too)
#   NAME slow                 expected to pass, but takes long: not run by --allowed
#   NAME fail  # cause        expected to fail (runs; failing is fine, passing fails the script)
#   NAME flaky  # cause       runs; may pass or fail
#   NAME skip  # cause        not run at all (needs what Cairn does not have, or too slow)
# NAME is the runner's test name (0001_multiobj). Local tests (no broker: they test librdkafka,
# not Cairn) are never run. Exit status: 0 when every test did what the list says; 1 when a
# `pass` or `slow` test failed (or did not run in time), a `fail` test passed (so the list shrinks), or a
# test is missing from the list; 2 when the suite could not run at all. The cluster is stopped
# on every exit path.
#
# Usage: scripts/librdkafka-suite.sh [--apt] [--allowed] [TEST_NUMBER...]
#   --apt      install missing Debian build dependencies with apt-get first
#   --allowed  run only the `pass` tests (a shorter run: about 10 minutes)
#   TEST_NUMBER...  run only these test numbers (e.g. 0001 0012)
# Environment: CAIRN_BIN (default: $CARGO_TARGET_DIR/debug/cairn, built if missing),
# LIBRDKAFKA_SUITE_TIMEOUT (seconds after which no further test starts, default 2700),
# LIBRDKAFKA_SUITE_TEST_TIMEOUT (hard bound per test process, default 240),
# LIBRDKAFKA_SUITE_KEEP=1 (keep the work directory with every test's log).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# The rdkafka-sys crate that bundles the suite, and the sha256 of its .crate file (the checksum
# crates.io's index and Cargo.lock record). To follow another version, change both lines.
rdkafka_sys_version=4.9.0+2.10.0
rdkafka_sys_sha256=5230dca48bc354d718269f3e4353280e188b610f7af7e2fcf54b7a79d5802872

# The broker version the runner gates tests on: Kafka 2.8 is the release whose API versions
# match what Cairn's ApiVersions advertises best (Fetch 12, Metadata 11+, ListOffsets 6+,
# DescribeCluster, no Fetch 13 topic ids).
broker_version=2.8.0

allow=$repo/scripts/librdkafka-suite.allow
target=${CARGO_TARGET_DIR:-$repo/target}
cairn=${CAIRN_BIN:-$target/debug/cairn}
suite_timeout=${LIBRDKAFKA_SUITE_TIMEOUT:-2700}
test_timeout=${LIBRDKAFKA_SUITE_TEST_TIMEOUT:-240}
root=$target/librdkafka-suite

say() { printf 'librdkafka-suite: %s\n' "$*" >&2; }

apt=0
only_allowed=0
numbers=()
for arg in "$@"; do
    case "$arg" in
        --apt) apt=1 ;;
        --allowed) only_allowed=1 ;;
        [0-9][0-9][0-9][0-9]) numbers+=("$arg") ;;
        *) say "unknown argument: $arg"; exit 2 ;;
    esac
done

if [ "$apt" = 1 ]; then
    missing=()
    for package in build-essential zlib1g-dev pkg-config python3; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
fi

# The crate, from Cargo's own download cache, fetched through a manifest that depends on it.
crate=$root/rdkafka-sys-$rdkafka_sys_version.crate
if ! echo "$rdkafka_sys_sha256  $crate" | sha256sum --check --status 2>/dev/null; then
    mkdir -p "$root/fetch"
    cat >"$root/fetch/Cargo.toml" <<EOF
# Written by scripts/librdkafka-suite.sh: only to have Cargo download rdkafka-sys.
[package]
name = "librdkafka-suite-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[lib]
path = "lib.rs"

[dependencies]
rdkafka-sys = { version = "=$rdkafka_sys_version", default-features = false }

[workspace]
EOF
    : >"$root/fetch/lib.rs"
    say "fetching rdkafka-sys $rdkafka_sys_version with cargo"
    timeout 300 cargo fetch --quiet --manifest-path "$root/fetch/Cargo.toml" \
        || { say "cargo cannot fetch rdkafka-sys $rdkafka_sys_version"; exit 2; }
    cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"rdkafka-sys-$rdkafka_sys_version.crate" 2>/dev/null | head -n 1)
    [ -n "$cached" ] || { say "the crate is not in Cargo's download cache"; exit 2; }
    if ! echo "$rdkafka_sys_sha256  $cached" | sha256sum --check --status; then
        say "sha256 mismatch for $cached (expected $rdkafka_sys_sha256)"
        exit 2
    fi
    cp "$cached" "$crate"
fi

# librdkafka and test-runner, built once per version (the stamp is written last).
tree=$root/rdkafka-sys-$rdkafka_sys_version/librdkafka
tests=$tree/tests
if [ ! -e "$tests/.cairn-built" ] || [ ! -x "$tests/test-runner" ]; then
    rm -rf "$root/rdkafka-sys-$rdkafka_sys_version"
    tar -xzf "$crate" -C "$root"
    say "building librdkafka and its test-runner (make -j2)"
    build_start=$SECONDS
    (
        cd "$tree"
        # Unoptimized: the build takes about half as long, and the tests measure Cairn.
        ./configure --disable-optimization --disable-ssl --disable-gssapi --disable-curl \
            --disable-zstd --disable-lz4-ext --enable-zlib >"$root/configure.log" 2>&1
        make -j2 libs >"$root/make.log" 2>&1
        make -j2 -C tests test-runner >>"$root/make.log" 2>&1
    ) || { say "build failed: see $root/configure.log and $root/make.log"; exit 2; }
    touch "$tests/.cairn-built"
    say "built in $((SECONDS - build_start)) s"
fi

if [ ! -x "$cairn" ]; then
    say "building $cairn"
    cargo build -p cairn-node --bin cairn --locked
fi

# The tests to run, from the runner's own table (tests/test.c), without local tests; each with
# its expectation from the list. A test the list does not name runs, and fails the script.
work=$(mktemp -d "${TMPDIR:-/tmp}/librdkafka-suite.XXXXXX")
python3 - "$tests/test.c" "$allow" "$only_allowed" "${numbers[@]}" >"$work/plan" <<'EOF' \
    || { say "cannot read the test table or the list"; exit 2; }
import re, sys
source, allow_path, only_allowed, numbers = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4:]
text = open(source).read()
start = text.index("struct test tests[]")
table = text[start:text.index("{NULL}", start)]
names = [name for name, flags in re.findall(r"_TEST\(\s*(\w+)\s*,\s*([^,)]*)", table)
         if name[:1] == "0" and "TEST_F_LOCAL" not in flags]
expect = {}
for line in open(allow_path):
    line = line.split("#", 1)[0].split()
    if not line:
        continue
    if len(line) != 2 or line[1] not in ("pass", "slow", "fail", "flaky", "skip"):
        sys.exit(f"bad line in {allow_path}: {' '.join(line)}")
    expect[line[0]] = line[1]
for name in names:
    if numbers and name[:4] not in numbers:
        continue
    status = expect.get(name, "unlisted")
    if only_allowed and status != "pass":
        continue
    print(name, status)
EOF
[ -s "$work/plan" ] || { say "no test to run"; exit 2; }

# shellcheck source=scripts/lib/dev-cluster.sh
. "$repo/scripts/lib/dev-cluster.sh"
stop_cluster() {
    local status=$?
    dev_cluster_stop
    if [ "${LIBRDKAFKA_SUITE_KEEP:-0}" = 1 ]; then
        say "work directory kept: $work"
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap stop_cluster EXIT
trap 'exit 2' INT TERM

dev_cluster_ports || { say "no free ports found"; exit 2; }

# The broker configuration the suite assumes: its default scenario's (tests/scenarios/
# default.json: topics auto-created with 4 partitions) and Kafka's bound on record size (its
# batch bound, message.max.bytes, about 1 MiB; Cairn's default per-record bound is 512 KiB,
# and 0082 produces 900 KiB records). Cairn's group session timeout minimum is already
# Kafka's 6 s.
dev_cluster_start "$work/cluster" --kafka-auto-create-topics=true --set=kafka.default_partitions=4 --set=limits.record_bytes_max=1000000 || exit 2

cat >"$work/test.conf" <<EOF
# Written by scripts/librdkafka-suite.sh.
bootstrap.servers=127.0.0.1:$kafka_port,127.0.0.1:$((kafka_port + 1)),127.0.0.1:$((kafka_port + 2))
# Every test's timeouts doubled: the machine is 2 shared cores and the library is unoptimized.
test.timeout.multiplier=2
EOF

# One test-runner process per test number (the runner matches TESTS by number and runs every
# non-local test of that number); each writes a JSON report with every test's state. Not in
# quick mode (-Q): there, sub-tests not marked quick return at once and count as passed.
mkdir -p "$work/logs" "$work/reports"
numbers_to_run=$(awk '$2 != "skip" { print substr($1, 1, 4) }' "$work/plan" | sort -u)
say "running $(echo "$numbers_to_run" | wc -w) test numbers (no new test after ${suite_timeout}s)"
run_start=$SECONDS
for number in $numbers_to_run; do
    if [ $((SECONDS - run_start)) -ge "$suite_timeout" ]; then
        say "out of time: $number and later not run"
        break
    fi
    test_start=$SECONDS
    set +e
    (
        cd "$tests"
        # CI=true would make the runner triple its timeouts and run tests 3 at a time.
        env -u CI TESTS="$number" TEST_KAFKA_VERSION="$broker_version" \
            RDKAFKA_TEST_CONF="$work/test.conf" TEST_REPORT="$work/reports/$number.json" \
            LD_LIBRARY_PATH="$tree/src:$tree/src-cpp" RDKAFKA_GITVER="rdkafka-sys-$rdkafka_sys_version" \
            timeout --kill-after=10 "$test_timeout" ./test-runner -L -p1
    ) >"$work/logs/$number.log" 2>&1 </dev/null
    status=$?
    set -e
    echo "$status" >"$work/logs/$number.status"
    say "$number: exit $status in $((SECONDS - test_start)) s"
done
elapsed=$((SECONDS - run_start))

# Counts, and each test's state compared with the list.
python3 - "$work" "$elapsed" "$test_timeout" <<'EOF'
import json, os, re, sys

work, elapsed, test_timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3]
plan = [line.split() for line in open(os.path.join(work, "plan"))]
ansi = re.compile(r"\x1b\[[0-9;]*m")


def report(number):
    path = os.path.join(work, "reports", number + ".json")
    try:
        with open(path) as handle:
            return json.load(handle).get("tests", {})
    except (OSError, ValueError):
        return None


def cause(number, name):
    """The first failure message the runner printed for this test, or how the process ended."""
    path = os.path.join(work, "logs", number + ".log")
    try:
        lines = [ansi.sub("", line).rstrip() for line in open(path, errors="replace")]
    except OSError:
        return "no log"
    for index, line in enumerate(lines):
        if line.startswith(f'### Test "{name}') and "failed at" in line \
                and line[len(f'### Test "{name}'):][:1] in ('"', " "):
            following = lines[index + 1].strip() if index + 1 < len(lines) else ""
            return (line.split("failed at", 1)[1].split(" at ")[0].strip() + ": " + following)[:240]
    status = open(os.path.join(work, "logs", number + ".status")).read().strip()
    if status in ("124", "137"):
        return f"killed by the script's {test_timeout}s bound"
    return f"runner exited {status} without a failure message"


counts = {"passed": 0, "failed": 0, "skipped": 0}
problems, notes = [], []
for name, expect in plan:
    number = name[:4]
    if expect == "skip":
        counts["skipped"] += 1
        continue
    if not os.path.exists(os.path.join(work, "logs", number + ".status")):
        state = "NOT RUN"
    else:
        states = report(number)
        state = (states or {}).get(name, {}).get("state", "FAILED")
    if state in ("SKIPPED", "DNS"):
        counts["skipped"] += 1
        print(f"librdkafka-suite: skipped by the runner: {name}")
        continue
    if state == "PASSED":
        counts["passed"] += 1
        if expect == "fail":
            problems.append(f"NOW PASSES, mark it pass in the list: {name}")
        elif expect == "unlisted":
            problems.append(f"NOT LISTED (passed): {name}")
        continue
    counts["failed"] += 1
    why = "did not run before the time bound" if state == "NOT RUN" else cause(number, name)
    line = f"FAILED ({expect}) {name}: {why}"
    if expect in ("pass", "slow", "unlisted"):
        problems.append(line)
    else:
        notes.append(line)

for line in notes:
    print(f"librdkafka-suite: {line}")
for line in problems:
    print(f"librdkafka-suite: {line}")
print(f"librdkafka-suite: ran for {elapsed} s; {len(problems)} unexpected")
print(f"librdkafka: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
sys.exit(1 if problems else 0)
EOF
