#!/usr/bin/env bash
# Starts two oracle upstreams and the proxy, streams one answer through it with
# curl -N, and shows the handover comment. Everything on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
baton=target/release/baton
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT

$baton mock --port 9001 --fault stall@20 >/dev/null & pids+=($!)
$baton mock --port 9002 --repeat-words 2 >/dev/null & pids+=($!)
$baton serve --config demos/baton.toml & pids+=($!)
for _ in $(seq 50); do curl -fs http://127.0.0.1:8080/healthz >/dev/null && break; sleep 0.1; done

curl -sN http://127.0.0.1:8080/v1/chat/completions \
  -H 'content-type: application/json' \
  -d '{"model":"chat","stream":true,"messages":[{"role":"user","content":"Tell me about relay races."}]}'
