#!/usr/bin/env bash
# The demo command: sets everything up on a fresh machine (venv, faissclass[demo],
# Debian's dataset-fashion-mnist), then runs `faissclass demo` (arguments pass through,
# e.g. --all for all 70,000 images).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
exec .venv/bin/faissclass demo "$@"
