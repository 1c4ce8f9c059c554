#!/usr/bin/env bash
# Connector benchmarks against the local servers, through the release
# binary: records/s in and out for ~100-byte JSON rows, with the client
# tools' own ceiling where this machine has one. Figures: whole process
# (start-up, connection and set-up included), wall and CPU from
# /usr/bin/time, peak RSS.
#   cargo build --release -p streamflow && crates/streamflow/benches/connectors/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${STREAMFLOW_BIN:-${CARGO_TARGET_DIR:-$here/../../../../target}/release/streamflow}"
runs="${RUNS:-3}"
measure() { # label, command...
  local label="$1"; shift
  if ! /usr/bin/time -o /tmp/sf_bench_time -f '%e %U %S %M' "$@" >/dev/null 2>/tmp/sf_bench_stderr; then
    echo "$label FAILED: $(tail -3 /tmp/sf_bench_stderr)"; return 1
  fi
  local out; out=$(tail -1 /tmp/sf_bench_time)
  echo "$label wall_s=$(cut -d' ' -f1 <<<"$out") user_s=$(cut -d' ' -f2 <<<"$out") sys_s=$(cut -d' ' -f3 <<<"$out") peak_kib=$(cut -d' ' -f4 <<<"$out")"
}
sql() { mariadb -h 127.0.0.1 -u root test -N -B -e "$1"; }

for i in $(seq "$runs"); do
  rabbitmqctl -q purge_queue sf_bench >/dev/null 2>&1 || true
  measure "rabbitmq-out rows=200000" "$bin" run "$here/rabbitmq_out.yaml" --quiet
  rm -rf /tmp/streamflow-bench-rabbitmq-in
  measure "rabbitmq-in rows=200000" "$bin" run "$here/rabbitmq_in.yaml" --quiet
done

# MQTT: a reader running while a paced writer publishes; the reader's
# figures cover the whole run (its wall time includes waiting).
for i in $(seq "$runs"); do
  rm -rf /tmp/sf-bench-mqtt-in
  /usr/bin/time -o /tmp/sf_bench_mqtt_in -f '%e %U %S %M' "$bin" run "$here/mqtt_in.yaml" --quiet --set checkpoint.interval=500ms >/dev/null 2>&1 &
  sleep 2
  measure "mqtt-out rows=90000 (paced 9000/s)" "$bin" run "$here/mqtt_out.yaml" --quiet
  sleep 2; pkill -TERM -x streamflow || true; wait || true
  echo "mqtt-in rows=90000 wall/user/sys/peak_kib: $(cat /tmp/sf_bench_mqtt_in)"
done

# MySQL: the sink (exactly-once path), the source, and the ceiling of the
# mariadb client loading the same rows as 1000-row INSERTs.
sql "SELECT 1" >/dev/null
for i in $(seq "$runs"); do
  sql "DROP TABLE IF EXISTS sf_bench, sf_bench_streamflow_stage; DELETE FROM streamflow_ledger WHERE sink LIKE 'sf_bench/%'" || true
  rm -rf /tmp/streamflow-bench-mysql-out
  measure "mysql-out rows=200000" "$bin" run "$here/mysql_out.yaml" --quiet
  measure "mysql-in rows=200000" "$bin" run "$here/mysql_in.yaml" --quiet
done
python3 - >/tmp/sf_bench_inserts.sql <<'PY'
print("DROP TABLE IF EXISTS sf_bench_plain; CREATE TABLE sf_bench_plain (id BIGINT, customer TEXT, amount DOUBLE, ts DATETIME(6), note TEXT) ENGINE=InnoDB;")
for start in range(0, 200000, 1000):
    rows = ",".join(f"({i},'customer-{i % 5000}',{(i % 9973) * 0.25},'2026-01-01 00:00:00'+INTERVAL {i * 10000} MICROSECOND,'ok-padding-0123456789')" for i in range(start, start + 1000))
    print(f"INSERT INTO sf_bench_plain VALUES {rows};")
PY
for i in $(seq "$runs"); do
  measure "mariadb-client-ceiling rows=200000" sh -c 'mariadb -h 127.0.0.1 -u root test < /tmp/sf_bench_inserts.sql'
done
