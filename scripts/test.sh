#!/usr/bin/env bash
# The test command: every unit, conformance, simulation and real-process test in the workspace.
# Real-process tests start the `cairn` binary from this build on 127.0.0.1 only, each with its
# own temporary data directory and port 0; every one is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"
