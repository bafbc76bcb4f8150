#!/usr/bin/env bash
# `make bench`: pbkv next to Redis on this machine, measured in one run.
#
# 1. Builds pbkv (release), installs redis-server/redis-tools if missing.
# 2. Starts a pbkv cluster (view service, primary, backup — separate processes) and a Redis
#    primary plus one replica, all on 127.0.0.1, and runs a fixed matrix:
#    clients {1, 50} x value size {16 B, 1 KiB} x mix {write-only, 90 % reads}.
#    Every system is driven by the same load generator (`pbkv bench`; `--redis` for Redis, with
#    `--redis-wait 1` for SET followed by WAIT 1), and redis-benchmark measures Redis SET/GET
#    with the same concurrency and value size as a cross-check of that generator.
# 3. `pbkv bench-cluster`: failover gap, state transfer, memory per key; Redis's memory per key
#    for the same keys (DEBUG POPULATE).
# Every process it starts is stopped by pid on exit. Environment: BENCH_SECONDS (default 5) per
# matrix cell, BENCH_SECTIONS (default failover,transfer,memory), BENCH_TRANSFER_KEYS,
# BENCH_MEMORY_KEYS (default 1000000 each), BENCH_FAILOVER_TRIALS (default 5).
set -euo pipefail
# The cluster this script starts speaks plaintext, like the Redis it is compared with.
export PBKV_INSECURE=1
cd "$(dirname "$0")/.."

SECONDS_PER_CELL=${BENCH_SECONDS:-5}
SECTIONS=${BENCH_SECTIONS:-failover,transfer,memory}
TRANSFER_KEYS=${BENCH_TRANSFER_KEYS:-1000000}
MEMORY_KEYS=${BENCH_MEMORY_KEYS:-1000000}
FAILOVER_TRIALS=${BENCH_FAILOVER_TRIALS:-5}
KEYS=10000
SUDO=$([ "$(id -u)" = "0" ] || echo sudo)

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "bench: installing redis-server and redis-tools"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
  # The package starts a system-wide instance on port 6379; it is not used here.
fi

swift build -c release --product pbkv >/dev/null
PBKV="$(swift build -c release --show-bin-path)/pbkv"
WORK=$(mktemp -d /tmp/pbkv-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# take_port VAR: sets VAR to a loopback port nobody listens on (probed with bash's /dev/tcp),
# counting up from a random start so no two calls hand out the same port.
NEXT_PORT=$((20000 + RANDOM % 20000))
take_port() {
  while (exec 3<>"/dev/tcp/127.0.0.1/$NEXT_PORT") 2>/dev/null; do NEXT_PORT=$((NEXT_PORT + 1)); done
  printf -v "$1" '%s' "$NEXT_PORT"
  NEXT_PORT=$((NEXT_PORT + 1))
}
# json FIELD: a field of the flat JSON object on stdin.
calc() { awk "BEGIN { print $1 }"; }  # calc EXPR: floating point arithmetic
json() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" | head -1; }
wait_until() { # wait_until SECONDS COMMAND...: polls COMMAND every 0.1 s
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "bench: timed out waiting for: $*" >&2; exit 1; fi
    sleep 0.1
  done
}

# --- pbkv cluster ---------------------------------------------------------------------------
take_port P; VS="127.0.0.1:$P"; take_port P; S1="127.0.0.1:$P"; take_port P; S2="127.0.0.1:$P"
"$PBKV" viewservice --listen "$VS" >"$WORK/vs.log" 2>&1 & PIDS+=($!)
wait_until 10 "$PBKV" view --viewservice "$VS" --timeout 1
"$PBKV" server --listen "$S1" --viewservice "$VS" >"$WORK/s1.log" 2>&1 & PIDS+=($!)
wait_until 10 bash -c "'$PBKV' view --viewservice '$VS' --json | grep -q '\"primary\":\"$S1\"'"
"$PBKV" server --listen "$S2" --viewservice "$VS" >"$WORK/s2.log" 2>&1 & PIDS+=($!)
wait_until 10 bash -c "'$PBKV' view --viewservice '$VS' --json | grep -q '\"backup\":\"$S2\"'"
"$PBKV" put bench-ready yes --viewservice "$VS" --timeout 10 >/dev/null

# --- Redis primary + replica ----------------------------------------------------------------
take_port R1; take_port R2
redis_start() { # redis_start PORT [replicaof-port]
  local extra=()
  [ $# -gt 1 ] && extra=(--replicaof 127.0.0.1 "$2")
  redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --dir "$WORK" --dbfilename "dump-$1.rdb" --enable-debug-command local "${extra[@]}" >"$WORK/redis-$1.log" 2>&1 &
  PIDS+=($!)
}
redis_start "$R1"
redis_start "$R2" "$R1"
wait_until 10 bash -c "redis-cli -p $R2 info replication | grep -q 'master_link_status:up'"

echo "pbkv bench — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "pbkv: view service + primary + backup (processes); Redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'): primary + 1 replica; loopback."
echo "Each cell ${SECONDS_PER_CELL} s after 1 s warm-up, ${KEYS} keys, one request outstanding per client; ops/s and p50/p99 in µs."
echo

ROWS=()
printf '%-24s | %9s %6s %6s | %9s %6s | %9s %6s | %7s %7s | %s\n' \
  "shape" "pbkv op/s" "p50" "p99" "SET op/s" "p50" "+WAIT1" "p50" "÷SET" "÷WAIT" "VS calls/op"
printf '%s\n' "-------------------------+------------------------+------------------+------------------+-----------------+------------"
for clients in 1 50; do
  for size in 16 1024; do
    for mix in "put=100" "get=90,put=10"; do
      common=(--clients "$clients" --duration "$SECONDS_PER_CELL" --keys "$KEYS" --value-size "$size" --mix "$mix" --json)
      p=$("$PBKV" bench --viewservice "$VS" "${common[@]}" 2>/dev/null)
      r=$("$PBKV" bench --redis "127.0.0.1:$R1" "${common[@]}" 2>/dev/null)
      w=$("$PBKV" bench --redis "127.0.0.1:$R1" --redis-wait 1 "${common[@]}" 2>/dev/null)
      pt=$(json throughput <<<"$p"); rt=$(json throughput <<<"$r"); wt=$(json throughput <<<"$w")
      label="c=$clients ${size}B $([ "$mix" = "put=100" ] && echo "write-only" || echo "90% reads")"
      printf '%-24s | %9.0f %6.0f %6.0f | %9.0f %6.0f | %9.0f %6.0f | %7.2f %7.2f | %s\n' "$label" \
        "$pt" "$(json p50_us <<<"$p")" "$(json p99_us <<<"$p")" \
        "$rt" "$(json p50_us <<<"$r")" "$wt" "$(json p50_us <<<"$w")" \
        "$(calc "$pt / $rt")" "$(calc "$pt / $wt")" "$(json viewservice_calls_per_op <<<"$p")"
      errors=$(json errors <<<"$p")
      [ "$errors" != "0" ] && echo "  (pbkv errors in this cell: $errors)"
    done
  done
done
echo
echo "Cross-check with redis-benchmark (plain SET/GET, same concurrency and value size):"
for clients in 1 50; do
  for size in 16 1024; do
    n=$(( clients == 1 ? 15000 * SECONDS_PER_CELL : 40000 * SECONDS_PER_CELL ))
    out=$(redis-benchmark -p "$R1" -c "$clients" -n "$n" -d "$size" -r "$KEYS" -t set,get --csv 2>/dev/null)
    set_line=$(grep '^"SET"' <<<"$out"); get_line=$(grep '^"GET"' <<<"$out")
    printf '  c=%-2s %5sB  SET %8.0f op/s p50 %4.0f µs   GET %8.0f op/s p50 %4.0f µs\n' "$clients" "$size" \
      "$(cut -d'"' -f4 <<<"$set_line")" "$(calc "$(cut -d'"' -f10 <<<"$set_line") * 1000")" \
      "$(cut -d'"' -f4 <<<"$get_line")" "$(calc "$(cut -d'"' -f10 <<<"$get_line") * 1000")"
  done
done
echo "load average after the matrix: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# The matrix cluster is no longer needed; stop it so the next sections have the machine.
cleanup; PIDS=()

"$PBKV" bench-cluster --sections "$SECTIONS" --failover-trials "$FAILOVER_TRIALS" \
  --transfer-keys "$TRANSFER_KEYS" --memory-keys "$MEMORY_KEYS"

if [[ "$SECTIONS" == *memory* ]]; then
  take_port R3
  redis_start "$R3"
  wait_until 10 redis-cli -p "$R3" ping
  pid=${PIDS[-1]}
  rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }
  before=$(rss "$pid")
  redis-cli -p "$R3" debug populate "$MEMORY_KEYS" key 16 >/dev/null
  sleep 0.5
  after=$(rss "$pid")
  printf 'memory: Redis, %d keys of 16 B (DEBUG POPULATE): RSS %.0f MiB → %.0f MiB, %.1f bytes per key\n' "$MEMORY_KEYS" \
    "$(calc "$before / 1048576")" "$(calc "$after / 1048576")" "$(calc "($after - $before) / $MEMORY_KEYS")"
fi
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
