#!/usr/bin/env bash
# glctl built as an API client only (its `embedded` feature off) compiles, and with no server
# answering it says what to do and exits 2 instead of starting an engine it does not have.
# Last in scripts/test.sh: this build replaces target/debug/glctl, which the earlier steps run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/greenlang-orchestrator/target}"

cargo build -p glctl --no-default-features --locked --quiet
unused_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
status=0
answer=$("$CARGO_TARGET_DIR/debug/glctl" --server "http://127.0.0.1:$unused_port" run examples/linear-3.yaml --wait 2>&1) || status=$?
# --server given: the client only reports the unreachable server; without it, the embedded hint.
[ "$status" = 2 ] || { echo "glctl (client only) with no server: exit $status, expected 2: $answer" >&2; exit 1; }
status=0
answer=$(cd "$(mktemp -d)" && env -u GLCTL_SERVER "$CARGO_TARGET_DIR/debug/glctl" run "$OLDPWD/examples/linear-3.yaml" --wait 2>&1) || status=$?
if [ "$status" != 2 ] || ! grep -q "built without the embedded engine" <<<"$answer"; then
  echo "glctl (client only), no server, run FILE --wait: exit $status, expected 2 and the embedded hint: $answer" >&2
  exit 1
fi
echo "glctl client only: builds; with no server it exits 2 and says: $answer"
