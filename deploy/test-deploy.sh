#!/usr/bin/env bash
# End-to-end check of deploy.sh over real ssh against 7 Debian hosts that run systemd:
# docker containers with systemd as PID 1 and sshd, on a user-defined bridge network with
# fixed addresses (2 upstreams, 1 central, 2 downstreams, 1 relay, 1 gateway).
#
#   deploy/test-deploy.sh [--bin DIR] [--mb N] [--sandbox] [--keep] [--rebuild-image]
#                         [--mirror URL]
#
# Steps (each timed): the static binaries (deploy/build-image.sh --no-docker, or --bin
# DIR); the host image braid-systemd-host:bookworm (debootstrap --variant=minbase with
# systemd, systemd-sysv, openssh-server, iproute2, then docker import; built only when
# missing or with --rebuild-image); the bridge network and 7 containers (`/sbin/init`,
# tmpfs /run, /sys/fs/cgroup read-only), an ssh key in root's authorized_keys and the
# inventory with `root@IP` targets; then, through deploy.sh only:
#   deploy   a closed, signed network (--operator) whose gateway may reach one port of
#            the bridge's host side (--exit-allow HOST-SIDE/32:PORT)
#   status   every node active and healthy, its version that of the binary, its
#            directory version the signed one
#   logs     one node's journal, and -f (ended by a timeout)
#   client   `braid run` on this machine from the client bundle; an N MiB random file
#            (default 16) from python3 -m http.server on the bridge's host side, through
#            curl --socks5-hostname, sha256 compared; a node's address refused
#   restart  one node, then a rolling restart of all; every node's main PID changed,
#            all healthy again, and the download again
#   stop     one node (inactive, the others active), then all
#   clean    refused without --yes when stdin is not a terminal; with --yes no unit,
#            binary, /etc/braid or braid user is left on any host
# and the containers and network are removed (also by a trap on failure or ^C).
#
# The shipped unit runs unchanged. In these containers (no --privileged, no added
# capability) systemd cannot make a mount namespace and skips, without failing, every
# option that needs one (ProtectSystem, ProtectHome, PrivateTmp, PrivateDevices,
# ReadOnlyPaths, InaccessiblePaths, ProtectKernelTunables, ProtectKernelModules,
# ProtectKernelLogs, ProtectControlGroups) and ProtectHostname (a UTS namespace); the
# seccomp, capability and NoNewPrivileges options apply. The script prints what holds.
# --sandbox starts the containers with --cap-add SYS_ADMIN so that systemd applies every
# option (asserted: / is read-only in the unit's mount namespace).
# --keep keeps the work folder and leaves the containers running (the next run removes
# them). Exits non-zero on any failure, with the nodes' journals.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bindir="" mb=16 sandbox=0 keep=0 rebuild=0 mirror=http://deb.debian.org/debian
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bindir=${2:?--bin needs a folder}; shift ;;
        --mb) mb=${2:?--mb needs a number}; shift ;;
        --sandbox) sandbox=1 ;;
        --keep) keep=1 ;;
        --rebuild-image) rebuild=1 ;;
        --mirror) mirror=${2:?--mirror needs a URL}; shift ;;
        -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
        *) echo "test-deploy.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

me=test-deploy.sh
# shellcheck source=deploy/test-lib.sh
. "$here/test-lib.sh"

image=braid-systemd-host:bookworm
label=braid-deploy-test
netname=braid-deploy-test
prefix=172.31.250          # the bridge; its host side is .1, the hosts .11 to .17
work=$(mktemp -d /tmp/braid-test-deploy.XXXXXX)
pids=()
names=() ips=() nids=()
up=0 t_all=$SECONDS
timings=()

# ---- timing and cleanup -------------------------------------------------------------------
step_name="" step_t=0
begin() { step_name=$1; step_t=$SECONDS; log "---- $1"; }
done_step() {
    local d=$((SECONDS - step_t))
    timings+=("$(printf '%-44s %5ss' "$step_name" "$d")")
    log "---- $step_name: ${d}s"
    step_name=""
}
print_timings() {
    local t
    log "times:"
    for t in "${timings[@]+"${timings[@]}"}"; do echo "    $t" >&2; done
    if [ -n "$step_name" ]; then echo "    $(printf '%-44s %5ss' "$step_name (unfinished)" $((SECONDS - step_t)))" >&2; fi
    echo "    $(printf '%-44s %5ss' total $((SECONDS - t_all)))" >&2
}
remove_containers() {
    docker ps -aq --filter "label=$label" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker network ls -q --filter "label=$label" | xargs -r docker network rm >/dev/null 2>&1 || true
}
# Unmounts whatever an interrupted debootstrap left mounted under DIR, then removes it.
remove_rootfs() {
    local m
    [ -d "$1" ] || return 0
    awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$1"
}
cleanup() {
    local rc=$? p i
    trap - EXIT
    for p in "${pids[@]+"${pids[@]}"}"; do kill -KILL "$p" 2>/dev/null || true; done
    { wait; } 2>/dev/null || true
    remove_rootfs "$work/rootfs"
    if [ "$rc" != 0 ] && [ "$up" = 1 ]; then
        log "journals of the failed run (last lines):"
        for i in "${!names[@]}"; do
            echo "--- ${nids[$i]} (${names[$i]})" >&2
            docker exec "${names[$i]}" journalctl -u "braid-node@${nids[$i]}" -n 12 --no-pager >&2 2>/dev/null || true
        done
        [ -f "$work/client.log" ] && { echo "--- client"; tail -n 15 "$work/client.log"; } >&2
    fi
    if [ "$keep" = 1 ]; then
        log "containers left running (label $label; the next run removes them)"
    elif [ "$up" = 1 ]; then
        remove_containers
    fi
    if [ "$keep" = 1 ] || [ "$rc" != 0 ]; then log "work folder kept: $work"; else rm -rf "$work"; fi
    if [ "$rc" != 0 ]; then log "FAILED (exit $rc)"; fi
    print_timings
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for c in docker ssh ssh-keygen curl python3 sha256sum; do
    command -v "$c" >/dev/null || fail "$c is not installed"
done
docker info >/dev/null 2>&1 || fail "docker does not answer (is the daemon running, are you root or in the docker group?)"

# Leftovers of an earlier run (--keep, or killed) would hold the names and the subnet.
remove_containers
if ip -4 route | grep -q "^$prefix\."; then
    fail "$prefix.0/24 is already routed on this host; free it or edit prefix in $0"
fi

# ---- binaries -----------------------------------------------------------------------------
begin "static binaries"
if [ -z "$bindir" ]; then
    bindir=$("$here/build-image.sh" --no-docker 2>"$work/build.log" | tail -n 1) ||
        { tail -n 30 "$work/build.log" >&2; fail "build-image.sh --no-docker"; }
fi
# A copy: a build elsewhere may replace target/static/dist while this runs, and the
# directory must be signed and checked by the same build.
mkdir -p "$work/bin"
from=$bindir
for b in braid-node braid; do
    [ -x "$bindir/$b" ] || fail "no executable $bindir/$b"
    cp "$bindir/$b" "$work/bin/$b"
done
bindir="$work/bin"
bin_version=$("$bindir/braid-node" --version | awk '{ print $NF }')
log "binaries from $from (braid-node $bin_version), copied to $bindir"
done_step

# ---- the host image -----------------------------------------------------------------------
if [ "$rebuild" = 1 ] || ! docker image inspect "$image" >/dev/null 2>&1; then
    begin "host image (debootstrap + docker import)"
    [ "$(id -u)" = 0 ] || fail "building $image needs root (debootstrap)"
    command -v debootstrap >/dev/null || fail "debootstrap is not installed (apt-get install -y debootstrap)"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,openssh-server,iproute2 \
        bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        { tail -n 20 "$work/debootstrap.log" >&2; fail "debootstrap (log: $work/debootstrap.log)"; }
    rm -f "$work/rootfs/var/cache/apt/archives/"*.deb
    old_image=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null) || true
    tar -C "$work/rootfs" -c . | docker import -c 'CMD ["/sbin/init"]' \
        -c "LABEL org.braid.recipe=debootstrap-minbase-bookworm" - "$image" >/dev/null ||
        fail "docker import"
    # --rebuild-image: the previous image, now untagged, is not left behind.
    if [ -n "$old_image" ]; then docker rmi "$old_image" >/dev/null 2>&1 || true; fi
    remove_rootfs "$work/rootfs"
    log "$image: $(docker image ls --format '{{.Size}}' "$image")"
    done_step
else
    log "reusing the image $image (--rebuild-image to build it again)"
fi

# ---- hosts ------------------------------------------------------------------------------------
begin "7 systemd+sshd containers up"
ssh-keygen -q -t ed25519 -N '' -C braid-deploy-test -f "$work/id_ed25519"
ssh_opts=(-i "$work/id_ed25519" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)
docker network create --subnet "$prefix.0/24" --gateway "$prefix.1" --label "$label" \
    "$netname" >/dev/null || fail "docker network create $prefix.0/24"
up=1
caps=()
[ "$sandbox" = 0 ] || caps=(--cap-add SYS_ADMIN)
# gen-net.sh names nodes ROLE-N in inventory order: these are their ids.
layout=(upstream-1 upstream-2 central-1 downstream-1 downstream-2 relay-1 gateway-1)
for k in "${!layout[@]}"; do
    id=${layout[$k]} ip="$prefix.$((11 + k))" name="braid-dt-${layout[$k]}"
    docker run -d --name "$name" --hostname "$id" --label "$label" --network "$netname" \
        --ip "$ip" --tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
        "${caps[@]+"${caps[@]}"}" "$image" /sbin/init >/dev/null || fail "docker run $name"
    names+=("$name"); ips+=("$ip"); nids+=("$id")
done
for k in "${!names[@]}"; do
    name=${names[$k]}
    st=$(docker exec "$name" timeout 60 systemctl is-system-running --wait 2>/dev/null) || true
    case "$st" in running|degraded) ;; *) fail "$name: systemd is '$st' after 60 s, not running" ;; esac
    docker exec -i "$name" sh -c 'mkdir -p -m 700 /root/.ssh && cat >/root/.ssh/authorized_keys &&
        chmod 600 /root/.ssh/authorized_keys && systemctl start ssh' <"$work/id_ed25519.pub" ||
        fail "$name: could not set up sshd"
done
deadline=$((SECONDS + 30))
for ip in "${ips[@]}"; do
    until ssh "${ssh_opts[@]}" -o BatchMode=yes -o ConnectTimeout=3 "root@$ip" true 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || fail "no ssh to root@$ip within 30 s"
        sleep 0.5
    done
done
{
    echo "# role      public-addr      ssh-target  (written by test-deploy.sh)"
    for k in "${!layout[@]}"; do
        printf '%-11s %-16s root@%s\n' "${layout[$k]%-*}" "${ips[$k]}" "${ips[$k]}"
    done
} >"$work/inventory"
log "${#names[@]} hosts answer ssh: ${ips[*]}$([ "$sandbox" = 0 ] || echo ' (--cap-add SYS_ADMIN)')"
done_step

# ---- deploy.sh ------------------------------------------------------------------------------
socks_port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
socks="127.0.0.1:$socks_port"
origin_port=$(python3 -c "import socket; s=socket.socket(); s.bind(('$prefix.1', 0)); print(s.getsockname()[1])")
ds_opts=(--out "$work/out")
for o in "${ssh_opts[@]}"; do ds_opts+=(--ssh-opt "$o"); done
# ds SUBCOMMAND [ARG...]: deploy.sh against this inventory.
ds() { local sub=$1; shift; "$here/deploy.sh" "$sub" "${ds_opts[@]}" "$work/inventory" "$@"; }

begin "deploy.sh deploy"
ds deploy --bin "$bindir" --operator "$work/operator" --socks "$socks" \
    --exit-allow "$prefix.1/32:$origin_port" >"$work/deploy.log" 2>&1 ||
    { tail -n 40 "$work/deploy.log" >&2; fail "deploy.sh deploy (log: $work/deploy.log)"; }
n_running=$(grep -c 'install.sh: braid-node@.* is running' "$work/deploy.log") || true
[ "$n_running" = 7 ] || { cat "$work/deploy.log" >&2; fail "deploy.sh deploy: $n_running of 7 nodes report running"; }
dir_version=$(sed -n 's/^version = \([0-9]*\)$/\1/p' "$work/out/net/directory.toml")
[ -n "$dir_version" ] || fail "the generated directory is not signed (no version line)"
log "deployed 7 nodes; directory version $dir_version"
# The old form (no subcommand) still deploys; --dry-run only prints the ssh and scp.
ds_old=("${ds_opts[@]}" --dry-run --bin "$bindir" "$work/inventory")
"$here/deploy.sh" "${ds_old[@]}" >"$work/dry-run.log" 2>&1 || { cat "$work/dry-run.log" >&2; fail "deploy.sh --dry-run INVENTORY"; }
n=$(grep -c '^ssh \|^scp ' "$work/dry-run.log") || true
[ "$n" = 21 ] || { cat "$work/dry-run.log" >&2; fail "deploy.sh --dry-run printed $n ssh/scp commands, want 21"; }
done_step

# row ID: the node's row of $work/status.txt.
row() { awk -v id="$1" '$1 == id' "$work/status.txt"; }
# rows_ok STATE: every node's row in $work/status.txt says STATE and, when active: health
# ok, all its links up (exactly: a central may count a restarted peer's old link until it
# times out), the binary's version and the signed directory's; else prints what is not.
rows_ok() {
    local id r
    for id in "${layout[@]}"; do
        r=$(row "$id")
        [ -n "$r" ] || { echo "no row for $id"; return 1; }
        case "$r" in *" $1 "*) ;; *) echo "$id is not $1: $r"; return 1 ;; esac
        [ "$1" != active ] && continue
        case "$r" in *" ok "*) ;; *) echo "$id is not healthy: $r"; return 1 ;; esac
        case "$id" in
            central-*) case "$r" in *" 2/2 downstreams, 1/1 gateways "*) ;; *) echo "$id links: $r"; return 1 ;; esac ;;
            relay-*) ;;
            *) case "$r" in *" 1/1 centrals "*) ;; *) echo "$id links: $r"; return 1 ;; esac ;;
        esac
        case "$r" in *" $bin_version "*) ;; *) echo "$id: version is not $bin_version: $r"; return 1 ;; esac
        case "$r" in *" $dir_version") ;; *) echo "$id: directory version is not $dir_version: $r"; return 1 ;; esac
    done
}
# status_until_healthy SECS: deploy.sh status until it exits 0 and rows_ok active holds;
# the last table in $work/status.txt.
status_until_healthy() {
    local deadline=$((SECONDS + $1)) t0=$SECONDS rc why
    while :; do
        rc=0
        ds status >"$work/status.txt" 2>"$work/status.err" || rc=$?
        if [ "$rc" = 0 ]; then why=$(rows_ok active) && break; else why=$(cat "$work/status.err"); fi
        [ "$rc" = 0 ] || [ "$rc" = 3 ] || { cat "$work/status.txt" "$work/status.err" >&2; fail "deploy.sh status exited $rc"; }
        [ $SECONDS -lt $deadline ] || { cat "$work/status.txt" >&2; fail "not all healthy and linked within $1 s: $why"; }
        sleep 1
    done
    cat "$work/status.txt" >&2
    log "all 7 active, healthy and linked ($((SECONDS - t0))s)"
}
# check_rows STATE: rows_ok STATE or fail.
check_rows() { local why; why=$(rows_ok "$1") || fail "$why"; }

begin "deploy.sh status (all healthy)"
status_until_healthy 60
done_step

# What the unit's sandbox looks like in these containers (the shipped unit, unchanged).
c=${names[2]} id=${nids[2]}
pid=$(docker exec "$c" systemctl show -p MainPID --value "braid-node@$id")
rootmode=$(docker exec "$c" awk '$5 == "/" { split($6, o, ","); print o[1] }' "/proc/$pid/mountinfo")
procstat=$(docker exec "$c" grep -E '^(NoNewPrivs|Seccomp|CapEff):' "/proc/$pid/status" | tr -s '\t\n' '  ')
uts=$(docker exec "$c" journalctl -u "braid-node@$id" --no-pager | grep -c 'ProtectHostname=yes is configured, but UTS namespace setup is prohibited') || true
log "sandbox of braid-node@$id: / is $rootmode in its mount namespace; $procstat; ProtectHostname skipped: $uts time(s)"
if [ "$sandbox" = 1 ]; then
    [ "$rootmode" = ro ] || fail "--sandbox: / is $rootmode for braid-node@$id: ProtectSystem=strict was not applied"
    [ "$uts" = 0 ] || fail "--sandbox: ProtectHostname was skipped"
elif [ "$rootmode" = rw ]; then
    log "as expected without CAP_SYS_ADMIN: the mount-namespace options and ProtectHostname are skipped (seccomp, NoNewPrivileges and capabilities apply)"
fi

begin "deploy.sh logs (and -f)"
ds logs central-1 -n 50 >"$work/logs.txt" 2>&1 || { cat "$work/logs.txt" >&2; fail "deploy.sh logs central-1"; }
grep -q 'Started braid-node@central-1' "$work/logs.txt" ||
    { cat "$work/logs.txt" >&2; fail "deploy.sh logs central-1: no 'Started braid-node@central-1' line"; }
log "logs central-1: $(wc -l <"$work/logs.txt") lines, e.g.: $(grep -v '^--' "$work/logs.txt" | tail -n 1 | cut -c1-150)"
rc=0
timeout 4 "$here/deploy.sh" logs "${ds_opts[@]}" "$work/inventory" gateway-1 -f -n 5 >"$work/logs-f.txt" 2>&1 </dev/null || rc=$?
[ "$rc" = 124 ] || { cat "$work/logs-f.txt" >&2; fail "deploy.sh logs -f ended by itself (exit $rc) instead of following"; }
[ -s "$work/logs-f.txt" ] || fail "deploy.sh logs -f printed nothing"
log "logs -f gateway-1: followed until the timeout, $(wc -l <"$work/logs-f.txt") lines"
done_step

begin "download through the network (${mb} MiB)"
"$work/out/bundles/client/bin/braid" run --config "$work/out/bundles/client/conf/client.toml" \
    >"$work/client.log" 2>&1 &
client_pid=$!
pids+=("$client_pid")
serve_blob "$prefix.1" "$mb" "$origin_port"
origin="http://$prefix.1:$port"
wait_through "$origin/" 60
fetch "$origin/blob" "download"
refused "http://${ips[2]}:7400/" "the central's address"
done_step

# main_pids: "id=pid ..." of every node, from systemd on each host.
main_pids() {
    local k
    for k in "${!names[@]}"; do
        printf '%s=%s ' "${nids[$k]}" "$(docker exec "${names[$k]}" systemctl show -p MainPID --value "braid-node@${nids[$k]}")"
    done
}

begin "deploy.sh restart relay-1"
before=$(main_pids)
ds restart relay-1 >"$work/restart1.log" 2>&1 || { cat "$work/restart1.log" >&2; fail "deploy.sh restart relay-1"; }
grep -q 'active and healthy' "$work/restart1.log" || { cat "$work/restart1.log" >&2; fail "restart relay-1: no 'active and healthy'"; }
after=$(main_pids)
for kv in $before; do
    case "$kv" in
        relay-1=*) case " $after " in *" $kv "*) fail "relay-1 kept its PID (${kv#*=})" ;; esac ;;
        *) case " $after " in *" $kv "*) ;; *) fail "${kv%%=*} was restarted too (before: $before; after: $after)" ;; esac ;;
    esac
done
log "restarted alone: $(grep 'active and healthy' "$work/restart1.log")"
done_step

begin "deploy.sh restart (rolling, all 7)"
before=$(main_pids)
ds restart >"$work/restart.log" 2>&1 || { cat "$work/restart.log" >&2; fail "deploy.sh restart"; }
sed 's/^/    /' "$work/restart.log" >&2
n=$(grep -c 'active and healthy' "$work/restart.log") || true
[ "$n" = 7 ] || fail "rolling restart: $n of 7 nodes reported healthy"
after=$(main_pids)
for kv in $before; do
    case " $after " in *" $kv "*) fail "${kv%%=*} kept its PID (${kv#*=}): not restarted" ;; esac
done
status_until_healthy 90
done_step

begin "download after the restart"
wait_through "$origin/" 60
fetch "$origin/blob" "download after the rolling restart"
done_step

kill -TERM "$client_pid"
rc=0; wait "$client_pid" || rc=$?
[ "$rc" = 0 ] || fail "the client exited with $rc after SIGTERM"

begin "deploy.sh stop gateway-1, then stop"
ds stop gateway-1 >"$work/stop1.log" 2>&1 || { cat "$work/stop1.log" >&2; fail "deploy.sh stop gateway-1"; }
rc=0
ds status >"$work/status.txt" 2>"$work/status.err" || rc=$?
cat "$work/status.txt" >&2
[ "$rc" = 3 ] || fail "deploy.sh status exited $rc with gateway-1 stopped, want 3"
case "$(row gateway-1)" in *" inactive "*) ;; *) fail "gateway-1 is not inactive: $(row gateway-1)" ;; esac
for id in "${layout[@]}"; do
    [ "$id" = gateway-1 ] && continue
    case "$(row "$id")" in *" active "*) ;; *) fail "$id is not active after stopping gateway-1 alone: $(row "$id")" ;; esac
done
ds stop >"$work/stop.log" 2>&1 || { cat "$work/stop.log" >&2; fail "deploy.sh stop"; }
grep '^deploy.sh: stopped' "$work/stop.log" | sed 's/^deploy.sh: //' >&2
rc=0
ds status >"$work/status.txt" 2>"$work/status.err" || rc=$?
[ "$rc" = 3 ] || { cat "$work/status.txt" >&2; fail "deploy.sh status exited $rc with every node stopped, want 3"; }
check_rows inactive
log "every node inactive"
done_step

begin "deploy.sh clean"
rc=0
ds clean </dev/null >"$work/clean0.log" 2>&1 || rc=$?
[ "$rc" != 0 ] || fail "clean without --yes, stdin not a terminal, did not refuse"
grep -q -- '--yes' "$work/clean0.log" || { cat "$work/clean0.log" >&2; fail "clean without --yes: no hint about --yes"; }
docker exec "${names[2]}" test -f /etc/braid/central-1/node.toml || fail "clean without --yes removed files"
ds clean --yes >"$work/clean.log" 2>&1 || { cat "$work/clean.log" >&2; fail "deploy.sh clean --yes"; }
for k in "${!names[@]}"; do
    left=$(docker exec "${names[$k]}" sh -c '
        for f in /usr/local/bin/braid-node /etc/systemd/system/braid-node@.service \
                 /etc/systemd/system/braid-node@.service.d /etc/braid \
                 "/etc/systemd/system/multi-user.target.wants/braid-node@$1.service"; do
            [ -e "$f" ] && echo "$f"
        done
        getent passwd braid >/dev/null && echo "user braid"
        systemctl list-unit-files --no-legend "braid-node@*" | grep . || true' _ "${nids[$k]}")
    [ -z "$left" ] || fail "${nids[$k]}: left after clean: $(echo "$left" | tr '\n' ' ')"
done
rc=0
ds status >"$work/status.txt" 2>"$work/status.err" || rc=$?
[ "$rc" = 3 ] || fail "deploy.sh status exited $rc after clean, want 3"
check_rows "not installed"
log "no unit, binary, /etc/braid or braid user left on the 7 hosts"
done_step

if [ "$keep" = 0 ]; then
    begin "remove the containers"
    remove_containers
    up=0
    done_step
fi
log "PASS"
