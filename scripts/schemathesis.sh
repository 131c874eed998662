#!/usr/bin/env bash
# Fuzzes the live API with schemathesis, driven by the OpenAPI document the coordinator serves.
# Needs the services (scripts/services.sh) and the test binaries (`cargo test` builds
# gl-coordinator). Installs schemathesis into a virtual environment on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$HOME/.cache/greenlang-orchestrator/target}"
coordinator="$target/debug/gl-coordinator"
[ -x "$coordinator" ] || { echo "schemathesis.sh: build first ($coordinator missing)" >&2; exit 2; }
venv="${GL_SCHEMATHESIS_VENV:-$HOME/.cache/greenlang-orchestrator/schemathesis-4.32.5}"
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==4.32.5"
fi

db="gl_schemathesis_$$"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
secret="schemathesis-$$-$RANDOM"
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
export GL_ORCHESTRATOR_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export GL_ORCHESTRATOR_QUEUE_PREFIX="gl.schemathesis.$$"
export GL_ORCHESTRATOR_HTTP_ADDR="127.0.0.1:$port"
export GL_ORCHESTRATOR_JWT_SECRET="$secret"
export GL_ORCHESTRATOR_AUTH=enabled
"$coordinator" migrate
"$coordinator" serve >"/tmp/gl-schemathesis-$$.log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
}
trap cleanup EXIT
base="http://127.0.0.1:$port/api/v1/orchestrator"
for _ in $(seq 1 100); do
  curl -fs "$base/health" >/dev/null 2>&1 && break
  sleep 0.1
done

# An HS256 token with every scope, valid for an hour (standard library only).
token=$(SECRET="$secret" python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "schemathesis", "scope": "orchestrator:admin", "exp": int(time.time()) + 3600}).encode())
sig = hmac.new(os.environ["SECRET"].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")
PY
)

# positive_data_acceptance is left out: the schema describes shapes, and a schema-valid DAG can
# still be refused for what it means (a cycle, a missing dependency), which is correct.
"$venv/bin/schemathesis" run "$base/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks all --exclude-checks positive_data_acceptance \
  --max-examples "${GL_SCHEMATHESIS_EXAMPLES:-25}" --seed 20261128 --workers 1 \
  --no-color
