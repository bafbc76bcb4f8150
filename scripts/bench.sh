#!/usr/bin/env bash
# `make bench`: pbkv next to Redis on this machine, measured in one run.
#
# 1. Builds pbkv (release), installs redis-server/redis-tools if missing.
# 2. Starts a plaintext pbkv cluster (view service, primary, backup — separate processes; plaintext
#    like the Redis it is compared with) and a Redis primary plus one replica, all on 127.0.0.1,
#    and runs a fixed matrix: clients {1, 50} x value size {16 B, 1 KiB} x mix {write-only, 90 %
#    reads}. Every system is driven by the same load generator (`pbkv bench`; `--redis` for
#    Redis, with `--redis-wait 1` for SET followed by WAIT 1), and redis-benchmark measures Redis
#    SET/GET with the same concurrency and value size as a cross-check of that generator. Then
#    the pipelined rows: 16 B write-only with $PIPELINE operations outstanding per client
#    (`--pipeline`; for Redis on its one connection, each SET+WAIT 1 pair still in order), next
#    to `redis-benchmark -P $PIPELINE` SET (no WAIT: redis-benchmark cannot send one per SET).
#    Every cell also reports the CPU time per operation of each server process (`--cpu-of`: pbkv
#    primary, backup, view service; Redis primary and replica) and of the load generator.
# 3. TLS cost: a second pbkv cluster with mutual TLS (certificates made with `pbkv certs`); the
#    16 B cells of 1 and 50 clients run against both clusters in turn (`compare_clusters`).
#    Likewise the cost of --metrics, of --read-leases=false, and of replication itself (a primary
#    with no backup: what the RPC stack and the client library cost without it).
# 4. `pbkv bench-cluster`: failover gap, state transfer, memory per key; Redis's memory per key
#    for the same keys (DEBUG POPULATE); `pbkv bench-wire`: wire bytes and CPU per Put for each
#    compression mode.
# 5. Every figure is also written as a JSON line; scripts/bench_report.py turns them into
#    $BENCH_RESULTS_DIR/latest.md (tables) and latest.svg (chart), next to latest.jsonl.
# Every process it starts is stopped by pid on exit. Progress of the load generator goes to
# stderr when it is a terminal (a bar), else to $WORK/progress.log. Environment: BENCH_SECONDS
# (default 5) per matrix cell, BENCH_SECTIONS (default failover,transfer,memory),
# BENCH_TRANSFER_KEYS, BENCH_MEMORY_KEYS (default 1000000 each), BENCH_FAILOVER_TRIALS (default
# 5), BENCH_RESULTS_DIR (default bench/results), BENCH_NOTE (a line shown in the results, e.g.
# "short run on a busy machine"), PBKV_BIN (a pbkv binary to use instead of building release).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_CELL=${BENCH_SECONDS:-5}
SECTIONS=${BENCH_SECTIONS:-failover,transfer,memory}
TRANSFER_KEYS=${BENCH_TRANSFER_KEYS:-1000000}
MEMORY_KEYS=${BENCH_MEMORY_KEYS:-1000000}
FAILOVER_TRIALS=${BENCH_FAILOVER_TRIALS:-5}
KEYS=10000
PIPELINE=16  # operations outstanding per client in the pipelined rows
RESULTS_DIR=${BENCH_RESULTS_DIR:-bench/results}
SUDO=$([ "$(id -u)" = "0" ] || echo sudo)

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "bench: installing redis-server and redis-tools"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
  # The package starts a system-wide instance on port 6379; it is not used here.
fi

if [ -n "${PBKV_BIN:-}" ]; then
  PBKV=$PBKV_BIN
else
  swift build -c release --product pbkv >/dev/null && swift build -c release --product pbkv-tools >/dev/null
  PBKV="$(swift build -c release --show-bin-path)/pbkv"
fi
WORK=$(mktemp -d /tmp/pbkv-bench.XXXXXX)
RESULTS="$WORK/results.jsonl"
if [ -t 2 ]; then PROGRESS=/dev/stderr; else PROGRESS="$WORK/progress.log"; fi
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# take_port VAR: sets VAR to a loopback port nobody listens on (probed with bash's /dev/tcp),
# counting up from a random start so no two calls hand out the same port.
NEXT_PORT=$((20000 + RANDOM % 10000))  # below the ephemeral range (32768+) that client sockets use
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

# --- pbkv clusters ---------------------------------------------------------------------------
# start_pbkv_cluster NAME --insecure|--tls [SERVER FLAG…]: a view service, a primary and a backup
# (processes; the primary only when PBKV_SERVERS=1 is set for the call) on fresh ports, plaintext
# or with mutual TLS: every process presents a server certificate for its own address and clients
# present `bench-client`, all issued by the bench's own CA (`pbkv certs`, in $WORK/certs). The
# server flags go to every server, each @PORT@ in them replaced by a fresh port per server (e.g.
# `--metrics 127.0.0.1:@PORT@`). Then `pbkv_on NAME COMMAND ARG…` runs a client command (view,
# put, bench…) against the cluster.
declare -A CLUSTER_VS=() CLUSTER_SECURITY=() CLUSTER_CPU_OF=()
CERTS="$WORK/certs"
start_pbkv_cluster() {
  local name=$1 mode=$2; shift 2
  local p vs s1 s2 member
  take_port p; vs="127.0.0.1:$p"; take_port p; s1="127.0.0.1:$p"; take_port p; s2="127.0.0.1:$p"
  local -A security=()
  case "$mode" in
    --insecure)
      for member in vs s1 s2; do security[$member]="--insecure"; done
      CLUSTER_SECURITY[$name]="--insecure" ;;
    --tls)
      if [ ! -f "$CERTS/ca.pem" ]; then
        "$PBKV" certs init "$CERTS" >/dev/null
        "$PBKV" certs issue "$CERTS" bench-client --role client >/dev/null
      fi
      for member in vs s1 s2; do
        "$PBKV" certs issue "$CERTS" "$name-$member" --role server --host "${!member}" >/dev/null
        security[$member]="--tls $CERTS --tls-name $name-$member"
      done
      CLUSTER_SECURITY[$name]="--tls $CERTS --tls-name bench-client" ;;
    *) echo "start_pbkv_cluster: $mode: expected --insecure or --tls" >&2; exit 2 ;;
  esac
  CLUSTER_VS[$name]=$vs
  # The security flags are split into words on purpose (no spaces: $WORK is /tmp/pbkv-bench.XXXXXX).
  "$PBKV" viewservice --listen "$vs" --data-dir "$WORK/$name-vs" ${security[vs]} >"$WORK/$name-vs.log" 2>&1 & PIDS+=($!)
  CLUSTER_CPU_OF[$name]="vs=$!"
  wait_until 10 pbkv_on "$name" view --timeout 1
  local arg role=primary members=(s1 s2)
  local -a args
  [ "${PBKV_SERVERS:-2}" = 1 ] && members=(s1)
  for member in "${members[@]}"; do
    args=()
    for arg in "$@"; do
      if [[ $arg == *@PORT@* ]]; then take_port p; arg=${arg//@PORT@/$p}; fi
      args+=("$arg")
    done
    "$PBKV" server --listen "${!member}" --viewservice "$vs" ${security[$member]} "${args[@]}" \
      >"$WORK/$name-$member.log" 2>&1 & PIDS+=($!)
    CLUSTER_CPU_OF[$name]+=",$role=$!"
    wait_until 10 view_has "$name" "$role" "${!member}"
    role=backup
  done
  pbkv_on "$name" put bench-ready yes --timeout 10 >/dev/null
}
pbkv_on() { # pbkv_on NAME COMMAND ARG…
  local name=$1 command=$2; shift 2
  "$PBKV" "$command" --viewservice "${CLUSTER_VS[$name]}" ${CLUSTER_SECURITY[$name]} "$@"
}
view_has() { # view_has NAME ROLE ADDRESS: the view of cluster NAME names ADDRESS as ROLE
  pbkv_on "$1" view --json --timeout 2 | grep -q "\"$2\":\"$3\""
}
# bench_on NAME ARG…: `pbkv bench` against cluster NAME (its progress to $PROGRESS).
bench_on() { local name=$1; shift; pbkv_on "$name" bench "$@" 2>>"$PROGRESS"; }
# record FIELDS OBJECT: appends the JSON OBJECT to the results, FIELDS ("key":value,…) first.
record() { printf '{%s,%s\n' "$1" "${2#\{}" >>"$RESULTS"; }
mix_name() { [ "$1" = "put=100" ] && echo "write-only" || echo "90% reads"; }

start_pbkv_cluster plaintext --insecure

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
REDIS_CPU_OF="primary=$!"
redis_start "$R2" "$R1"
REDIS_CPU_OF+=",replica=$!"
wait_until 10 bash -c "redis-cli -p $R2 info replication | grep -q 'master_link_status:up'"

REDIS_VERSION=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
NOTE=${BENCH_NOTE:-}; NOTE=${NOTE//[\"\\]/}  # shown as it is, in JSON too
record '"section":"meta"' "{\"date\":\"$(date -u '+%Y-%m-%d %H:%M UTC')\",\"cores\":$(nproc),\"kernel\":\"$(uname -r)\",\"load_before\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"redis_version\":\"$REDIS_VERSION\",\"seconds_per_cell\":$SECONDS_PER_CELL,\"keys\":$KEYS${NOTE:+,\"note\":\"$NOTE\"}}"
echo "pbkv bench — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "pbkv: view service + primary + backup (processes, plaintext); Redis $REDIS_VERSION: primary + 1 replica; loopback."
echo "Each cell ${SECONDS_PER_CELL} s after 1 s warm-up, ${KEYS} keys, one request outstanding per client; ops/s and p50/p99 in µs."
[ -n "$NOTE" ] && echo "$NOTE"
echo

printf '%-24s | %9s %6s %6s | %9s %6s | %9s %6s | %7s %7s | %s\n' \
  "shape" "pbkv op/s" "p50" "p99" "SET op/s" "p50" "+WAIT1" "p50" "÷SET" "÷WAIT" "VS calls/op"
printf '%s\n' "-------------------------+------------------------+------------------+------------------+-----------------+------------"
# matrix_cell CLIENTS SHAPE BENCH_ARG…: one row of the matrix — pbkv, Redis SET, Redis SET+WAIT 1
# with the same load-generator arguments — recorded and printed.
matrix_cell() {
  local clients=$1 shape=$2; shift 2
  local common=(--clients "$clients" --duration "$SECONDS_PER_CELL" --keys "$KEYS" "$@" --json)
  local p r w pt rt wt errors
  p=$(bench_on plaintext "${common[@]}" --cpu-of "${CLUSTER_CPU_OF[plaintext]}")
  r=$("$PBKV" bench --redis "127.0.0.1:$R1" "${common[@]}" --cpu-of "$REDIS_CPU_OF" 2>>"$PROGRESS")
  w=$("$PBKV" bench --redis "127.0.0.1:$R1" --redis-wait 1 "${common[@]}" --cpu-of "$REDIS_CPU_OF" 2>>"$PROGRESS")
  record "\"section\":\"matrix\",\"shape\":\"$shape\",\"system\":\"pbkv\"" "$p"
  record "\"section\":\"matrix\",\"shape\":\"$shape\",\"system\":\"redis\"" "$r"
  record "\"section\":\"matrix\",\"shape\":\"$shape\",\"system\":\"redis-wait\"" "$w"
  pt=$(json throughput <<<"$p"); rt=$(json throughput <<<"$r"); wt=$(json throughput <<<"$w")
  printf '%-24s | %9.0f %6.0f %6.0f | %9.0f %6.0f | %9.0f %6.0f | %7.2f %7.2f | %s\n' "c=$clients $shape" \
    "$pt" "$(json p50_us <<<"$p")" "$(json p99_us <<<"$p")" \
    "$rt" "$(json p50_us <<<"$r")" "$wt" "$(json p50_us <<<"$w")" \
    "$(calc "$pt / $rt")" "$(calc "$pt / $wt")" "$(json viewservice_calls_per_op <<<"$p")"
  printf '%-24s   CPU µs/op: pbkv primary %.1f backup %.1f client %.1f | Redis SET primary %.1f replica %.1f | +WAIT1 primary %.1f replica %.1f\n' "" \
    "$(json cpu_us_per_op_primary <<<"$p")" "$(json cpu_us_per_op_backup <<<"$p")" "$(json cpu_us_per_op_client <<<"$p")" \
    "$(json cpu_us_per_op_primary <<<"$r")" "$(json cpu_us_per_op_replica <<<"$r")" \
    "$(json cpu_us_per_op_primary <<<"$w")" "$(json cpu_us_per_op_replica <<<"$w")"
  errors=$(json errors <<<"$p")
  [ "$errors" != "0" ] && echo "  (pbkv errors in this cell: $errors)"
  return 0
}
for clients in 1 50; do
  for size in 16 1024; do
    for mix in "put=100" "get=90,put=10"; do
      matrix_cell "$clients" "${size}B $(mix_name "$mix")" --value-size "$size" --mix "$mix"
    done
  done
done
# Pipelined: every client keeps $PIPELINE writes outstanding. pbkv answers each Put once the
# backup applied it; "+WAIT1" sends each SET followed by WAIT 1 0 and counts it when WAIT
# answered, $PIPELINE such pairs in flight per connection (Redis runs a client's commands in
# order, so each WAIT holds the SETs behind it until the replica acknowledged).
for clients in 1 50; do
  matrix_cell "$clients" "16B write-only P$PIPELINE" --pipeline "$PIPELINE" --value-size 16 --mix put=100
done
echo
echo "Cross-check with redis-benchmark (plain SET/GET, same concurrency and value size):"
for clients in 1 50; do
  for size in 16 1024; do
    n=$(( clients == 1 ? 15000 * SECONDS_PER_CELL : 40000 * SECONDS_PER_CELL ))
    out=$(redis-benchmark -p "$R1" -c "$clients" -n "$n" -d "$size" -r "$KEYS" -t set,get --csv 2>/dev/null)
    line="  c=$(printf '%-2s %5s' "$clients" "$size")B"
    for op in SET GET; do
      csv=$(grep "^\"$op\"" <<<"$out")
      rate=$(cut -d'"' -f4 <<<"$csv"); p50=$(calc "$(cut -d'"' -f10 <<<"$csv") * 1000")
      record '"section":"redis-benchmark"' "{\"clients\":$clients,\"value_size\":$size,\"op\":\"$op\",\"throughput\":${rate:-0},\"p50_us\":${p50:-0}}"
      line+=$(printf '  %s %8.0f op/s p50 %4.0f µs ' "$op" "$rate" "$p50")
    done
    echo "$line"
  done
done
# redis-benchmark -P: SET only, asynchronous replication (no WAIT), next to the pipelined rows.
for clients in 1 50; do
  n=$(( 100000 * SECONDS_PER_CELL ))
  csv=$(redis-benchmark -p "$R1" -c "$clients" -P "$PIPELINE" -n "$n" -d 16 -r "$KEYS" -t set --csv 2>/dev/null | grep '^"SET"')
  rate=$(cut -d'"' -f4 <<<"$csv"); p50=$(calc "$(cut -d'"' -f10 <<<"$csv") * 1000")
  record '"section":"redis-benchmark"' "{\"clients\":$clients,\"value_size\":16,\"pipeline\":$PIPELINE,\"op\":\"SET\",\"throughput\":${rate:-0},\"p50_us\":${p50:-0}}"
  printf '  c=%-2s    16B  SET -P %-3s %8.0f op/s p50 %4.0f µs (no WAIT)\n' "$clients" "$PIPELINE" "$rate" "$p50"
done
echo "load average after the matrix: $(cut -d' ' -f1-3 /proc/loadavg)"
record '"section":"meta"' "{\"load_after_matrix\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
echo

# compare_clusters GROUP TITLE BASE OTHER…: the same cells (c=1 and c=50, 16 B, write-only and
# 90 % reads) against each named pbkv cluster in turn, cell by cell, so that every cluster meets
# the same load on the machine: each cell runs twice per cluster, in the order BASE OTHER… then
# the reverse, and the two runs are averaged (a drift of the machine during a cell then weighs on
# every cluster alike); prints op/s, p50 and p99 per cluster and each OTHER's ratios to BASE,
# then one-client p50 and 50-client throughput (write-only) side by side, and records it all.
# mean_of_runs JSON JSON: one bench object whose numbers are the means of the two runs' (a
# number both runs share, such as the client count, is kept as it is).
mean_of_runs() {
  python3 -c 'import json, sys
a, b = (json.loads(x) for x in sys.argv[1:3])
print(json.dumps({k: (a[k] + b[k]) / 2 if isinstance(a[k], (int, float)) and not isinstance(a[k], bool) and a[k] != b[k] else a[k] for k in a}, separators=(",", ":")))' "$1" "$2"
}
compare_clusters() {
  local group=$1 title=$2; shift 2
  local base=$1 name clients mix shape out row
  local -A rate=() p50=()
  echo "$title — each cell against $(sed 's/ /, /g' <<<"$*") in turn, then in reverse order, mean of the two; 16 B values, ${SECONDS_PER_CELL} s per run:"
  local names units
  names=$(printf '%-24s' ""); units=$(printf '%-24s' "shape")
  for name in "$@"; do names+=$(printf ' | %-23.23s' "$name"); units+=$(printf ' | %9s %6s %6s' "op/s" "p50" "p99"); done
  for name in "${@:2}"; do names+=$(printf ' | %-16.16s' "$name/$base"); units+=' |   ÷op/s     ×p50'; done
  printf '%s\n%s\n' "$names" "$units"
  for clients in 1 50; do
    for mix in "put=100" "get=90,put=10"; do
      shape="16B $(mix_name "$mix")"
      row=$(printf '%-24s' "c=$clients $shape")
      local -A first=()
      for name in "$@"; do
        first[$name]=$(bench_on "$name" --clients "$clients" --duration "$SECONDS_PER_CELL" --keys "$KEYS" --value-size 16 --mix "$mix" --json)
      done
      local -A mean=()
      for name in $(printf '%s\n' "$@" | tac); do
        out=$(bench_on "$name" --clients "$clients" --duration "$SECONDS_PER_CELL" --keys "$KEYS" --value-size 16 --mix "$mix" --json)
        mean[$name]=$(mean_of_runs "${first[$name]}" "$out")
      done
      for name in "$@"; do
        out=${mean[$name]}
        record "\"section\":\"compare\",\"group\":\"$group\",\"title\":\"$title\",\"shape\":\"$shape\",\"system\":\"$name\"" "$out"
        rate[$name,$clients,$mix]=$(json throughput <<<"$out"); p50[$name,$clients,$mix]=$(json p50_us <<<"$out")
        row+=$(printf ' | %9.0f %6.0f %6.0f' "${rate[$name,$clients,$mix]}" "${p50[$name,$clients,$mix]}" "$(json p99_us <<<"$out")")
      done
      for name in "${@:2}"; do
        row+=$(printf ' | %7.2f %8.2f' "$(calc "${rate[$name,$clients,$mix]} / ${rate[$base,$clients,$mix]}")" \
          "$(calc "${p50[$name,$clients,$mix]} / ${p50[$base,$clients,$mix]}")")
      done
      echo "$row"
    done
  done
  for name in "${@:2}"; do
    printf '%s next to %s (16 B write-only): one-client p50 %.0f → %.0f µs (×%.2f); 50-client throughput %.0f → %.0f op/s (×%.2f)\n' \
      "$name" "$base" "${p50[$base,1,put=100]}" "${p50[$name,1,put=100]}" "$(calc "${p50[$name,1,put=100]} / ${p50[$base,1,put=100]}")" \
      "${rate[$base,50,put=100]}" "${rate[$name,50,put=100]}" "$(calc "${rate[$name,50,put=100]} / ${rate[$base,50,put=100]}")"
  done
  echo
}

# TLS cost. Another row set is two lines, e.g. for a server flag:
#   start_pbkv_cluster metrics --insecure --metrics 127.0.0.1:@PORT@
#   compare_clusters metrics "Cost of --metrics" plaintext metrics
# (or name it in this comparison: compare_clusters tls "…" plaintext tls metrics).
start_pbkv_cluster tls --tls
compare_clusters tls "TLS cost: plaintext vs mutual TLS" plaintext tls
# Metrics cost: the same servers with the Prometheus endpoint on (not scraped: what it costs to count).
start_pbkv_cluster metrics --insecure --metrics 127.0.0.1:@PORT@
compare_clusters metrics "Metrics cost: plaintext vs plaintext with --metrics" plaintext metrics
# Read leases: on (the default, the plaintext cluster) vs off (every Get goes through the backup).
start_pbkv_cluster noleases --insecure --read-leases=false
compare_clusters noleases "Read leases: on (default) vs --read-leases=false" plaintext noleases

# Replication cost, and the ceiling of the rest: the same server alone (no backup: each write
# commits on the primary, as Redis's SET does without WAIT) next to primary + backup.
PBKV_SERVERS=1 start_pbkv_cluster alone --insecure
compare_clusters alone "Replication cost: primary + backup vs a primary alone" plaintext alone

# The matrix clusters are no longer needed; stop them so the next sections have the machine.
cleanup; PIDS=()

"$PBKV" bench-cluster --insecure --sections "$SECTIONS" --failover-trials "$FAILOVER_TRIALS" \
  --transfer-keys "$TRANSFER_KEYS" --memory-keys "$MEMORY_KEYS" --results "$RESULTS"

# Wire bytes and CPU per Put: plain, zlib per frame, deflate streams (in process, exact).
"$PBKV" bench-wire
"$PBKV" bench-wire --json >>"$RESULTS"

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
  per_key=$(calc "($after - $before) / $MEMORY_KEYS")
  record '"section":"memory-redis"' "{\"keys\":$MEMORY_KEYS,\"value_size\":16,\"rss_before\":$before,\"rss_after\":$after,\"bytes_per_key\":$per_key}"
  printf 'memory: Redis, %d keys of 16 B (DEBUG POPULATE): RSS %.0f MiB → %.0f MiB, %.1f bytes per key\n' "$MEMORY_KEYS" \
    "$(calc "$before / 1048576")" "$(calc "$after / 1048576")" "$per_key"
fi
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

mkdir -p "$RESULTS_DIR"
cp "$RESULTS" "$RESULTS_DIR/latest.jsonl"
python3 scripts/bench_report.py "$RESULTS_DIR/latest.jsonl" "$RESULTS_DIR/latest"
