#!/usr/bin/env bash
# Offline checks of everything under deploy/: YAML well-formedness, kustomize builds of the
# overlays, strict schema validation of the built Kubernetes objects (CRD kinds skipped), and the
# Prometheus configuration when promtool is installed.
#
#   pip install kubernetes-validate pyyaml     # once
#   deploy/validate.sh [KUBERNETES_VERSION ...]  # default: 1.30.0 1.37.0
#
# Needs kubectl (for `kubectl kustomize`) or kustomize.
set -euo pipefail
cd "$(dirname "$0")"
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(1.30.0 1.37.0)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

build() {
  if command -v kustomize >/dev/null 2>&1; then kustomize build "$1"; else kubectl kustomize "$1"; fi
}

echo "== YAML parses"
python3 - <<'PY'
import pathlib, sys, yaml
bad = 0
files = [p for p in pathlib.Path('.').rglob('*') if p.suffix in ('.yaml', '.yml')]
for p in sorted(files):
    try:
        list(yaml.safe_load_all(p.read_text()))
    except yaml.YAMLError as e:
        bad += 1
        print(f"FAIL {p}: {e}")
print(f"{len(files) - bad} passed, {bad} failed")
sys.exit(1 if bad else 0)
PY

echo "== kustomize builds"
# The components cannot be built alone: wrap each in a throwaway overlay of the base.
mkdir -p "$out/wrap"
for c in keda cpu-hpa; do
  mkdir -p "$out/wrap/$c"
  rel=$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$PWD/k8s" "$out/wrap/$c")
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [%s]\ncomponents: [%s]\n' \
    "$rel/base" "$rel/overlays/$c" > "$out/wrap/$c/kustomization.yaml"
done
targets=(k8s/base k8s/overlays/staging k8s/overlays/production "$out/wrap/keda" "$out/wrap/cpu-hpa")
for t in "${targets[@]}"; do
  name=$(basename "$t")
  build "$t" > "$out/$name.yaml"
  echo "ok $t ($(grep -c '^kind:' "$out/$name.yaml") objects)"
done
cp k8s/base/secret.example.yaml "$out/secret.example.yaml"

echo "== kubernetes-validate --strict (core kinds; CRD kinds are skipped)"
python3 - "$out" <<'PY'
import pathlib, sys, yaml
out = pathlib.Path(sys.argv[1])
crd_groups = ('monitoring.coreos.com/', 'keda.sh/', 'external-secrets.io/')
core = out / 'core'
core.mkdir()
skipped = set()
for f in sorted(out.glob('*.yaml')):
    docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
    keep = []
    for d in docs:
        if d['apiVersion'].startswith(crd_groups):
            skipped.add(f"{d['kind']}/{d['metadata']['name']}")
        else:
            keep.append(d)
    (core / f.name).write_text(yaml.safe_dump_all(keep, sort_keys=False))
print("skipped (CRDs):", ", ".join(sorted(skipped)))
PY
for v in "${versions[@]}"; do
  kubernetes-validate --strict --quiet -k "$v" "$out"/core/*.yaml
  echo "ok Kubernetes $v"
done

if command -v promtool >/dev/null 2>&1; then
  echo "== promtool"
  promtool check config --syntax-only monitoring/prometheus.yml
  shopt -s nullglob
  rules=(monitoring/rules/*.yaml)
  if [ ${#rules[@]} -gt 0 ]; then promtool check rules "${rules[@]}"; fi
fi
echo "all checks passed"
