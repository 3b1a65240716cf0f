#!/usr/bin/env bash
# Create .venv and install faissclass with the extras given as arguments
# (default: dev). Idempotent: reinstalls only when pyproject.toml changes.
# Usage: source-free; prints nothing on a no-op. Called by test.sh and demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
# Real images for the slow tests and the demo: Debian's dataset-fashion-mnist.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
        >/dev/null || echo "setup.sh: could not install dataset-fashion-mnist; its tests will skip" >&2
fi
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.faissclass-$extras-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    .venv/bin/python -m pip install -q -e ".[$extras]"
    touch "$stamp"
fi
