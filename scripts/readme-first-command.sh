#!/usr/bin/env bash
# Runs the README's first command exactly as written there (the first line of its first ```sh
# block), from the root of the checkout, as a new user does, and checks that it ends with a
# completed execution and its provenance hash.
set -euo pipefail
cd "$(dirname "$0")/.."
command=$(awk '/^```sh$/ { inside = 1; next } inside { print; exit }' README.md)
echo "README's first command: $command"
output=$(bash -c "$command")
echo "$output"
echo "$output" | grep -Eq '^provenance_chain_hash [0-9a-f]{64}$' || {
  echo "readme-first-command: no provenance hash in the output" >&2
  exit 1
}
