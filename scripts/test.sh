#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine, then runs pytest.
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -m "not slow" -x
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev || { echo "test.sh: set-up failed" >&2; exit 1; }
.venv/bin/python -m pytest --durations=15 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    # pytest's "no tests collected": neither a pass nor a test failure, but a
    # broken selection or collection. Say so and fail.
    echo "test.sh: pytest collected no tests (exit 5): check the test paths and -m/-k filters" >&2
    exit 3
fi
exit "$rc"
