#!/usr/bin/env bash
# What TLS costs a connector: the same 200 000 rows of about 100 bytes of
# JSON written over a plain and a TLS connection, through the release
# binary. Redis: the local server (plain) and a TLS-only redis-server this
# script starts on 127.0.0.1:16380 with its own certificate authority;
# PostgreSQL: the local server, which offers TLS (self-signed, so
# insecure_skip_verify). Figures: whole process, wall and CPU from
# /usr/bin/time, peak RSS.
#   cargo build --release -p streamflow && crates/streamflow/benches/connectors/tls.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${STREAMFLOW_BIN:-${CARGO_TARGET_DIR:-$here/../../../../target}/release/streamflow}"
runs="${RUNS:-3}"
work=$(mktemp -d)
trap 'redis-cli -p 16380 --tls --cacert "$work/ca.pem" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
measure() { # label, command...
  local label="$1"; shift
  if ! /usr/bin/time -o "$work/time" -f '%e %U %S %M' "$@" >/dev/null 2>"$work/stderr"; then
    echo "$label FAILED: $(tail -3 "$work/stderr")"; return 1
  fi
  local out; out=$(tail -1 "$work/time")
  echo "$label wall_s=$(cut -d' ' -f1 <<<"$out") user_s=$(cut -d' ' -f2 <<<"$out") sys_s=$(cut -d' ' -f3 <<<"$out") peak_kib=$(cut -d' ' -f4 <<<"$out")"
}

cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 1 -subj "/CN=bench ca" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile ext 2>/dev/null
redis-server --daemonize yes --port 0 --tls-port 16380 --bind 127.0.0.1 --tls-cert-file server.pem \
  --tls-key-file server.key --tls-ca-cert-file ca.pem --tls-auth-clients no --save "" --appendonly no \
  --dir "$work" --logfile "$work/redis.log"
for _ in $(seq 50); do bash -c '</dev/tcp/127.0.0.1/16380' 2>/dev/null && break; sleep 0.1; done

flow() { # name, sink type, sink config
  cat > "$work/$1.yaml" <<YAML
name: bench-$1
mode: job
sources:
  - name: rows
    type: generator
    config:
      count: 200000
      batch_size: 1000
      columns:
        id: "i"
        customer: "concat('customer-', i % 5000)"
        amount: "(i % 9973) * 0.25"
        ts: "to_timestamp_millis(1767225600000 + i * 10)"
        note: "'ok-padding-0123456789'"
sinks:
  - {name: out, type: $2, input: rows, config: $3}
YAML
  echo "$work/$1.yaml"
}
redis_plain=$(flow redis-plain redis '{url: "redis://127.0.0.1:6379", stream: sf_bench_tls}')
redis_tls=$(flow redis-tls redis "{url: \"rediss://127.0.0.1:16380\", stream: sf_bench_tls, tls: {ca_file: \"$work/ca.pem\"}}")
pg_plain=$(flow pg-plain postgres '{url: "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", table: sf_bench_tls}')
pg_tls=$(flow pg-tls postgres '{url: "postgres://postgres@127.0.0.1:5432/test", table: sf_bench_tls, tls: {insecure_skip_verify: true}}')

for i in $(seq "$runs"); do
  redis-cli -p 6379 del sf_bench_tls >/dev/null
  redis-cli -p 16380 --tls --cacert ca.pem del sf_bench_tls >/dev/null
  measure "redis-out plain rows=200000" "$bin" run "$redis_plain" --quiet
  measure "redis-out tls rows=200000" "$bin" run "$redis_tls" --quiet
  psql -q -h 127.0.0.1 -U postgres test -c "DROP TABLE IF EXISTS sf_bench_tls" >/dev/null
  measure "postgres-out plain rows=200000" "$bin" run "$pg_plain" --quiet
  psql -q -h 127.0.0.1 -U postgres test -c "DROP TABLE IF EXISTS sf_bench_tls" >/dev/null
  measure "postgres-out tls rows=200000" "$bin" run "$pg_tls" --quiet
done
psql -q -h 127.0.0.1 -U postgres test -c "DROP TABLE IF EXISTS sf_bench_tls" >/dev/null
redis-cli -p 6379 del sf_bench_tls >/dev/null
