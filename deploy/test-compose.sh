#!/usr/bin/env bash
# End-to-end check of the image and the compose simulation: build braid:dev, generate
# the default network (directory seeds upstream-1, central-1, downstream-1, relay-1,
# gateway-1, one replica each of the joining `upstream` and `downstream` services, and the
# `client` service) on 172.30.0.0/24 into deploy/net/compose, check the repo-root
# docker-compose.yml matches what the generator writes, `docker-compose up -d`, use the
# client service's SOCKS5 port, fetch a 32 MiB random file served by python3 -m http.server on
# the bridge's host side (172.30.0.1) through socks5h (by address and by a name the
# gateway resolves from /etc/hosts), compare sha256, check that forbidden targets are
# refused (curl exit 97), stop with SIGTERM and check every container's exit code,
# `docker-compose down`.
#
#   deploy/test-compose.sh [--no-build] [--mb N] [--keep] [--upstreams N] [--downstreams N] [--relays N]
#
# With counts, the network is generated with them and its own compose file
# (deploy/net/compose/docker-compose.yml) is used instead of the repo-root one.
#
# Exits non-zero on any failure; a trap stops the client, the web server and the
# containers.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=1 mb=32 keep=0 counts=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --mb) mb=${2:?}; shift ;;
        --keep) keep=1 ;;
        --upstreams|--downstreams|--relays) counts+=("$1" "${2:?$1 needs a number}"); shift ;;
        *) echo "test-compose.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

me=test-compose.sh
# shellcheck source=deploy/test-lib.sh
. "$here/test-lib.sh"

prefix=172.30.0
net="$here/net/compose"
if [ ${#counts[@]} -eq 0 ]; then compose_file="$root/docker-compose.yml"; else compose_file="$net/docker-compose.yml"; fi
compose=(docker-compose -p braid -f "$compose_file")
socks=127.0.0.1:11080
origin_port=18080
work=$(mktemp -d /tmp/braid-test-compose.XXXXXX)
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
    log "image built in $((SECONDS - t0))s: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' braid:dev)"
fi
bindir="$root/target/static/dist"

# Stop a leftover simulation before its identities are replaced.
if [ -f "$compose_file" ]; then "${compose[@]}" down --remove-orphans -t 5 >/dev/null 2>&1 || true; fi
if [ ${#counts[@]} -eq 0 ]; then counts=("${compose_defaults[@]}" --operator "$net/operator"); fi
export BRAID_SOCKS=$socks
"$here/gen-net.sh" --compose "$prefix" --out "$net" --force --bin "$bindir/braid-node" \
    --drain-secs 30 --origin-port "$origin_port" "${counts[@]}" 2>"$work/gen.log" ||
    { cat "$work/gen.log" >&2; fail "gen-net.sh"; }

# The committed root compose file is the generator's output for these defaults, with the
# node folders under ./deploy/net/compose.
[ "$compose_file" != "$root/docker-compose.yml" ] ||
diff -u <(sed 's#\./deploy/net/compose/#./#; /^# (deploy\/compose-file.sh)/d' "$root/docker-compose.yml" | grep -v '^#') \
        <(grep -v '^#' "$net/docker-compose.yml") >"$work/compose.diff" ||
    { cat "$work/compose.diff" >&2; fail "docker-compose.yml differs from what gen-net.sh generates (regenerate it, see deploy/README.md)"; }

t1=$SECONDS
"${compose[@]}" up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "docker-compose up"; }
up=1
ids=()
while read -r id; do ids+=("$id"); done < <(sed -n 's/^id = "\(.*\)"$/\1/p' "$net/directory.toml")
deadline=$((SECONDS + 30))
for id in "${ids[@]}"; do
    wait_health "$id" "$(container_ip "braid-$id"):9100" "$deadline"
done
log "${#ids[@]} containers healthy $((SECONDS - t1))s after docker-compose up: ${ids[*]}"

serve_blob "$prefix.1" "$mb" "$origin_port"
# A second server on another port of the same host: the exit's rule names only the first.
other_port=$((origin_port + 1))
python3 -m http.server --bind "$prefix.1" --directory "$work/www" "$other_port" >"$work/http2.log" 2>&1 &
pids+=($!)
origin="http://$prefix.1:$port"
wait_through "$origin/" 30

log "sha256 of the served file $want"
fetch "$origin/blob" "by address ($prefix.1)"
fetch "http://origin.braid.test:$port/blob" "by name (origin.braid.test, resolved in the gateway container)"

central_ip=$(container_ip braid-central-1)
refused "http://$central_ip:7400/" "the central's container address"
refused "http://127.0.0.1:$port/" "loopback"
refused "http://169.254.169.254/latest/meta-data/" "cloud metadata"
refused "http://$prefix.9:$port/" "another address of the bridge network (not allowed by the rule)"
refused "http://$prefix.1:$other_port/" "another port of the bridge's host side (not allowed by the rule)"
refused "http://$prefix.1:25/" "a mail port"
"${compose[@]}" logs --no-color client >"$work/client.log" 2>&1 || true
grep -q 'refus' "$work/client.log" || log "note: the client's log does not mention the refusals"

# Stop: the containers with docker-compose stop (SIGTERM, then the grace period); every
# node and the client must exit 0 on their own.
t2=$SECONDS
"${compose[@]}" stop >"$work/stop.log" 2>&1 || { cat "$work/stop.log" >&2; fail "docker-compose stop"; }
log "docker-compose stop took $((SECONDS - t2))s"
for id in "${ids[@]}" client; do
    code=$(docker inspect -f '{{.State.ExitCode}} {{.State.OOMKilled}}' "braid-$id")
    [ "$code" = "0 false" ] || fail "$id: exit code/OOM after SIGTERM: $code"
done
log "every container exited 0 after SIGTERM"
"${compose[@]}" down >/dev/null 2>&1 || fail "docker-compose down"
up=0
log "PASS (total $((SECONDS - t0))s)"
