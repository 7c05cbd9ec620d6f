#!/usr/bin/env bash
# Baseline performance run of Starling, end to end on one machine, loopback only:
#   build (release) -> temp config -> provision accounts -> for each scenario: start a fresh
#   server, run starling-bench against it, stop it -> print the results.
#
# Scenarios: idle sessions over plaintext + PLAIN, idle sessions over STARTTLS + PLAIN, and
# chat pairs (plaintext + PLAIN). Each runs against a freshly started server so one run's
# freed-but-retained heap does not hide the next run's memory growth.
#
# Tunables (environment): USERS (2000) PAIRS (50) SECS (10) WINDOW (16) HOLD (5)
#   PORT (15222) MECH (plain | scram-sha-256) OUT (results dir; default a new /tmp dir)
#   KEEP=1 keeps the temporary server data directory. SKIP_BUILD=1 skips cargo build.
# Exit status: 0 when every scenario passed, else the first non-zero status.
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${USERS:-2000}
PAIRS=${PAIRS:-50}
SECS=${SECS:-10}
WINDOW=${WINDOW:-16}
HOLD=${HOLD:-5}
PORT=${PORT:-15222}
MECH=${MECH:-plain}
PASSWORD=bench-pw
OUT=${OUT:-$(mktemp -d /tmp/starling-baseline.XXXXXX)}
mkdir -p "$OUT"

if (( 2 * PAIRS > USERS )); then
    echo "PAIRS=$PAIRS needs $((2 * PAIRS)) accounts but USERS=$USERS" >&2
    exit 1
fi

if [[ -z "${SKIP_BUILD:-}" ]]; then
    echo "== building (release)"
    cargo build --release --bin starling --bin starling-bench
fi
TARGET_DIR=${CARGO_TARGET_DIR:-target}
STARLING=$TARGET_DIR/release/starling
BENCH=$TARGET_DIR/release/starling-bench

# Each process needs a descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (( $(ulimit -n) < USERS + 100 )); then
    echo "warning: open-file limit $(ulimit -n) is below USERS=$USERS; logins may fail" >&2
fi

WORK=$(mktemp -d /tmp/starling-bench-data.XXXXXX)
CFG=$WORK/starling.toml
cat > "$CFG" <<EOF
domain = "localhost"
data_dir = "$WORK/data"

[listen]
c2s = "127.0.0.1:$PORT"
c2s_direct_tls = ""
http = ""
https = ""
s2s = ""
s2s_direct_tls = ""
component = ""

[c2s]
require_tls = false

[log]
level = "warn"
EOF

SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        for _ in $(seq 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
cleanup() {
    stop_server
    if [[ -z "${KEEP:-}" ]]; then rm -rf "$WORK"; else echo "server data kept in $WORK"; fi
}
trap cleanup EXIT

start_server() {
    "$STARLING" --config "$CFG" serve >>"$OUT/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "server exited during start; see $OUT/server.log" >&2
            tail -20 "$OUT/server.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "server did not listen on 127.0.0.1:$PORT within 30s" >&2
    exit 1
}

echo "== provisioning $USERS accounts (${MECH})"
"$BENCH" gen-users "$USERS" --prefix bench --domain localhost --password "$PASSWORD" \
    | "$STARLING" --config "$CFG" adduser --from-file -

STATUS=0
COMMON=(--server "127.0.0.1:$PORT" --domain localhost --users-prefix bench --password "$PASSWORD" --mech "$MECH")

# run NAME ARGS...: fresh server, one scenario, results in $OUT/NAME.{md,json}
run() {
    local name=$1
    shift
    echo
    echo "== $name: starling-bench $*"
    start_server
    local rc=0
    "$BENCH" "$@" "${COMMON[@]}" --server-pid "$SERVER_PID" --json "$OUT/$name.json" \
        >"$OUT/$name.md" || rc=$?
    cat "$OUT/$name.md"
    stop_server
    if (( rc != 0 )); then
        echo "!! $name exited with status $rc" >&2
        if (( STATUS == 0 )); then STATUS=$rc; fi
    fi
}

run idle-plain idle --sessions "$USERS" --hold-secs "$HOLD"
run idle-tls idle --sessions "$USERS" --hold-secs "$HOLD" --tls
run chat chat --pairs "$PAIRS" --secs "$SECS" --window "$WINDOW"

# m FILE KEY [DECIMALS]: one metric out of a results file (one "key": value per line).
m() {
    local v
    v=$(sed -n "s/^ *\"$2\": \\([^,]*\\),\\{0,1\\}\$/\\1/p" "$OUT/$1.json" 2>/dev/null | head -1)
    if [[ $v =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then
        printf "%.${3:-0}f" "$v"
    else
        printf '%s' "${v:-n/a}"
    fi
}

echo
echo "== summary ($(nproc) cores; results in $OUT)"
printf '| Figure | Value |\n| --- | ---: |\n'
printf '| RSS per idle session, plaintext (%s sessions) | %s bytes |\n' "$USERS" "$(m idle-plain rss_per_session_bytes)"
printf '| RSS per idle session, STARTTLS (%s sessions) | %s bytes |\n' "$USERS" "$(m idle-tls rss_per_session_bytes)"
printf '| Login rate, plaintext / STARTTLS | %s / %s sessions/s |\n' "$(m idle-plain login_rate_per_s)" "$(m idle-tls login_rate_per_s)"
printf '| Login latency p50 / p99, plaintext | %s / %s ms |\n' "$(m idle-plain login_p50_ms 1)" "$(m idle-plain login_p99_ms 1)"
printf '| Server CPU per login, plaintext / STARTTLS | %s / %s µs |\n' "$(m idle-plain server_cpu_per_login_us)" "$(m idle-tls server_cpu_per_login_us)"
printf '| TCP accept-queue overflows during logins, plaintext / STARTTLS | %s / %s |\n' "$(m idle-plain listen_overflows)" "$(m idle-tls listen_overflows)"
printf '| Chat delivered (%s pairs, window %s) | %s msgs/s |\n' "$PAIRS" "$WINDOW" "$(m chat delivered_per_s)"
printf '| Chat latency p50 / p99 / p99.9 | %s / %s / %s ms |\n' "$(m chat latency_p50_ms 2)" "$(m chat latency_p99_ms 2)" "$(m chat latency_p999_ms 2)"
printf '| Exactly once (lost / duplicated) | %s (%s / %s) |\n' "$(m chat exactly_once)" "$(m chat missing)" "$(m chat duplicates)"
printf '| Chat CPU: server / generator / interrupts / other processes | %s%% / %s%% / %s%% / %s%% |\n' "$(m chat server_cpu_chat_pct)" "$(m chat generator_cpu_chat_pct)" "$(m chat irq_cpu_chat_pct)" "$(m chat other_cpu_chat_pct)"
printf '| Server CPU per message | %s µs |\n' "$(m chat server_cpu_per_message_us 2)"
exit "$STATUS"
