#!/usr/bin/env bash
# Benchmarks `beephost agent` (issue 3) and writes the results into BENCHMARKS.md.
# Usage: scripts/bench-agent.sh [--calls N] [--parallel-calls N] [--python PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench agent -- --write "$@"
