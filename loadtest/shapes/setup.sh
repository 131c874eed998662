#!/usr/bin/env bash
# Creates loadtest/shapes/.venv with wfcommons (pinned in requirements.txt); only needed to
# regenerate the committed instances.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt
