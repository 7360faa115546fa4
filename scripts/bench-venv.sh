#!/usr/bin/env bash
# The venv benchmark: beephost builds a venv with one small package from a local wheelhouse,
# cold (no package cache volume) and warm, beside the plain `python -m venv` + `pip install`
# in the same runtime image, in one run. Prints `BENCH` lines (median and p99 in ms).
# Needs Docker and the test rootfs (BEEPHOST_TEST_ROOTFS, as scripts/test builds it).
# BENCH_RUNS sets the runs per variant (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BEEPHOST_TEST_ROOTFS:?set BEEPHOST_TEST_ROOTFS to the test rootfs tarball (scripts/test builds it)}"
export BEEPHOST_TEST_RUN="bench$(date +%s)"
cargo test --test it venvs::bench_venv_create -- --ignored --nocapture 2>&1 | grep '^BENCH'
