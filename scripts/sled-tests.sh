#!/usr/bin/env bash
# sled's own tests for the areas Cairn patched (vendor/sled/PATCHES.md): the page cache and LRU,
# node splits, blob files, segment truncation and crash recovery. vendor/sled is a workspace of
# its own so that its dev-dependencies and lockfile stay out of Cairn's.
#
# `quickcheck_tree_matches_btreemap` is left out: it takes about nine minutes on two cores and
# tests nothing the patches touch that `test_tree`'s other cases and the failpoint suite miss.
set -euo pipefail
cd "$(dirname "$0")/../vendor/sled"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../../target}"
cargo test --locked --features testing --lib --test test_log --test test_space_leaks \
    --test test_quiescent --test test_tree_failpoints --test test_crash_recovery
cargo test --locked --features testing --test test_tree -- --skip quickcheck_tree_matches_btreemap
