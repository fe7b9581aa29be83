#!/usr/bin/env bash
# The repo-root docker-compose.yml as a swarm stack (issue 10). On a one-node swarm
# (`docker swarm init --advertise-addr 127.0.0.1`, made here and left again when this
# machine is in none): generate the network into deploy/net/compose (its gateway may reach
# one port of docker_gwbridge's host side, where the test file is served),
# `docker stack deploy -c docker-compose.yml braid`, a download through the `client`
# service's SOCKS5 port, then `docker service scale braid_upstream=4` during a second
# download: every new upstream task must carry cells (read inside it with
# `docker exec TASK braid-node admin --metrics 127.0.0.1:9100`: overlay addresses are not
# reachable from the host). Both downloads byte-identical (sha256), then `docker stack rm`.
#
#   deploy/test-swarm.sh [--no-build] [--mb N] [--rate R] [--keep]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=1 mb=64 rate=8M keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --mb) mb=${2:?}; shift ;;
        --rate) rate=${2:?}; shift ;;
        --keep) keep=1 ;;
        *) echo "test-swarm.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

me=test-swarm.sh
# shellcheck source=deploy/test-lib.sh
. "$here/test-lib.sh"

prefix=172.30.0
net="$here/net/compose"
stack=braid
socks=127.0.0.1:11080
origin_port=18080
work=$(mktemp -d /tmp/braid-test-swarm.XXXXXX)
pids=()
deployed=0 made_swarm=0

# tasks SERVICE: the running containers of a stack service.
tasks() {
    docker ps -q --filter "label=com.docker.swarm.service.name=${stack}_$1" --filter status=running
}
# admin CONTAINER [--metrics]: the node's /health or /metrics, asked from inside.
admin() {
    docker exec "$1" /usr/local/bin/braid-node admin 127.0.0.1:9100 "${@:2}"
}
cells() {
    admin "$1" --metrics 2>/dev/null |
        awk '$1 ~ /^braid_cells_in_total/ {print $2; found=1} END {if (!found) print 0}'
}
remove_stack() {
    docker stack rm "$stack" >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 90))
    while docker network ls --format '{{.Name}}' | grep -qx "${stack}_braidnet"; do
        [ "$SECONDS" -lt "$deadline" ] || { log "the stack's network is still there"; return 1; }
        sleep 1
    done
}
cleanup() {
    local rc=$? p
    for p in "${pids[@]+"${pids[@]}"}"; do kill -KILL "$p" 2>/dev/null || true; done
    { wait; } 2>/dev/null || true
    if [ "$rc" != 0 ] && [ "$deployed" = 1 ]; then
        log "service logs of the failed run (last lines):"
        for s in central-1 relay-1 gateway-1 upstream-1 downstream-1 upstream downstream client; do
            docker service logs --no-task-ids --tail 8 "${stack}_$s" >&2 2>&1 || true
        done
    fi
    if [ "$deployed" = 1 ]; then remove_stack || true; fi
    if [ "$made_swarm" = 1 ]; then docker swarm leave --force >/dev/null 2>&1 || true; fi
    if [ "$keep" = 1 ] || [ "$rc" != 0 ]; then log "work folder kept: $work"; else rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$SECONDS
if [ "$build" = 1 ]; then
    "$here/build-image.sh" >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; fail "build-image.sh"; }
    log "image built in $((SECONDS - t0))s"
fi
bindir="$root/target/static/dist"

case "$(docker info -f '{{.Swarm.LocalNodeState}}')" in
    active) log "using the swarm this machine is in" ;;
    inactive)
        docker swarm init --advertise-addr 127.0.0.1 >/dev/null || fail "docker swarm init"
        made_swarm=1
        log "made a one-node swarm" ;;
    *) fail "this machine's swarm state is $(docker info -f '{{.Swarm.LocalNodeState}}')" ;;
esac
# A docker-compose simulation on the same network would collide with the stack's.
docker-compose -p braid -f "$root/docker-compose.yml" down --remove-orphans -t 5 >/dev/null 2>&1 || true
gw_ip=$(docker network inspect docker_gwbridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
[ -n "$gw_ip" ] || fail "docker_gwbridge has no gateway address"

"$here/gen-net.sh" --compose "$prefix" --out "$net" --force --bin "$bindir/braid-node" \
    --drain-secs 30 --origin-port "$origin_port" --exit-allow "$gw_ip/32:$origin_port" \
    "${compose_defaults[@]}" --operator "$net/operator" 2>"$work/gen.log" ||
    { cat "$work/gen.log" >&2; fail "gen-net.sh"; }

t1=$SECONDS
export BRAID_SOCKS=$socks
docker stack deploy -c "$root/docker-compose.yml" "$stack" >"$work/deploy.log" 2>&1 ||
    { cat "$work/deploy.log" >&2; fail "docker stack deploy"; }
deployed=1
deadline=$((SECONDS + 120))
for s in central-1 relay-1 gateway-1 upstream-1 downstream-1 upstream downstream; do
    until c=$(tasks "$s" | head -n 1) && [ -n "$c" ] && admin "$c" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "${stack}_$s: no healthy task"
        sleep 1
    done
done
until c=$(docker ps -q --no-trunc --filter "label=com.docker.swarm.service.name=${stack}_client" \
        --filter status=running | head -n 1) && [ -n "$c" ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "${stack}_client: no running task"
    sleep 1
done
# The client task's SOCKS5 port, at its docker_gwbridge address: this engine sets up no
# ingress routing mesh (no DOCKER-INGRESS rules), so the published port answers nowhere
# here; on a real swarm, socks5h://HOST:1080 works.
client_ip=$(docker network inspect docker_gwbridge \
    -f "{{range \$k, \$v := .Containers}}{{if eq \$k \"$c\"}}{{\$v.IPv4Address}}{{end}}{{end}}")
[ -n "$client_ip" ] || fail "the client task has no docker_gwbridge address"
socks="${client_ip%/*}:1080"
log "stack deployed and healthy in $((SECONDS - t1))s; the client's SOCKS5 port is $socks"

serve_blob "$gw_ip" "$mb" "$origin_port"
origin="http://$gw_ip:$port"
wait_through "$origin/" 90
t2=$SECONDS
fetch "$origin/blob" "through the stack"

# Scale the upstreams during a second download.
old=$(tasks upstream)
curl -fsS --max-time 600 --limit-rate "$rate" --proxy "socks5h://$socks" \
    -o "$work/second" "$origin/blob" 2>"$work/second.err" &
second=$!
pids+=("$second")
t3=$SECONDS
docker service scale "${stack}_upstream=4" >"$work/scale.log" 2>&1 ||
    { cat "$work/scale.log" >&2; fail "docker service scale ${stack}_upstream=4"; }
deadline=$((SECONDS + 90))
until [ "$(tasks upstream | wc -l)" -ge 4 ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "${stack}_upstream has $(tasks upstream | wc -l) running tasks, want 4"
    sleep 1
done
log "scaled ${stack}_upstream to 4 tasks in $((SECONDS - t3))s"
new=()
for c in $(tasks upstream); do grep -qx "$c" <<<"$old" || new+=("$c"); done
[ ${#new[@]} = 3 ] || fail "expected 3 new upstream tasks, found ${#new[@]}"
deadline=$((SECONDS + 60))
for c in "${new[@]}"; do
    until [ "$(cells "$c")" -gt 0 ]; do
        kill -0 "$second" 2>/dev/null || fail "the second download ended before task $c carried a cell"
        [ "$SECONDS" -lt "$deadline" ] || fail "the new upstream task $c carried no cell"
        sleep 0.5
    done
    log "new upstream task $c: $(cells "$c") cells in"
done
rc=0
wait "$second" || rc=$?
[ "$rc" = 0 ] || fail "second download: curl exit $rc ($(cat "$work/second.err"))"
[ "$(sha256sum "$work/second" | cut -d' ' -f1)" = "$want" ] || fail "second download: sha256 mismatch"
log "second download: $mb MiB intact in $((SECONDS - t3))s, across the scaling"

t4=$SECONDS
remove_stack || fail "docker stack rm left the network behind"
deployed=0
log "docker stack rm took $((SECONDS - t4))s"
log "PASS (total $((SECONDS - t0))s, download and scaling $((SECONDS - t2))s)"
