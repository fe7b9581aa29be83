#!/usr/bin/env bash
# Every test that needs docker, one after the other (`.ci/run` runs this when a docker
# engine answers): installs what they need from Debian's packages, builds the static
# binaries and the braid:dev image once, then
#   test-compose.sh  the compose simulation: download, exit policy, clean stop;
#   test-scale.sh    --scale up and down during 256 MiB downloads;
#   test-swarm.sh    the same compose file as a swarm stack, docker service scale;
#   test-deploy.sh   deploy.sh deploy/status/logs/restart/stop/clean over ssh against
#                    seven systemd containers, a download between deploy and stop.
# Prints each one's time.
#
#   deploy/test-docker.sh [--no-build]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=1
case "${1:-}" in --no-build) build=0 ;; "") ;; *) echo "test-docker.sh: unknown argument: $1" >&2; exit 2 ;; esac
me=test-docker.sh
log() { echo "$me: $*" >&2; }

missing=()
for c in curl:curl python3:python3 docker-compose:docker-compose ssh:openssh-client \
         debootstrap:debootstrap sha256sum:coreutils file:file ip:iproute2; do
    command -v "${c%%:*}" >/dev/null 2>&1 || missing+=("${c#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

t0=$SECONDS
if [ "$build" = 1 ]; then
    "$here/build-image.sh" >/tmp/braid-build-image.log 2>&1 ||
        { tail -n 40 /tmp/braid-build-image.log >&2; log "FAIL: build-image.sh"; exit 1; }
    log "static binaries and braid:dev built in $((SECONDS - t0))s"
fi

times=()
for t in "test-compose.sh --no-build" "test-scale.sh --no-build" "test-swarm.sh --no-build" \
         "test-deploy.sh --bin $here/../target/static/dist"; do
    read -r script args <<<"$t"
    t1=$SECONDS
    # shellcheck disable=SC2086  # args are words
    "$here/$script" $args || { log "FAIL: $script"; exit 1; }
    times+=("$script $((SECONDS - t1))s")
done
log "PASS: ${times[*]} (total $((SECONDS - t0))s)"
