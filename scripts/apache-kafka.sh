#!/usr/bin/env bash
# Fetches Apache Kafka's broker (kafka_2.13 and its dependencies, benches/apache-kafka/pom.xml)
# from Maven Central into $CARGO_TARGET_DIR/apache-kafka/lib, for scripts/bench-compare.sh's
# `apache-kafka` peer. Skipped when the jars of the same pom are already there. Needs java 17+
# and mvn (Debian: openjdk-17-jdk-headless, maven).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
pom=benches/apache-kafka/pom.xml
lib="$target/apache-kafka/lib"
stamp="$lib/.pom"
if ! cmp -s "$pom" "$stamp"; then
    rm -rf "$lib"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$lib"
    cp "$pom" "$stamp"
fi
echo "apache kafka: $(cd "$lib" && ls kafka_2.13-*.jar)"
