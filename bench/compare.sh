#!/usr/bin/env bash
# bench/compare.sh [quick|full] - Hush against mosquitto (MQTT) and ejabberd (XMPP) on this
# machine, in one run, with one load generator (build/bench/bench_compare). `make bench` runs
# "quick" (a few minutes), `make bench-full` the large sizes.
#
# Fairness: every server runs pinned to CPU 0 and the load generator to CPU 1 (taskset), the same
# payload size (256 bytes) and the same client counts for all; the fd limit is raised and
# connections come from several 127.0.0.x addresses.
#
# Writes build/bench-results/: results-MODE.jsonl (one JSON object per measurement),
# results-MODE.json (all of them as one array), table-MODE.txt, latency-MODE.png (gnuplot).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
LG=$ROOT/$BUILD/bench/bench_compare
HUSHD=$ROOT/$BUILD/bin/hushd
OUT=$ROOT/$BUILD/bench-results
HUSH_PORT=${HUSH_PORT:-17443}
MQTT_PORT=${MQTT_PORT:-18830}
XMPP_PORT=${XMPP_PORT:-15222}

HUSHPUSH_PORT=${HUSHPUSH_PORT:-17453}
# hushpush: the same relay with push wake-ups pending for PUSH_DEVICES offline devices whose push
# service never answers (W2 only: does a hanging push service slow online traffic?)
PUSH_DEVICES=${PUSH_DEVICES:-2000}

port_of() { case $1 in hush) echo $HUSH_PORT ;; hushpush) echo $HUSHPUSH_PORT ;; mqtt) echo $MQTT_PORT ;; xmpp) echo $XMPP_PORT ;; esac; }

# ---------------------------------------------------------------------------------------------
# servers: start / stop / kill -9 + restart. State lives in $WORK/<system>/.

start_server() { # system dir
  local sys=$1 dir=$2 pin="" port
  [ "$(nproc)" -ge 2 ] && pin="taskset -c 0"
  port=$(port_of "$sys")
  if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
    echo "compare: port $port is already in use (another server?); set ${sys^^}_PORT" >&2
    exit 1
  fi
  case $sys in
  hush|hushpush)
    cat > "$dir/hushd.conf" <<EOF
listen = 127.0.0.1:$port
metrics_listen = off
db = $dir/hushd.db
workers = 1
durability = full
quota_messages = 100000000
quota_bytes = 1024g
send_burst = 10000000
send_refill_per_s = 10000000
max_connections = 1000000
auth_timeout = 120
log_level = warn
log_file = $dir/hushd.log
EOF
    if [ "$sys" = hushpush ]; then
      printf 'push_allow_http = on\npush_allow_private = on\n' >> "$dir/hushd.conf"
      # the push service: takes each request and never answers (the tests' Web Push receiver)
      rm -f "$dir/push.port"
      setsid python3 "$ROOT/tests/fixtures/push_receiver.py" "$dir/push.log" "$dir/push.port" > /dev/null 2>&1 < /dev/null &
      echo $! > "$dir/push.pid"; disown
      for _ in $(seq 1 100); do [ -s "$dir/push.port" ] && break; sleep 0.1; done
    fi
    setsid $pin "$HUSHD" --config "$dir/hushd.conf" > "$dir/out.log" 2>&1 < /dev/null &
    echo $! > "$dir/pid"; disown
    wait_port "$port" "$dir/out.log"
    ;;
  mqtt)
    cat > "$dir/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $dir/
autosave_interval 1800
max_queued_messages 0
max_inflight_messages 64
max_connections -1
log_dest stderr
log_type error
log_type warning
EOF
    id mosquitto > /dev/null 2>&1 && chown -R mosquitto "$dir"
    setsid $pin mosquitto -c "$dir/mosquitto.conf" > "$dir/out.log" 2>&1 < /dev/null &
    echo $! > "$dir/pid"; disown
    wait_port $MQTT_PORT "$dir/out.log"
    ;;
  xmpp)
    mkdir -p "$dir/conf" "$dir/logs" "$dir/spool"
    cat > "$dir/conf/ejabberd.yml" <<EOF
hosts:
  - "bench.local"
loglevel: warning
registration_timeout: infinity
certfiles: []
listen:
  -
    port: $XMPP_PORT
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: none
    access: all
    starttls: false
    backlog: 4096
auth_method: internal
auth_password_format: plain
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  register:
    allow: all
shaper_rules:
  max_user_offline_messages: 100000000
modules:
  mod_offline:
    access_max_user_messages: max_user_offline_messages
  mod_stream_mgmt: {}
  mod_register:
    ip_access: all
    access: register
  mod_roster: {}
  mod_disco: {}
  mod_ping: {}
  mod_muc:
    access: all
    access_create: all
    history_size: 0
    max_users: 5000
    max_user_conferences: 10
    default_room_options:
      mam: false
      persistent: false
EOF
    # ejabberdctl starts erl through `su ejabberd`, whose login resets the open-file limit to
    # 1024: start it through a wrapper that raises it again
    printf '#!/bin/sh\nulimit -n "$(ulimit -Hn)" 2>/dev/null\nexec /usr/bin/erl "$@"\n' > "$dir/conf/erl"
    chmod 755 "$dir/conf/erl"
    printf 'ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 +sbwt none +sbwtdcpu none +sbwtdio none"\nEJABBERD_PID_PATH=%s/ejabberd.pid\nERL=%s/conf/erl\n' \
        "$dir" "$dir" > "$dir/conf/ejabberdctl.cfg"
    cp /etc/ejabberd/inetrc "$dir/conf/" 2>/dev/null || true
    id ejabberd > /dev/null 2>&1 && chown -R ejabberd "$dir"
    setsid $pin ejabberdctl --config-dir "$dir/conf" --logs "$dir/logs" --spool "$dir/spool" \
        --node "hushbench@localhost" foreground > "$dir/out.log" 2>&1 < /dev/null &
    disown
    wait_port $XMPP_PORT "$dir/out.log"
    pgrep -n -f "beam.smp.*hushbench@localhost" > "$dir/pid"
    ;;
  esac
}

wait_port() { # port log
  for _ in $(seq 1 600); do
    if (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; then return 0; fi
    sleep 0.1
  done
  echo "compare: nothing listens on port $1; server log:" >&2
  tail -20 "$2" >&2
  exit 1
}

stop_server() { # system dir
  local sys=$1 dir=$2
  if [ -f "$dir/push.pid" ]; then kill "$(cat "$dir/push.pid")" 2> /dev/null || true; rm -f "$dir/push.pid"; fi
  [ -f "$dir/pid" ] || return 0
  local pid; pid=$(cat "$dir/pid")
  if [ "$sys" = xmpp ]; then
    ejabberdctl --config-dir "$dir/conf" --node "hushbench@localhost" stop > /dev/null 2>&1 || kill "$pid" 2> /dev/null || true
  else
    kill "$pid" 2> /dev/null || true
  fi
  for _ in $(seq 1 300); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2> /dev/null || true
  rm -f "$dir/pid"
}

kill9_restart() { # system dir  (called by the load generator through --kill-cmd)
  local sys=$1 dir=$2 pid
  pid=$(cat "$dir/pid")
  kill -9 "$pid"
  for _ in $(seq 1 300); do kill -0 "$pid" 2> /dev/null || break; sleep 0.05; done
  if [ "$sys" = xmpp ]; then sleep 1; fi # let epmd forget the node
  start_server "$sys" "$dir"
}

if [ "${1:-}" = "_kill9" ]; then
  kill9_restart "$2" "$3"
  exit 0
fi

# ---------------------------------------------------------------------------------------------

MODE=${1:-quick}
case $MODE in
quick) W1_SIZES="2000"; W2_SECS=4; W3_MSGS=16000; W3K_MSGS=6000; W4_USERS=2000; W4_RATE=500; DEF_ROUNDS=3; W6_SIZES="10 100" ;;
full)  W1_SIZES="10000 19000"; W2_SECS=10; W3_MSGS=100000; W3K_MSGS=50000; W4_USERS=10000; W4_RATE=1000; DEF_ROUNDS=5; W6_SIZES="10 100 1000" ;;
*) echo "usage: bench/compare.sh [quick|full]" >&2; exit 2 ;;
esac
SYSTEMS=${SYSTEMS:-"hush hushpush mqtt xmpp"}
# W2 at full speed runs ROUNDS times, the systems taking turns (hush mqtt xmpp hush mqtt xmpp ...),
# all three servers up the whole time: a neighbour's burst on this shared machine then hits every
# system alike, and the table shows each figure as the median with its range
ROUNDS=${ROUNDS:-$DEF_ROUNDS}
PAIRS=16

for cmd in taskset mosquitto ejabberdctl; do
  command -v $cmd > /dev/null || { echo "compare: $cmd missing (make bench installs the peers)" >&2; exit 1; }
done
[ -x "$LG" ] && [ -x "$HUSHD" ] || { echo "compare: build first (make bench)" >&2; exit 1; }

ulimit -n "$(ulimit -Hn)" 2> /dev/null || true
mkdir -p "$OUT"
RES=$OUT/results-$MODE.jsonl
: > "$RES"
WORK=$(mktemp -d /tmp/hush-bench.XXXXXX)
chmod 755 "$WORK"
LOAD=""
[ "$(nproc)" -ge 2 ] && LOAD="taskset -c 1"
cleanup() {
  for s in hush hushpush mqtt xmpp; do [ -d "$WORK/$s" ] && stop_server $s "$WORK/$s"; done
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT


echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); servers on CPU 0, load on CPU 1"
echo "peers: $(mosquitto -h 2>/dev/null | head -1 | sed 's/ *$//'), ejabberd $(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null)"
echo

# Waits (up to 15 s) until a server is idle: under 4 % of a CPU over half a second. The servers
# share one CPU, and one still busy after its own run (ejabberd tearing down a room of 100, with
# its presence broadcasts, takes seconds) would take it from the next system's measurement.
settle() { # pid
  local a b
  for _ in $(seq 1 30); do
    a=$(awk '{ print $14 + $15 }' "/proc/$1/stat" 2> /dev/null) || return 0
    sleep 0.5
    b=$(awk '{ print $14 + $15 }' "/proc/$1/stat" 2> /dev/null) || return 0
    [ $((b - a)) -le 2 ] && return 0
  done
}

# a failed scenario leaves its cells empty ("-") instead of stopping the whole comparison
run_on() { # system args...
  local s=$1; shift
  $LOAD "$LG" --system "$s" --port "$(port_of "$s")" --json "$RES" "$@" ||
      echo "compare: $s $* failed; its cells stay empty" >&2
  [ -f "$WORK/$s/pid" ] && settle "$(cat "$WORK/$s/pid")"
  return 0
}
median_of() { # system scenario label key: the median of key over that system's results
  grep "\"system\":\"$1\",\"scenario\":\"$2\",\"label\":\"$3\"" "$RES" |
    sed -n "s/.*\"$4\":\([-0-9.e+]*\).*/\1/p" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

# W2 at full speed, interleaved rounds (its users are the ones the later scenarios reuse)
for sys in $SYSTEMS; do
  rm -rf "${WORK:?}/$sys"; mkdir -p "$WORK/$sys"
  start_server $sys "$WORK/$sys"
  if [ $sys = hushpush ]; then
    run_on hushpush --scenario pushhang --conns "$PUSH_DEVICES" \
        --push-url "http://127.0.0.1:$(cat "$WORK/hushpush/push.port")/hang"
  fi
done
for r in $(seq 1 "$ROUNDS"); do
  for sys in $SYSTEMS; do
    exist=""; [ "$r" -gt 1 ] && exist=--users-exist
    run_on $sys --scenario w2 --pairs $PAIRS --duration $W2_SECS --label max $exist --server-pid "$(cat "$WORK/$sys/pid")"
  done
done
echo

# W6: rooms, the three taking turns (ejabberd: a MUC room). Four members write, each keeping a
# window that shrinks with the room so the deliveries in flight stay comparable; in the first
# round Hush also measures its bytes on disk per room message
if [ -z "${W2_ONLY:-}" ]; then
  for m in $W6_SIZES; do
    w=$(( 640 / m )); [ "$w" -lt 1 ] && w=1
    for r in $(seq 1 "$ROUNDS"); do
      for sys in hush mqtt xmpp; do
        case " $SYSTEMS " in *" $sys "*) ;; *) continue ;; esac
        exist=""; [ "$r" -gt 1 ] && exist=--users-exist
        db=""; [ $sys = hush ] && [ "$r" -eq 1 ] && db="--relay-db $WORK/hush/hushd.db"
        # shellcheck disable=SC2086
        run_on $sys --scenario w6 --members "$m" --senders 4 --window "$w" --duration "$W2_SECS" --label "m$m" \
            $exist $db --server-pid "$(cat "$WORK/$sys/pid")"
      done
    done
  done
  echo
fi

for sys in $SYSTEMS; do
  dir=$WORK/$sys
  if [ $sys = hushpush ] || [ -n "${W2_ONLY:-}" ]; then # W2 only
    [ $sys = hushpush ] &&
        echo "hushpush: $(grep -c . "$dir/push.log" 2> /dev/null || echo 0) wake-up requests reached the hanging push service"
    stop_server $sys "$dir"
    continue
  fi
  pid() { cat "$dir/pid"; }
  run() { run_on $sys "$@"; }
  w3=$W3_MSGS; w3k=$W3K_MSGS
  # ejabberd's offline store slows down as it grows (~600 msg/s at 16,000): 100,000 would take
  # longer than the load generator's 10-minute limit, so it gets the quick sizes
  if [ $sys = xmpp ] && [ "$w3" -gt 16000 ]; then w3=16000; w3k=6000; fi

  # W2 against offered load (a share of the median maximum), then W3, then W1 on a fresh server
  max=$(median_of $sys w2 max delivered_per_s)
  [ -n "$max" ] || max=1000
  for pct in 25 50 75; do
    rate=$(awk -v m="$max" -v p=$pct 'BEGIN { printf "%d", m * p / 100 }')
    run --scenario w2open --pairs $PAIRS --duration $W2_SECS --rate "$rate" --users-exist --label "p$pct" --server-pid "$(pid)"
  done
  # W3 on a fresh server with new users: nothing left over from an overloaded W2 phase is drained
  # with its messages
  stop_server $sys "$dir"; rm -rf "$dir"; mkdir -p "$dir"
  start_server $sys "$dir"
  run --scenario w3 --pairs $PAIRS --messages "$w3" --label offline
  run --scenario w3 --pairs $PAIRS --messages "$w3k" --users-exist --label kill9 \
      --kill-cmd "bash $ROOT/bench/compare.sh _kill9 $sys $dir"
  # W2's kill -9 variant: the recipients online while the server is killed and restarted
  run --scenario w3 --online --pairs $PAIRS --messages "$w3k" --users-exist --label w2kill9 \
      --kill-cmd "bash $ROOT/bench/compare.sh _kill9 $sys $dir"
  for n in $W1_SIZES; do
    stop_server $sys "$dir"; rm -rf "$dir"; mkdir -p "$dir"
    start_server $sys "$dir"
    run --scenario w1 --conns "$n" --server-pid "$(pid)" --label "c$n"
  done
  if [ $sys = hush ]; then # W4: presence (Hush only, see docs/PERFORMANCE.md)
    stop_server $sys "$dir"; rm -rf "$dir"; mkdir -p "$dir"
    start_server $sys "$dir"
    run --scenario w4 --conns $W4_USERS --rate $W4_RATE --label "u$W4_USERS"
  fi
  stop_server $sys "$dir"
  echo
done

# ---------------------------------------------------------------------------------------------
# the table

{ echo "["; sed '$!s/$/,/' "$RES"; echo "]"; } > "$OUT/results-$MODE.json"

awk -v mode="$MODE" -v rounds="$ROUNDS" '
function val(line, key,   m) {
  if (match(line, "\"" key "\":[-0-9.e+naif]*")) { m = substr(line, RSTART, RLENGTH); sub(/^[^:]*:/, "", m); return m }
  return ""
}
function str(line, key,   m) {
  if (match(line, "\"" key "\":\"[^\"]*\"")) { m = substr(line, RSTART, RLENGTH); sub(/^[^:]*:"/, "", m); sub(/"$/, "", m); return m }
  return ""
}
{ s = str($0, "system"); k = str($0, "scenario") "/" str($0, "label"); nl[s, k]++; line[s, k, nl[s, k]] = $0; keys[k] = 1 }
# a figure measured in several rounds is their median; range() shows the lowest and highest
function collect(s, k, f,   i, v, n, j, t) {
  n = 0
  for (i = 1; i <= nl[s, k]; i++) { v = val(line[s, k, i], f); if (v != "" && v != "nan" && v != "-nan") vals[++n] = v + 0 }
  for (i = 2; i <= n; i++) { t = vals[i]; for (j = i - 1; j >= 1 && vals[j] > t; j--) vals[j + 1] = vals[j]; vals[j + 1] = t }
  return n
}
function cell(s, k, f,   n) { n = collect(s, k, f); if (!n) return "-"; return n % 2 ? vals[(n + 1) / 2] : (vals[n / 2] + vals[n / 2 + 1]) / 2 }
function range(s, k, f,   n) { n = collect(s, k, f); if (n < 2) return ""; return " (" fmt(vals[1]) "-" fmt(vals[n]) ")" }
function fmt(v) { if (v == "-" || v == "nan") return v; if (v + 0 >= 100) return sprintf("%.0f", v); return sprintf("%.2f", v) }
function ratio(a, b, higher_better) {
  if (a == "-" || b == "-" || a == "nan" || b == "nan" || a + 0 == 0 || b + 0 == 0) return "-"
  return sprintf("%.2fx", higher_better ? a / b : b / a)
}
function prow(name, f, hb,   p, h) {
  p = cell("hushpush", "w2/max", f); h = cell("hush", "w2/max", f)
  printf "%-44s %22s %22s\n", name, fmt(p) range("hushpush", "w2/max", f), ratio(p, h, hb)
}
function row(name, k, f, hb) {
  h = cell("hush", k, f); m = cell("mqtt", k, f); x = cell("xmpp", k, f)
  printf "%-44s %22s %22s %22s %10s %10s\n", name, fmt(h) range("hush", k, f), fmt(m) range("mqtt", k, f),
         fmt(x) range("xmpp", k, f), hb < 0 ? "" : ratio(h, m, hb), hb < 0 ? "" : ratio(h, x, hb)
}
END {
  printf "%-44s %22s %22s %22s %10s %10s\n", "scenario (" mode ")", "hush", "mosquitto", "ejabberd", "vs mosq", "vs ejab"
  printf "%-44s %22s %22s %22s %10s %10s\n", "", "", "", "", "(>1: hush", "better)"
  printf "%-44s\n", "(W2 max: median of " rounds " interleaved rounds, lowest-highest in brackets)"
  for (k in keys) if (k ~ /^w1\//) { n = substr(k, 5)
    row("W1 " n " conns: connect+login /s", k, "connect_per_s", 1)
    row("W1 " n " conns: server KiB per connection", k, "kib_per_conn", 0)
    row("W1 " n " conns: KiB per connection, 2nd half", k, "kib_per_conn_second_half", 0)
    row("W1 " n " conns: server CPU % while logging in", k, "server_cpu_pct", -1)
    row("W1 " n " conns: load generator CPU %", k, "lg_cpu_pct", -1) }
  row("W2 max acked msg/s", "w2/max", "acked_per_s", 1)
  row("W2 max delivered msg/s", "w2/max", "delivered_per_s", 1)
  row("W2 at max: latency p99 ms", "w2/max", "p99_ms", 0)
  row("W2 at max: server CPU us per acked msg", "w2/max", "cpu_us_per_msg", 0)
  row("W2 at max: server CPU %", "w2/max", "server_cpu_pct", -1)
  row("W2 at max: load generator CPU %", "w2/max", "lg_cpu_pct", -1)
  if (nl["hushpush", "w2/max"]) {
    printf "%-44s %22s %22s\n", "W2 max, push service hanging", "hush + hanging push", "ratio to hush"
    prow("  acked msg/s", "acked_per_s", 1)
    prow("  latency p99 ms", "p99_ms", 0)
    prow("  server CPU us per acked msg", "cpu_us_per_msg", 0)
  }
  split("p25 p50 p75", ps, " ")
  for (i = 1; i <= 3; i++) { k = "w2open/" ps[i]; pc = substr(ps[i], 2)
    row("W2 at " pc "% of own max: offered msg/s", k, "offered_per_s", 1)
    row("W2 at " pc "% of own max: latency p50 ms", k, "p50_ms", 0)
    row("W2 at " pc "% of own max: latency p99 ms", k, "p99_ms", 0)
    row("W2 at " pc "% of own max: latency p99.9 ms", k, "p999_ms", 0)
    row("W2 at " pc "% of own max: server CPU us/msg", k, "cpu_us_per_msg", 0) }
  row("W3 offline: fill (acked) msg/s", "w3/offline", "fill_per_s", 1)
  row("W3 offline: drain msg/s", "w3/offline", "drain_per_s", 1)
  row("W3 offline: acked but lost", "w3/offline", "lost", 0)
  row("W3 offline: duplicated", "w3/offline", "dups", 0)
  row("W3 kill -9 mid-fill: acked", "w3/kill9", "acked", 1)
  row("W3 kill -9 mid-fill: acked but lost", "w3/kill9", "lost", 0)
  row("W3 kill -9 mid-fill: duplicated", "w3/kill9", "dups", 0)
  row("W2 kill -9 mid-stream (online): acked", "w3/w2kill9", "acked", 1)
  row("W2 kill -9 mid-stream: acked but lost", "w3/w2kill9", "lost", 0)
  row("W2 kill -9 mid-stream: delivered twice", "w3/w2kill9", "dups", 0)
  for (k in keys) if (k ~ /^w6\//) { n = substr(k, 5)
    row("W6 room of " n ": messages/s into the room", k, "msgs_per_s", 1)
    row("W6 room of " n ": deliveries/s", k, "deliveries_per_s", 1)
    row("W6 room of " n ": latency p99 ms", k, "p99_ms", 0)
    row("W6 room of " n ": to the last member p99 ms", k, "last_p99_ms", 0)
    row("W6 room of " n ": server CPU us per delivery", k, "cpu_us_per_delivery", 0)
    row("W6 room of " n ": bytes on disk per message", k, "stored_bytes_per_msg", -1) }
  for (k in keys) if (k ~ /^w4\//) {
    row("W4 presence: logins/s (" substr(k, 5) ")", k, "login_per_s", 1)
    row("W4 presence: online notifications/s", k, "notifications_per_s", 1)
    row("W4 presence: login -> follower p50 ms", k, "p50_ms", 0)
    row("W4 presence: login -> follower p99 ms", k, "p99_ms", 0) }
}' "$RES" | tee "$OUT/table-$MODE.txt"

cat <<'EOF' | tee -a "$OUT/table-$MODE.txt"

Durability promise of an acknowledgement:
  hush       the ack follows COMMIT with SQLite synchronous=FULL, or the recipient device's own ack
             (which follows its own commit): survives kill -9 and power loss of the relay
  mosquitto  QoS 1 ack from memory; persistence writes the whole state every autosave_interval
             (1800 s here) and at a clean shutdown: kill -9 loses everything since the last save
  ejabberd   stream-management ack once routed; offline messages go to Mnesia (disc_copies), whose
             log is written without an fsync per message: survives kill -9 of the VM only as far
             as the log reached the page cache; power loss can lose recent messages
EOF

if command -v gnuplot > /dev/null; then
  for s in hush mqtt xmpp; do
    grep "\"system\":\"$s\",\"scenario\":\"w2open\"" "$RES" |
      sed -n 's/.*"offered_per_s":\([0-9.]*\).*"p50_ms":\([0-9.]*\),"p99_ms":\([0-9.]*\).*/\1 \2 \3/p' | sort -n > "$WORK/$s.dat" || true
  done
  gnuplot <<EOF 2> /dev/null || echo "compare: gnuplot failed; no plot"
set terminal pngcairo size 900,550 noenhanced
set output "$OUT/latency-$MODE.png"
set title "W2 online one-to-one, 256-byte messages: latency against offered load (same machine, same run)"
set xlabel "offered load (messages/s)"
set ylabel "latency (ms)"
set logscale y
set key top left
set grid
plot "$WORK/hush.dat" using 1:2 with linespoints title "hush p50", \
     "$WORK/hush.dat" using 1:3 with linespoints title "hush p99", \
     "$WORK/mqtt.dat" using 1:2 with linespoints title "mosquitto p50", \
     "$WORK/mqtt.dat" using 1:3 with linespoints title "mosquitto p99", \
     "$WORK/xmpp.dat" using 1:2 with linespoints title "ejabberd p50", \
     "$WORK/xmpp.dat" using 1:3 with linespoints title "ejabberd p99"
EOF
  [ -f "$OUT/latency-$MODE.png" ] && echo "plot: $OUT/latency-$MODE.png"
fi
echo "results: $OUT/results-$MODE.json, table: $OUT/table-$MODE.txt"
