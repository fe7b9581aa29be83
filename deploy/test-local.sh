#!/usr/bin/env bash
# End-to-end check of the deployment pieces on one machine, no docker, no ssh:
# deploy.sh --render-only for an inventory of 127.77.0.x addresses, every node started
# as its own braid-node process from its bundle, the client from its bundle, a 32 MiB
# random file fetched from python3 -m http.server on 127.0.0.1 through socks5h and
# compared by sha256, a refused target, then SIGTERM to everything.
#
#   deploy/test-local.sh [--ha] [--bin DIR] [--mb N] [--keep]
#
# --ha runs the 15-server high-availability layout instead of the 7-server minimum:
# 5 upstreams, 2 centrals, 5 downstreams, 2 relays, 1 gateway. After the download it
# kill -9s the central the client's session runs through (named by the client's log line
# "session open with a central"), checks that every other node stays healthy (each is
# still linked to the live central), times how long until a new download works, and
# fetches the file again with its sha256 checked. The client runs with
# BRAID_KEEPALIVE_MS=500 BRAID_PEER_TIMEOUT_MS=1500 (this process only) so that it gives
# up on the dead central within ~2 s; with the defaults (15 s / 10 s) it takes ~10 s.
# --bin DIR takes braid-node and braid from DIR (default: deploy.sh builds them static).
# The gateway is started with BRAID_EXIT__ALLOW_LOOPBACK=true (this process only) so its
# exit may reach the origin on 127.0.0.1; the generated config keeps the safe default.
# Exits non-zero on any failure; a trap stops every process it started.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bindir="" mb=32 keep=0 ha=0
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bindir=${2:?--bin needs a folder}; shift ;;
        --mb) mb=${2:?}; shift ;;
        --keep) keep=1 ;;
        --ha) ha=1 ;;
        *) echo "test-local.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

me=test-local.sh
# shellcheck source=deploy/test-lib.sh
. "$here/test-lib.sh"

work=$(mktemp -d /tmp/braid-test-local.XXXXXX)
pids=()
cleanup() {
    local rc=$? p
    for p in "${pids[@]+"${pids[@]}"}"; do kill -KILL "$p" 2>/dev/null || true; done
    { wait; } 2>/dev/null || true
    if [ "$rc" != 0 ]; then
        log "logs of the failed run (last lines):"
        for f in "$work"/logs/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 15 "$f"; } >&2; done
    fi
    if [ "$keep" = 1 ] || [ "$rc" != 0 ]; then log "work folder kept: $work"; else rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

net=127.77.0
socks="$net.1:1080"
if [ "$ha" = 1 ]; then
    # 15 servers: upstreams .2-.6, centrals .7-.8, downstreams .9-.13, relays .14-.15,
    # gateway .16.
    {
        echo "# role    public-addr     (no ssh: --render-only)"
        for h in 2 3 4 5 6; do echo "upstream   $net.$h"; done
        for h in 7 8; do echo "central    $net.$h"; done
        for h in 9 10 11 12 13; do echo "downstream $net.$h"; done
        for h in 14 15; do echo "relay      $net.$h"; done
        echo "gateway    $net.16"
    } >"$work/inventory"
    central_addr="$net.7:7400"
else
    cat >"$work/inventory" <<EOF
# role    public-addr     (no ssh: --render-only)
upstream   $net.2
upstream   $net.3
central    $net.4
downstream $net.5
downstream $net.6
relay      $net.7
gateway    $net.8
EOF
    central_addr="$net.4:7400"
fi

args=(--render-only "$work/r" --bind public --socks "$socks" --drain-secs 10)
[ -z "$bindir" ] || args+=(--bin "$bindir")
"$here/deploy.sh" "${args[@]}" "$work/inventory" >/dev/null 2>"$work/deploy.log" ||
    { cat "$work/deploy.log" >&2; fail "deploy.sh --render-only"; }
b="$work/r/bundles"
node_bin="$b/upstream-1/bin/braid-node"
client_bin="$b/client/bin/braid"

# Bundles must carry private keys 0600 and the gateway must keep the safe default.
for k in "$b"/*/conf/keys/noise.key "$b"/*/conf/keys/tls.key; do
    [ "$(stat -c %a "$k")" = 600 ] || fail "$k is not 0600"
done
grep -q '^allow_loopback = false' "$b/gateway-1/conf/node.toml" || fail "gateway config does not keep allow_loopback = false"

mkdir -p "$work/logs"
ids=()
for d in "$b"/*/; do
    id=$(basename "$d")
    [ "$id" = client ] && continue
    ids+=("$id")
done
declare -A pid_of
for id in "${ids[@]}"; do
    if [ "${id%%-*}" = gateway ]; then
        BRAID_EXIT__ALLOW_LOOPBACK=true "$node_bin" --config "$b/$id/conf/node.toml" >"$work/logs/$id.log" 2>&1 &
    else
        "$node_bin" --config "$b/$id/conf/node.toml" >"$work/logs/$id.log" 2>&1 &
    fi
    pid_of[$id]=$!
    pids+=($!)
done

# Every node's admin port answers /health.
deadline=$((SECONDS + 20))
for id in "${ids[@]}"; do
    wait_health "$id" "$(sed -n 's/^admin = "\(.*\)"$/\1/p' "$b/$id/conf/node.toml")" \
        "$deadline" "${pid_of[$id]}"
done
log "${#ids[@]} nodes up: ${ids[*]}"

if [ "$ha" = 1 ]; then
    BRAID_KEEPALIVE_MS=500 BRAID_PEER_TIMEOUT_MS=1500 \
        "$client_bin" run --config "$b/client/conf/client.toml" >"$work/logs/client.log" 2>&1 &
else
    "$client_bin" run --config "$b/client/conf/client.toml" >"$work/logs/client.log" 2>&1 &
fi
client_pid=$!
pids+=("$client_pid")

serve_blob 127.0.0.1 "$mb"
wait_through "http://127.0.0.1:$port/" 20
fetch "http://127.0.0.1:$port/blob" "download"

# A directory node's address is refused even with allow_loopback (SOCKS reply 02 -> curl 97).
refused "http://$central_addr/" "request to a central ($central_addr)"

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
central_in_use() {
    sed -n 's/.*session open with a central.*central=\(central-[0-9]*\).*/\1/p' \
        "$work/logs/client.log" | tail -n 1
}
if [ "$ha" = 1 ]; then
    used=$(central_in_use)
    [ -n "$used" ] || fail "no 'session open with a central' line in the client's log"
    log "the client's session runs through $used; kill -9 $used (pid ${pid_of[$used]})"
    t_kill=$(now_ms)
    kill -KILL "${pid_of[$used]}"
    wait "${pid_of[$used]}" 2>/dev/null || true
    # The first small download that works after the kill.
    until curl -fsS -o /dev/null --max-time 5 --proxy "socks5h://$socks" "http://127.0.0.1:$port/" 2>/dev/null; do
        [ $(( $(now_ms) - t_kill )) -lt 30000 ] || fail "no download within 30 s of killing $used"
        sleep 0.1
    done
    t_back=$(( $(now_ms) - t_kill ))
    now=$(central_in_use)
    log "first download after the kill worked $t_back ms after it (session now through $now)"
    [ "$now" != "$used" ] || fail "the client's session still names the dead $used"
    # Every other node is healthy: linked to the central that is left.
    for id in "${ids[@]}"; do
        [ "$id" = "$used" ] && continue
        wait_health "$id" "$(sed -n 's/^admin = "\(.*\)"$/\1/p' "$b/$id/conf/node.toml")" \
            $((SECONDS + 5)) "${pid_of[$id]}"
    done
    log "the other $(( ${#ids[@]} - 1 )) nodes answer /health 200"
    fetch "http://127.0.0.1:$port/blob" "download after the kill"
    # The dead central is not stopped again below.
    left_ids=()
    for id in "${ids[@]}"; do [ "$id" = "$used" ] || left_ids+=("$id"); done
    ids=("${left_ids[@]}")
fi

# SIGTERM everything; every process must exit, the nodes within the drain deadline
# (10 s as generated here) plus a margin.
stop_ms() { echo $(( $(date +%s%N) / 1000000 )); }
t_stop=$(stop_ms)
kill -TERM "$client_pid"
for id in "${ids[@]}"; do kill -TERM "${pid_of[$id]}"; done
pid_of[client]=$client_pid
left=("${ids[@]}" client)
while [ ${#left[@]} -gt 0 ]; do
    [ $(( $(stop_ms) - t_stop )) -lt 15000 ] || fail "still running 15 s after SIGTERM: ${left[*]}"
    still=()
    for id in "${left[@]}"; do
        p=${pid_of[$id]}
        if kill -0 "$p" 2>/dev/null; then still+=("$id"); continue; fi
        rc=0; wait "$p" || rc=$?
        case "$rc" in 0) ;; *) fail "$id exited with status $rc after SIGTERM" ;; esac
        log "$id exited (status $rc) $(( $(stop_ms) - t_stop )) ms after SIGTERM"
    done
    left=("${still[@]+"${still[@]}"}")
    sleep 0.05
done
log "all stopped $(( $(stop_ms) - t_stop )) ms after SIGTERM"
log "PASS"
