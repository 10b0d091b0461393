#!/usr/bin/env bash
# The whole test suite: formatting, lints, doc tests, then every test of the
# workspace against the real broker and ClickHouse, which it starts first.
# This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/local/up.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --doc --locked
cargo nextest run --workspace --locked --no-fail-fast
