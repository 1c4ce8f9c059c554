#!/usr/bin/env bash
# Checkpoints across workers: a keyed sliding window (Nexmark q5 shape,
# every node at 3 instances, 1 s checkpoints, blackhole sink) run with
# `streamflow run --cluster` on 1 worker (3 slots) and on 3 workers (2 slots
# each), all on this machine, the local NATS carrying channels and
# checkpoint commands/reports, state files on the local disk. Prints the
# checkpoint durations the coordinator logged (trigger to commit: barriers
# through the flow, state written, every report in), median and max, with
# the state size. Then, on 3 workers, the recovery after a SIGKILL of one
# worker: time until the coordinator notices (bounded by the ttl, 2 s
# here), and until the restarted flow has completed a checkpoint on the two
# survivors (restore and re-placement included).
# STORAGE=nats://127.0.0.1:4222/bench-ck (or s3://…) keeps the state in an
# object store instead of the local disk (each run under its own prefix).
#   cargo build --release -p streamflow && crates/streamflow/benches/cluster/checkpoints.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${STREAMFLOW_BIN:-${CARGO_TARGET_DIR:-$here/../../../../target}/release/streamflow}"
url="${NATS:-nats://127.0.0.1:4222}"
events="${EVENTS:-6000000}"
rate="${RATE:-300000}"
storage="${STORAGE:-}"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

flow() { # tag
  cat > "$work/$1.yaml" <<YAML
name: bench-checkpoints-$1
mode: job
checkpoint: {interval: 1s, storage: ${storage:-$work}/$1-state-$$, retain: 2}
sources:
  - name: bids
    type: nexmark
    parallelism: 3
    config: {events: $events, table: bid, rate: $rate}
    event_time: {column: date_time, watermark: {max_out_of_orderness: 0s}}
stages:
  - name: q5
    type: window
    input: bids
    parallelism: 3
    key_by: [auction]
    window: {kind: sliding, size: 10s, slide: 2s}
    aggregates: {num: "count(*)"}
sinks:
  - {name: out, type: blackhole, input: q5, parallelism: 3}
YAML
}

start_workers() { # cluster n slots
  pids=()
  for i in $(seq 1 "$2"); do
    STREAMFLOW_LOG=info "$bin" worker --cluster "$url" --cluster-name "$1" --ttl 2s \
      --name "w$i" --slots "$3" 2>"$work/$1-w$i.log" &
    pids+=($!)
  done
  for _ in $(seq 100); do
    [ "$("$bin" cluster members --cluster "$url" --cluster-name "$1" --ttl 2s | wc -l)" = "$2" ] && break
    sleep 0.1
  done
}

stop_workers() { # cluster
  kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true
  "$bin" cluster dissolve --cluster "$url" --cluster-name "$1" --ttl 2s 2>/dev/null || true
}

durations() { # log
  grep "checkpoint complete" "$1" | sed -E 's/.*duration_ms=([0-9]+).*bytes=([0-9]+).*/\1 \2/' | sort -n \
    | awk '{d[NR] = $1; b = $2} END {if (NR) printf "checkpoints=%d median_ms=%d max_ms=%d state_bytes=%d", NR, d[int((NR + 1) / 2)], d[NR], b}'
}

for n in 1 3; do
  cluster="bench-ck-$$-$n"
  slots=$((n == 1 ? 3 : 2))
  start_workers "$cluster" "$n" "$slots"
  flow "w$n"
  STREAMFLOW_LOG=info "$bin" run "$work/w$n.yaml" --cluster "$url" --cluster-name "$cluster" --ttl 2s \
    2>"$work/coordinator-$n.log" >/dev/null
  echo "workers=$n events=$events rate=$rate $(durations "$work/coordinator-$n.log")"
  stop_workers "$cluster"
done

# Recovery after a SIGKILL of one of three workers.
cluster="bench-ck-$$-kill"
start_workers "$cluster" 3 2
flow kill
log="$work/coordinator-kill.log"
STREAMFLOW_LOG=info "$bin" run "$work/kill.yaml" --cluster "$url" --cluster-name "$cluster" --ttl 2s \
  2>"$log" >/dev/null &
coordinator=$!
until [ "$(grep -c "checkpoint complete" "$log" || true)" -ge 3 ]; do sleep 0.05; done
kill -9 "${pids[1]}"
killed=$(date +%s.%N)
until grep -q "restarting the flow" "$log"; do sleep 0.02; done
noticed=$(date +%s.%N)
before=$(grep -c "checkpoint complete" "$log" || true)
until [ "$(grep -c "checkpoint complete" "$log" || true)" -gt "$before" ]; do sleep 0.02; done
recovered=$(date +%s.%N)
echo "kill: noticed after $(echo "$noticed - $killed" | bc) s (ttl 2 s), first checkpoint of the restarted flow after $(echo "$recovered - $killed" | bc) s"
wait "$coordinator" && echo "the run ended successfully after the kill"
stop_workers "$cluster"
