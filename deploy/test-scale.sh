#!/usr/bin/env bash
# Scaling the compose simulation while transfers run (issue 10): build braid:dev, generate
# the repo-root docker-compose.yml's network into deploy/net/compose (signed directory with
# one seed per role; `upstream` and `downstream` services whose replicas join with the
# operator's join credential; the `client` service), `docker-compose up -d` with the
# default counts, then through the client's SOCKS5 port:
#   1. a download of --mb MiB (default 256) at --rate (default 16M/s) while
#      `docker-compose up -d --scale upstream=5 --scale downstream=3` adds replicas: every
#      new replica must carry cells (its braid_cells_in_total) before the download ends;
#   2. a second download while `--scale upstream=2 --scale downstream=2` removes them
#      (SIGTERM: each tells the central it leaves, and drains);
# both byte-identical (sha256). Prints the time of each step.
#
#   deploy/test-scale.sh [--no-build] [--mb N] [--rate R] [--keep]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=1 mb=256 rate=16M keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --mb) mb=${2:?}; shift ;;
        --rate) rate=${2:?}; shift ;;
        --keep) keep=1 ;;
        *) echo "test-scale.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

me=test-scale.sh
# shellcheck source=deploy/test-lib.sh
. "$here/test-lib.sh"

prefix=172.30.0
net="$here/net/compose"
compose=(docker-compose -p braid -f "$root/docker-compose.yml")
socks=127.0.0.1:11080
origin_port=18080
work=$(mktemp -d /tmp/braid-test-scale.XXXXXX)
pids=()
up=0
trap compose_cleanup EXIT
trap 'exit 130' INT TERM

command -v docker-compose >/dev/null || fail "docker-compose (v1) is not installed"
if ip -4 route | grep -v br-braid | grep -q "^$prefix\."; then
    fail "$prefix.0/24 is already routed on this host; free it or edit the prefix"
fi

t0=$SECONDS
if [ "$build" = 1 ]; then
    "$here/build-image.sh" >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; fail "build-image.sh"; }
    log "image built in $((SECONDS - t0))s"
fi
bindir="$root/target/static/dist"

if [ -f "$root/docker-compose.yml" ]; then "${compose[@]}" down --remove-orphans -t 5 >/dev/null 2>&1 || true; fi
export BRAID_SOCKS=$socks
"$here/gen-net.sh" --compose "$prefix" --out "$net" --force --bin "$bindir/braid-node" \
    --drain-secs 30 --origin-port "$origin_port" \
    "${compose_defaults[@]}" --operator "$net/operator" 2>"$work/gen.log" ||
    { cat "$work/gen.log" >&2; fail "gen-net.sh"; }
diff -u <(sed 's#\./deploy/net/compose/#./#; /^# (deploy\/compose-file.sh)/d' "$root/docker-compose.yml" | grep -v '^#') \
        <(grep -v '^#' "$net/docker-compose.yml") >"$work/compose.diff" ||
    { cat "$work/compose.diff" >&2; fail "docker-compose.yml differs from what gen-net.sh generates (regenerate it, see deploy/README.md)"; }

# replicas ROLE: the container addresses of a scalable service's running replicas.
replicas() {
    local c
    for c in $("${compose[@]}" ps -q "$1"); do
        docker inspect -f '{{if .State.Running}}{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}{{end}}' "$c"
    done | grep -v '^$' || true
}
# cells ADDR: a node's braid_cells_in_total (0 when it does not answer).
cells() {
    curl -fsS --max-time 2 "http://$1/metrics" 2>/dev/null |
        awk '$1 ~ /^braid_cells_in_total/ {print $2; found=1} END {if (!found) print 0}'
}
# wait_replicas ROLE N DEADLINE: until ROLE has N running replicas answering /health.
wait_replicas() {
    local ip n
    while :; do
        n=0
        for ip in $(replicas "$1"); do
            curl -fsS -o /dev/null --max-time 2 "http://$ip:9100/health" && n=$((n + 1))
        done
        [ "$n" -ge "$2" ] && return 0
        [ "$SECONDS" -lt "$3" ] || fail "$1: $n of $2 replicas healthy"
        sleep 0.5
    done
}
# download NAME: a rate-limited download of the blob through the overlay, in the
# background; sets dl_pid.
download() {
    curl -fsS --max-time 600 --limit-rate "$rate" --proxy "socks5h://$socks" \
        -o "$work/$1" "$origin/blob" 2>"$work/$1.err" &
    dl_pid=$!
    pids+=("$dl_pid")
}
# finished NAME PID T: waits for a download and checks its sha256.
finished() {
    local rc=0 got
    wait "$2" || rc=$?
    [ "$rc" = 0 ] || fail "$1: curl exit $rc ($(cat "$work/$1.err"))"
    got=$(sha256sum "$work/$1" | cut -d' ' -f1)
    [ "$got" = "$want" ] || fail "$1: sha256 $got, want $want"
    log "$1: $mb MiB intact in $((SECONDS - $3))s"
}

t1=$SECONDS
"${compose[@]}" up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "docker-compose up"; }
up=1
ids=()
while read -r id; do ids+=("$id"); done < <(sed -n 's/^id = "\(.*\)"$/\1/p' "$net/directory.toml")
deadline=$((SECONDS + 60))
for id in "${ids[@]}"; do
    wait_health "$id" "$(container_ip "braid-$id"):9100" "$deadline"
done
wait_replicas upstream 1 "$deadline"
wait_replicas downstream 1 "$deadline"
log "up: ${ids[*]} and one replica each of upstream and downstream, healthy after $((SECONDS - t1))s"

serve_blob "$prefix.1" "$mb" "$origin_port"
origin="http://$prefix.1:$port"
wait_through "$origin/" 60

# 1. Scale up during a download.
old_up=$(replicas upstream | sort) old_down=$(replicas downstream | sort)
t2=$SECONDS
download first
first_pid=$dl_pid
sleep 2
"${compose[@]}" up -d --scale upstream=5 --scale downstream=3 >"$work/scale-up.log" 2>&1 ||
    { cat "$work/scale-up.log" >&2; fail "docker-compose up --scale upstream=5 --scale downstream=3"; }
wait_replicas upstream 5 $((SECONDS + 60))
wait_replicas downstream 3 $((SECONDS + 60))
log "scaled up to 5 upstream and 3 downstream replicas in $((SECONDS - t2 - 2))s"
new=()
for ip in $(replicas upstream | sort) $(replicas downstream | sort); do
    grep -qx "$ip" <<<"$old_up"$'\n'"$old_down" || new+=("$ip")
done
[ ${#new[@]} = 6 ] || fail "expected 6 new replicas (4 upstream, 2 downstream), found ${#new[@]}: ${new[*]}"
deadline=$((SECONDS + 30))
for ip in "${new[@]}"; do
    until [ "$(cells "$ip:9100")" -gt 0 ]; do
        kill -0 "$first_pid" 2>/dev/null || fail "the first download ended before $ip carried a cell"
        [ "$SECONDS" -lt "$deadline" ] || fail "the new replica $ip carried no cell"
        sleep 0.3
    done
done
sleep 1
for ip in "${new[@]}"; do log "new replica $ip: $(cells "$ip:9100") cells in"; done
finished first "$first_pid" "$t2"

# 2. Scale down during another download.
t3=$SECONDS
download second
second_pid=$dl_pid
sleep 2
"${compose[@]}" up -d --scale upstream=2 --scale downstream=2 >"$work/scale-down.log" 2>&1 ||
    { cat "$work/scale-down.log" >&2; fail "docker-compose up --scale upstream=2 --scale downstream=2"; }
log "scaled down to 2 and 2 in $((SECONDS - t3 - 2))s (the removed replicas drained first)"
[ "$(replicas upstream | wc -l)" = 2 ] && [ "$(replicas downstream | wc -l)" = 2 ] ||
    fail "after scaling down: $(replicas upstream | wc -l) upstream and $(replicas downstream | wc -l) downstream replicas"
finished second "$second_pid" "$t3"
"${compose[@]}" logs --no-color client >"$work/client.log" 2>&1 || true
grep -q "joined upstream is leaving" "$work/client.log" ||
    fail "the client never heard that a removed upstream was leaving"

"${compose[@]}" down -t 40 >/dev/null 2>&1 || fail "docker-compose down"
up=0
log "PASS (total $((SECONDS - t0))s)"
