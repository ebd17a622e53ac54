#!/usr/bin/env bash
# Pre-download the real distributions the end-to-end tests serve from a fake index.
#
# Runs during setup (the test run script calls it before pytest); the tests themselves never
# leave loopback. pip runs as a package client of the default index with --isolated,
# PIP_CONFIG_FILE=/dev/null and no PIP_* variables, so the machine's pip config (find-links,
# extra indexes, constraints) cannot change what is fetched. Files land in
# $CACHESRV_TEST_DISTS (default <repo>/.cache/test-dists); what is there already is not
# fetched again, so a second run needs no network.
#
# Usage: tests/fetch-test-dists.sh [REQUIREMENT...]   (default: the e2e set below)
#   PYTHON=...  interpreter whose pip runs and whose wheel tags count (default: .venv's)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
if [[ ! -x $python ]]; then
    python=$(command -v python3)
fi

if [[ $# -eq 0 ]]; then
    # Keep in step with E2E_REQUIREMENTS in tests/fakes/dists.py.
    set -- requests six==1.16.0 six==1.17.0 setuptools wheel
fi

cd "$root"
exec "$python" -m tests.fakes.dists fetch "$@"
