# Shared by the deploy tests (sourced, not run). Expects: $me (the
# script's name), $work (its work folder), $socks (the client's SOCKS5 address), the
# array pids (processes the cleanup trap kills) and, once the client runs, $client_pid.
# shellcheck shell=bash disable=SC2154  # me, work, socks, client_pid, compose, up, keep: set by the sourcing script

# The gen-net.sh flags the repo-root docker-compose.yml is generated with (beside
# --compose 172.30.0 --out deploy/net/compose --operator deploy/net/compose/operator):
# one directory seed per role, and `upstream` and `downstream` services that scale.
# shellcheck disable=SC2034  # used by the sourcing scripts
compose_defaults=(--upstreams 1 --downstreams 1 --scalable upstream=1 --scalable downstream=1)

# container_ip NAME: a container's address on its (first) network.
container_ip() {
    docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" | awk '{print $1}'
}

fail() { echo "$me: FAIL: $*" >&2; exit 1; }

# compose_cleanup: the EXIT trap of the compose tests (needs compose, up, keep, work,
# pids): kills what they started, shows the containers' last lines after a failure, takes
# the simulation down, and keeps the work folder of a failed or --keep run.
compose_cleanup() {
    local rc=$? p
    for p in "${pids[@]+"${pids[@]}"}"; do kill -KILL "$p" 2>/dev/null || true; done
    { wait; } 2>/dev/null || true
    if [ "$rc" != 0 ] && [ "$up" = 1 ]; then
        log "container logs of the failed run (last lines):"
        "${compose[@]}" logs --no-color --tail 15 >&2 || true
    fi
    if [ "$up" = 1 ]; then "${compose[@]}" down --remove-orphans -t 5 >/dev/null 2>&1 || true; fi
    if [ "$keep" = 1 ] || [ "$rc" != 0 ]; then log "work folder kept: $work"; else rm -rf "$work"; fi
    exit "$rc"
}
log() { echo "$me: $*" >&2; }

# wait_health ID ADMIN DEADLINE [PID]: until ADMIN answers /health (by SECONDS=DEADLINE);
# with PID, fails at once if that process has exited.
wait_health() {
    until curl -fsS -o /dev/null --max-time 2 "http://$2/health"; do
        [ -z "${4:-}" ] || kill -0 "$4" 2>/dev/null || fail "$1 exited at start"
        [ "$SECONDS" -lt "$3" ] || fail "$1: no /health on $2"
        sleep 0.3
    done
}

# serve_blob BIND_IP MB [PORT]: serves MB random MiB as /blob with python3 -m http.server
# on BIND_IP, on PORT or a free one; sets want (its sha256) and port.
serve_blob() {
    mkdir -p "$work/www"
    head -c $(($2 * 1024 * 1024)) /dev/urandom >"$work/www/blob"
    want=$(sha256sum "$work/www/blob" | cut -d' ' -f1)
    port=${3:-$(python3 -c "import socket; s=socket.socket(); s.bind(('$1', 0)); print(s.getsockname()[1])")}
    python3 -m http.server --bind "$1" --directory "$work/www" "$port" >"$work/http.log" 2>&1 &
    pids+=($!)
}

# wait_through URL SECS: until URL answers through the overlay.
wait_through() {
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null --max-time 5 --proxy "socks5h://$socks" "$1" 2>/dev/null; do
        [ -z "${client_pid:-}" ] || kill -0 "$client_pid" 2>/dev/null || fail "the client exited"
        [ $SECONDS -lt $deadline ] || fail "no answer through the overlay within $2 s"
        sleep 0.5
    done
}

# fetch URL LABEL: downloads URL through the overlay and checks its sha256 against $want.
fetch() {
    local stats got size secs speed
    stats=$(curl -fsS --max-time 180 --proxy "socks5h://$socks" -o "$work/got" \
        -w '%{size_download} %{time_total} %{speed_download}' "$1") || fail "$2: the download failed"
    got=$(sha256sum "$work/got" | cut -d' ' -f1)
    read -r size secs speed <<<"$stats"
    log "$2: $size bytes in ${secs}s = $(awk -v s="$speed" 'BEGIN{printf "%.1f", s/1048576}') MiB/s, sha256 $got"
    [ "$got" = "$want" ] || fail "$2: sha256 mismatch (want $want)"
}

# refused URL WHY: the exit refuses URL (SOCKS5 reply 02, which curl reports as exit 97).
refused() {
    local rc=0
    curl -sS -o /dev/null --max-time 15 --proxy "socks5h://$socks" "$1" 2>"$work/refused.err" || rc=$?
    [ "$rc" = 97 ] || fail "$2 ($1): curl exit $rc, want 97 ($(cat "$work/refused.err"))"
    log "$2 refused: curl exit 97 ($(tr -d '\n' <"$work/refused.err"))"
}
