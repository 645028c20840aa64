#!/usr/bin/env bash
# kafka-python's own integration tests (test/integration of its sdist, the version .ci/run pins)
# against a real 3-node Cairn cluster from this build, started with `cairn dev` on 127.0.0.1.
#
# Why 3 nodes: the suite's fixture talks to one bootstrap address and creates topics with
# replication factor 1, but a client then follows Metadata to every node that leads a
# partition; 3 nodes make it route, forward and fail over between brokers as in production.
#
# How the suite is pointed at Cairn: its fixture (test/integration/conftest.py) uses an external
# broker when KAFKA_URI is set and otherwise starts a Kafka of its own from a KAFKA_VERSION
# download, which we never want. KAFKA_VERSION is still read as the broker version the clients
# are configured with and the tests are gated on; we give the version kafka-python infers from
# Cairn's ApiVersions (test_kafka_version_infer checks that the two agree). The sdist lacks
# test/service.py (the module spawning Kafka processes), so a small stand-in is written that
# only knows external brokers.
#
# Each test is bounded by pytest-timeout with the signal method (the suite's own default, the
# thread method, ends the whole run at the first hung test); the whole run by `timeout`.
#
# Exit status: 0 when every failure is listed in scripts/kafka-python-suite.allow (one
# `test_id  # cause` a line); 1 on a failure not listed there, or on a listed test that now
# passes (so the list shrinks; a cause starting with "flaky:" may pass or fail); 2 when the suite could not run at all. The cluster is stopped
# on every exit path.
#
# Environment: CAIRN_BIN (default: $CARGO_TARGET_DIR/debug/cairn, built if missing),
# KAFKA_PYTHON_SUITE_CACHE (where the sdist is kept), KAFKA_PYTHON_SUITE_TIMEOUT (seconds for
# the whole pytest run, default 480), KAFKA_PYTHON_SUITE_KEEP=1 (keep the work directory).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

version=3.0.12
allow=$repo/scripts/kafka-python-suite.allow
cache=${KAFKA_PYTHON_SUITE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cairn/kafka-python-suite}
suite_timeout=${KAFKA_PYTHON_SUITE_TIMEOUT:-480}
target=${CARGO_TARGET_DIR:-$repo/target}
cairn=${CAIRN_BIN:-$target/debug/cairn}

say() { printf 'kafka-python-suite: %s\n' "$*" >&2; }

# Test dependencies, pinned; wheels only. kafka-python itself comes from the sdist's own tree.
python_packages=(pytest==9.2.0 pytest-mock==3.17.0 pytest-timeout==2.4.0)
if ! python3 -c 'import importlib.metadata as m, sys
sys.exit(any(m.version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))' \
    "${python_packages[@]}" 2>/dev/null; then
    PIP_BREAK_SYSTEM_PACKAGES=1 timeout 300 python3 -m pip install --quiet \
        --disable-pip-version-check --only-binary=:all: "${python_packages[@]}"
fi

# The sdist, cached.
sdist=$cache/kafka_python-$version.tar.gz
if [ ! -s "$sdist" ]; then
    mkdir -p "$cache"
    say "downloading the kafka-python $version sdist"
    timeout 300 python3 -m pip download --quiet --disable-pip-version-check \
        --no-binary :all: --no-deps -d "$cache" "kafka-python==$version" \
        || { say "cannot download the sdist"; exit 2; }
fi

if [ ! -x "$cairn" ]; then
    say "building $cairn"
    cargo build -p cairn-node --bin cairn --locked
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kafka-python-suite.XXXXXX")
# shellcheck source=scripts/lib/dev-cluster.sh
. "$repo/scripts/lib/dev-cluster.sh"
stop_cluster() {
    local status=$?
    dev_cluster_stop
    if [ "${KAFKA_PYTHON_SUITE_KEEP:-0}" = 1 ]; then
        say "work directory kept: $work"
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap stop_cluster EXIT
trap 'exit 2' INT TERM

tar -xzf "$sdist" -C "$work"
suite=$work/kafka_python-$version
# The sdist ships no test/__init__.py (without it `test` is Python's own test package) and no
# test/service.py; the stand-in for the latter knows external brokers only.
touch "$suite/test/__init__.py"
cat >"$suite/test/service.py" <<'EOF'
"""Stand-in written by Cairn's scripts/kafka-python-suite.sh: the sdist ships no
test/service.py. Only an external broker (KAFKA_URI) exists in this run."""


class ExternalService:
    def __init__(self, host, port):
        self.host = host
        self.port = port

    def dump_logs(self):
        pass

    def stop(self):
        pass


class SpawnedService:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("no Kafka to spawn in this run: only the external broker at KAFKA_URI")
EOF
# The fixture insists that a Kafka installation directory exists even for an external broker.
mkdir -p "$work/no-kafka-install"

dev_cluster_ports || { say "no free ports found"; exit 2; }

# Topics are auto-created as the suite's own broker configuration does (some tests produce to
# a topic nobody created), and group session timeouts go down to 1.5 s (test_group asks for
# 3 s; Kafka's default minimum, like Cairn's, is 6 s, so the suite's broker lowers it too).
dev_cluster_start "$work/cluster" --kafka-auto-create-topics=true --set=groups.session_timeout_ms_min=1500 || exit 2

# The broker version kafka-python infers from Cairn's ApiVersions (see the header).
broker_version=$(cd "$suite" && PYTHONPATH="$suite" timeout 60 python3 -c '
import sys
from kafka import KafkaConsumer
consumer = KafkaConsumer(bootstrap_servers=sys.argv[1])
print(".".join(map(str, consumer.config["api_version"])))
consumer.close()' "127.0.0.1:$kafka_port") || { say "kafka-python cannot reach the cluster"; exit 2; }
say "kafka-python infers broker version $broker_version"

say "running test/integration (at most ${suite_timeout}s)"
set +e
(
    cd "$suite"
    KAFKA_URI="kafka://127.0.0.1:$kafka_port" KAFKA_VERSION="$broker_version" \
        KAFKA_ROOT="$work/no-kafka-install" PYTHONPATH="$suite" \
        timeout --kill-after=10 "$suite_timeout" python3 -m pytest test/integration \
        -p no:cacheprovider -q -rfE --timeout=60 --timeout-method=signal --durations=0 -o log_level=INFO \
        --junitxml="$work/junit.xml"
) >"$work/pytest.out" 2>&1
pytest_status=$?
set -e
tail -n 60 "$work/pytest.out"
if [ "$pytest_status" -eq 124 ] || [ "$pytest_status" -eq 137 ]; then
    say "pytest ran out of its ${suite_timeout}s"
    exit 1
fi
if [ ! -s "$work/junit.xml" ]; then
    say "pytest wrote no report (exit $pytest_status)"
    exit 2
fi

# Counts, and the failures compared against the allowlist.
python3 - "$work/junit.xml" "$allow" <<'EOF'
import sys
import xml.etree.ElementTree as ET

report, allow_path = sys.argv[1], sys.argv[2]
allowed = {}
with open(allow_path) as handle:
    for line in handle:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        test_id, _, cause = line.partition("#")
        allowed[test_id.strip()] = cause.strip()

passed, failed, skipped = [], [], []
reasons = {}
for case in ET.parse(report).getroot().iter("testcase"):
    path = case.get("classname", "").split(".")
    # classname is dotted module[.Class]; rebuild pytest's node id.
    module = []
    while path and not path[0][:1].isupper():
        module.append(path.pop(0))
    test_id = "/".join(module) + ".py::" + "::".join(path + [case.get("name")])
    problem = case.find("failure")
    problem = problem if problem is not None else case.find("error")
    if problem is not None:
        failed.append(test_id)
        reasons[test_id] = (problem.get("message") or "").splitlines()[0][:200] if problem.get("message") else ""
    elif case.find("skipped") is not None:
        skipped.append(test_id)
    else:
        passed.append(test_id)

unexpected = [t for t in failed if t not in allowed]
# A cause starting with "flaky:" may pass or fail: listed so that it neither fails the run
# nor is reported as fixed.
fixed = [t for t in passed if t in allowed and not allowed[t].startswith("flaky:")]
for test_id in sorted(failed):
    mark = "allowed" if test_id in allowed else "NEW"
    print(f"kafka-python-suite: FAILED ({mark}) {test_id}" + (f"  # {allowed[test_id]}" if test_id in allowed else ""))
    if test_id not in allowed:
        print(f"kafka-python-suite:     {reasons[test_id]}")
for test_id in sorted(fixed):
    print(f"kafka-python-suite: NOW PASSES, remove it from the allowlist: {test_id}")
print(f"kafka-python-suite: {len(failed) - len(unexpected)} of {len(failed)} failures allowlisted")
print(f"kafka-python: {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped")
sys.exit(1 if unexpected or fixed else 0)
EOF
