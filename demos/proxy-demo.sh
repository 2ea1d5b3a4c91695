#!/usr/bin/env bash
# Starts the demo scenario's oracle upstreams (src/tools/scenario.rs, the same
# as `baton demo` and `baton soak` run) and the proxy with demos/baton.toml,
# streams one answer through it with curl -N, and shows the handover comment.
# Everything on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
baton=target/release/baton
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT

# One `baton mock` per upstream, with the scenario's arguments (port 9001, 9002, …).
for upstream in $($baton scenario); do
  mapfile -t args < <($baton scenario --mock-args "$upstream")
  $baton mock "${args[@]}" >/dev/null & pids+=($!)
done
$baton serve --config demos/baton.toml & pids+=($!)
for _ in $(seq 50); do curl -fs http://127.0.0.1:8080/healthz >/dev/null && break; sleep 0.1; done

# The primary (a random fault mix, seed 1, with outages) stalls on this conversation after 18 bytes.
curl -sN http://127.0.0.1:8080/v1/chat/completions \
  -H 'content-type: application/json' \
  -d '{"model":"echo-first","stream":true,"messages":[{"role":"user","content":"Tell me about relay races"}]}'
