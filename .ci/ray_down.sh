#!/usr/bin/env bash
# Stops the Ray cluster of .ci/ray_up.sh (and any other Ray processes of this user: CI runs only it).
set -euo pipefail
command -v ray >/dev/null && ray stop --force >/dev/null 2>&1 || true
echo "ray_down: stopped"
