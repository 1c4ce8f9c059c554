#!/usr/bin/env bash
# Scale-out: Nexmark q0 and q5 (blackhole sinks, generator included; every
# node at parallelism 1 on one worker and 2 on two, so q0's forward edges
# stay in each process and q5's keyed edge crosses between them) run
# with `streamflow run --cluster` on 1 worker and on 2 workers, each worker
# pinned to a core of its own with taskset and given one slot; the
# coordinator (the `run` process) on the same cores, mostly idle. The
# channels between the workers go direct over TCP (EXCHANGE=direct, the
# default) or through the local NATS server (EXCHANGE=nats; the server's own
# CPU is not in the workers' figures, and is printed apart either way; with
# direct channels it only coordinates). Prints, per run: wall time of the whole run
# (assignment, start-up and drain included), CPU seconds of each worker,
# and for q5 the frames and bytes the workers sent each other (summed from
# their "remote channel ended" log lines).
#   cargo build --release -p streamflow && crates/streamflow/benches/cluster/scale.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${STREAMFLOW_BIN:-${CARGO_TARGET_DIR:-$here/../../../../target}/release/streamflow}"
runs="${RUNS:-3}"
events="${EVENTS:-20000000}"
url="${NATS:-nats://127.0.0.1:4222}"
exchange="${EXCHANGE:-direct}"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
tck=$(getconf CLK_TCK)

flows() { # parallelism
  cat > "$work/q0.yaml" <<YAML
name: bench-q0
mode: job
sources:
  - {name: events, type: nexmark, parallelism: $1, config: {events: $events}}
stages:
  - {name: bids, type: filter, input: events, parallelism: $1, where: "event_type = 'bid'"}
  - name: q0
    type: select
    input: bids
    parallelism: $1
    select: {auction: bid.auction, bidder: bid.bidder, price: bid.price, date_time: bid.date_time, extra: bid.extra}
sinks:
  - {name: out, type: blackhole, input: q0, parallelism: $1}
YAML
  cat > "$work/q5.yaml" <<YAML
name: bench-q5
mode: job
sources:
  - name: bids
    type: nexmark
    parallelism: $1
    config: {events: $events, table: bid}
    event_time: {column: date_time, watermark: {max_out_of_orderness: 0s}}
stages:
  - name: q5
    type: window
    input: bids
    parallelism: $1
    key_by: [auction]
    window: {kind: sliding, size: 10s, slide: 2s}
    aggregates: {num: "count(*)"}
sinks:
  - {name: out, type: blackhole, input: q5, parallelism: $1}
YAML
}

cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for n in 1 2; do
  cluster="bench-$$-$n"
  pids=()
  for i in $(seq 0 $((n - 1))); do
    STREAMFLOW_LOG=info taskset -c "$i" "$bin" worker --cluster "$url" --cluster-name "$cluster" \
      --name "w$i" --slots 1 --exchange "$exchange" 2>"$work/w$n-$i.log" &
    pids+=($!)
  done
  for _ in $(seq 100); do
    [ "$("$bin" cluster members --cluster "$url" --cluster-name "$cluster" | wc -l)" = "$n" ] && break
    sleep 0.1
  done
  flows "$n"
  for q in q0 q5; do
    for r in $(seq "$runs"); do
      : > "$work/marks"
      for i in "${!pids[@]}"; do : > "$work/w$n-$i.log"; done
      before=(); for p in "${pids[@]}"; do before+=("$(cpu_of "$p")"); done
      nats_before=$(cpu_of "$(pgrep -x nats-server | head -1)")
      start=$(date +%s.%N)
      taskset -c 0-$((n - 1)) "$bin" run "$work/$q.yaml" --cluster "$url" --cluster-name "$cluster" --quiet
      wall=$(echo "$(date +%s.%N) - $start" | bc)
      cpus=""; for i in "${!pids[@]}"; do
        cpus="$cpus w$i=$(echo "scale=2; ($(cpu_of "${pids[$i]}") - ${before[$i]}) / $tck" | bc)s"
      done
      sent=$(cat "$work"/w$n-*.log | { grep -a "remote channel ended" || true; } | sed -E 's/.*frames=([0-9]+) bytes=([0-9]+).*/\1 \2/' \
        | awk '{f += $1; b += $2} END {printf "frames=%d MB=%.1f", f, b / 1e6}')
      nats=$(echo "scale=2; ($(cpu_of "$(pgrep -x nats-server | head -1)") - $nats_before) / $tck" | bc)
      echo "$q workers=$n exchange=$exchange events=$events run=$r wall_s=$wall cpu:$cpus nats-server=${nats}s exchanged: $sent"
    done
  done
  for i in "${!pids[@]}"; do
    echo "worker w$i peak RSS $(grep VmHWM "/proc/${pids[$i]}/status" | awk '{print $2}') KiB (over all runs of $n)"
  done
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  "$bin" cluster dissolve --cluster "$url" --cluster-name "$cluster" 2>/dev/null || true
done
