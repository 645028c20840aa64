#!/usr/bin/env bash
# Installs the Kafka clients that node/tests/kafka_jvm_node.rs drives, from the registries:
# - the Java client's jars (node/tests/kafka_java/pom.xml: kafka-clients, slf4j) copied by
#   Maven from Maven Central into $CARGO_TARGET_DIR/kafka-clients/java/lib (no build lifecycle;
#   the tests run the single-file sources with `java`);
# - kafkajs, and @confluentinc/schemaregistry (node/tests/schema_registry.rs), from
#   node/tests/kafka_node/package-lock.json with `npm ci`.
# Each step is skipped when what it installs is already there. Needs java, mvn, node and npm:
# with --apt it installs the missing ones with apt-get first.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"

if [ "${1:-}" = "--apt" ]; then
    missing=()
    command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
    command -v mvn >/dev/null || missing+=(maven)
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
fi

pom=node/tests/kafka_java/pom.xml
lib="$target/kafka-clients/java/lib"
stamp="$lib/.pom"
# The pom's copy beside the jars says which pom they came from: a changed pom fetches anew.
if ! cmp -s "$pom" "$stamp"; then
    rm -rf "$lib"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$lib"
    cp "$pom" "$stamp"
fi
echo "java clients: $(cd "$lib" && ls *.jar | tr '\n' ' ')"

modules=node/tests/kafka_node
if ! cmp -s "$modules/package-lock.json" "$modules/node_modules/.package-lock.json.ci"; then
    (cd "$modules" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$modules/package-lock.json" "$modules/node_modules/.package-lock.json.ci"
fi
echo "kafkajs: $(node -p "require('./$modules/node_modules/kafkajs/package.json').version")"
echo "@confluentinc/schemaregistry: $(node -p \
    "require('./$modules/node_modules/@confluentinc/schemaregistry/package.json').version")"
