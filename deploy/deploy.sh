#!/usr/bin/env bash
# Deploy and operate a Braid network on real hosts (7 to 15 VPSes, one node per line of the
# inventory), over ssh.
#
#   deploy/deploy.sh deploy  [options] INVENTORY         build, generate, push, (re)start
#   deploy/deploy.sh status  [options] INVENTORY         a table: one row per node
#   deploy/deploy.sh logs    [options] INVENTORY NODE [-f] [-n LINES]
#   deploy/deploy.sh stop    [options] INVENTORY [NODE...]
#   deploy/deploy.sh restart [options] INVENTORY [NODE...]
#   deploy/deploy.sh clean   [options] INVENTORY [--yes]
#   deploy/deploy.sh [options] INVENTORY                 the old form: same as deploy
#
# INVENTORY: one node per line, `ROLE PUBLIC-ADDR [ssh-target]` (see gen-net.sh --help);
# at least 2 upstreams, 1 central (2 or more for high availability), 2 downstreams,
# 1 relay and 1 gateway. The ssh user needs root or passwordless sudo.
#
# deploy: build the static binaries (deploy/build-image.sh --no-docker), generate the
#   network (gen-net.sh --inventory: new identities, directory, configs) into OUT/net
#   (OUT/net/hosts.tsv: id, role, host, port, ssh target), write one bundle per node
#   (binary, node folder, systemd unit, install.sh) and one for the client, then per host
#   (listeners first): scp the bundle into the ssh user's home, run its install.sh as root
#   (installs /usr/local/bin/braid-node, /etc/braid/<id>/ and braid-node@.service, then
#   enables and (re)starts braid-node@<id>).
# status: per node, over ssh: the systemd state of braid-node@<id>, /health and the links
#   of /metrics (read on the host's admin port 127.0.0.1:9101+ with bash's /dev/tcp: no
#   curl needed), `braid-node --version` and the `version` of the signed directory in
#   /etc/braid/<id>/directory.toml ("unsigned" if it has none). Exits 3 unless every
#   node is active and healthy.
# logs: the node's journal (journalctl -u braid-node@NODE), -n LINES (default 100), -f
#   to follow.
# stop: systemctl stop (SIGTERM: the node drains, then exits) on every node, or on the
#   NODEs named, all at once; the units stay enabled (a reboot or `restart` starts them).
# restart: a rolling restart, one node at a time (centrals, relays, upstreams,
#   downstreams, gateways), each active and healthy (--wait SECS, default 120) before the
#   next; stops at the first that is not. Also starts stopped nodes.
# clean: stops and disables every node of the inventory and removes /etc/braid/<id>
#   (configs and keys); on a host where no node is left, also /usr/local/bin/braid-node,
#   braid-node@.service (and its .d drop-ins), /etc/braid if empty and then the braid
#   user. Asks for confirmation, or --yes. The client's files (/etc/braid/client,
#   braid.service) and the local OUT folder are left alone.
#
# Options of every subcommand:
#   --out DIR           where the network and bundles are (default deploy/out/<inventory
#                       name>); status, logs, stop, restart and clean read DIR/net/hosts.tsv
#   --ssh-opt OPT       extra option for ssh and scp (repeatable), e.g. --ssh-opt -oPort=2222
#   --dry-run           (not status, logs) print the ssh/scp commands instead of running them
# deploy:
#   --render-only DIR   write DIR/net and DIR/bundles and stop (no ssh); otherwise an
#                       existing network in OUT is reused if made from the same inventory
#   --new-keys          regenerate identities even if OUT/net exists (every node and the
#                       client must then get the new directory: deploy all hosts)
#   --bin DIR           take braid-node and braid from DIR instead of building them
#   --bind any|public   nodes listen on 0.0.0.0:PORT (default) or on their public address
#   --only ID           deploy only this node (repeatable); bundles are still all written
#   --cell-size, --mix-ms, --drain-secs, --socks, --operator OPDIR, --exit-allow CIDR[:PORTS]
#                       go to gen-net.sh (used when the network is generated)
# restart: --wait SECS  how long each node may take to be healthy again (default 120)
# logs:    -f, --follow; -n, --lines N
# clean:   --yes        do not ask
set -euo pipefail

die() { echo "deploy.sh: $*" >&2; exit 1; }
note() { echo "deploy.sh: $*" >&2; }

here=$(cd "$(dirname "$0")" && pwd)
usage() { sed -n '2,59p' "$0"; exit 0; }

cmd=deploy cmd_given=0
case "${1:-}" in
    deploy|status|logs|stop|restart|clean) cmd=$1 cmd_given=1; shift ;;
    -h|--help) usage ;;
    "") die "usage: deploy.sh deploy|status|logs|stop|restart|clean [options] INVENTORY ... (see --help)" ;;
esac

render="" dry=0 out="" newkeys=0 bindir="" bind=any yes=0 follow=0 lines=100 wait_secs=120
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=15)
only=() genopts=() pos=() deploy_only=() opts_seen=()
need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    opts_seen+=("$1")
    case "$1" in
        --out) need "$@"; out=$2; shift ;;
        --ssh-opt) need "$@"; ssh_opts+=("$2"); shift ;;
        --dry-run) dry=1 ;;
        --render-only) need "$@"; render=$2; deploy_only+=("$1"); shift ;;
        --new-keys) newkeys=1; deploy_only+=("$1") ;;
        --bin) need "$@"; bindir=$2; deploy_only+=("$1"); shift ;;
        --bind) need "$@"; bind=$2; deploy_only+=("$1"); shift ;;
        --only) need "$@"; only+=("$2"); deploy_only+=("$1"); shift ;;
        --cell-size|--mix-ms|--drain-secs|--socks|--operator|--exit-allow)
            need "$@"; genopts+=("$1" "$2"); deploy_only+=("$1"); shift ;;
        --yes) yes=1 ;;
        -f|--follow) follow=1 ;;
        -n|--lines) need "$@"; lines=$2; shift ;;
        --wait) need "$@"; wait_secs=$2; shift ;;
        -h|--help) usage ;;
        -*) die "unknown option: $1 (see --help)" ;;
        *) pos+=("$1") ;;
    esac
    shift
done

# `deploy.sh --out DIR status INVENTORY`: a subcommand after the options, if no such file.
if [ "$cmd_given" = 0 ] && [ ${#pos[@]} -gt 1 ] && [ ! -e "${pos[0]}" ]; then
    case "${pos[0]}" in deploy|status|logs|stop|restart|clean) cmd=${pos[0]}; pos=("${pos[@]:1}") ;; esac
fi

# Options that belong to another subcommand are an error, not silently ignored.
for o in "${opts_seen[@]+"${opts_seen[@]}"}"; do
    case "$o:$cmd" in
        --yes:clean|-f:logs|--follow:logs|-n:logs|--lines:logs|--wait:restart) ;;
        --yes:*|-f:*|--follow:*|-n:*|--lines:*|--wait:*) die "$o is not an option of '$cmd' (see --help)" ;;
        --dry-run:status|--dry-run:logs) die "--dry-run is not an option of '$cmd'" ;;
    esac
done
if [ "$cmd" != deploy ] && [ ${#deploy_only[@]} -gt 0 ]; then
    die "${deploy_only[0]} is an option of deploy, not of '$cmd' (see --help)"
fi
case "$lines" in ''|*[!0-9]*) die "-n wants a number of lines, got '$lines'" ;; esac
case "$wait_secs" in ''|*[!0-9]*) die "--wait wants a number of seconds, got '$wait_secs'" ;; esac

inventory=${pos[0]:-}
[ -n "$inventory" ] || die "usage: deploy.sh $cmd [options] INVENTORY (see --help)"
[ -f "$inventory" ] && [ -r "$inventory" ] || die "cannot read the inventory file '$inventory'"
nodes_named=("${pos[@]:1}")
case "$cmd" in
    deploy|status|clean)
        [ ${#nodes_named[@]} -eq 0 ] || die "$cmd takes one INVENTORY, got also: ${nodes_named[*]}" ;;
    logs)
        [ ${#nodes_named[@]} -eq 1 ] || die "usage: deploy.sh logs [options] INVENTORY NODE [-f] [-n LINES]" ;;
esac
if [ -n "$render" ] && [ -n "$out" ]; then die "--render-only DIR already names the output folder; drop --out"; fi
if [ -n "$render" ]; then out=$render; fi
[ -n "$out" ] || out="$here/out/$(basename "$inventory" | sed 's/\.[^.]*$//')"
net="$out/net"
bundles="$out/bundles"

run() {
    if [ "$dry" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

# ---- hosts.tsv: parallel arrays id / role / host / port / ssh target ----------------------
ids=() roles=() hosts=() ports=() sshs=()
load_hosts() {
    [ -f "$net/hosts.tsv" ] ||
        die "no $net/hosts.tsv: deploy first (deploy.sh deploy $inventory), or give the --out DIR it used"
    cmp -s "$inventory" "$net/inventory" ||
        die "$net was generated from another inventory than '$inventory' (deploy it first, or give the --out DIR made from it)"
    local id role host port sshv
    while IFS=$'\t' read -r id role host port sshv; do
        case "$id" in '#'*|'') continue ;; esac
        ids+=("$id"); roles+=("$role"); hosts+=("$host"); ports+=("$port"); sshs+=("$sshv")
    done <"$net/hosts.tsv"
    [ ${#ids[@]} -gt 0 ] || die "$net/hosts.tsv lists no node"
}

# index_of ID: the node's index in the arrays, or a clear error.
index_of() {
    local i
    for i in "${!ids[@]}"; do [ "${ids[$i]}" = "$1" ] && { echo "$i"; return; }; done
    die "no node '$1' in $net/hosts.tsv (nodes: ${ids[*]})"
}

# ordered: every index, listeners first (centrals, relays, upstreams, downstreams,
# gateways), so dialers find them at once; in `order`.
order=()
ordered() {
    local r i
    order=()
    for r in central relay upstream downstream gateway; do
        for i in "${!ids[@]}"; do [ "${roles[$i]}" = "$r" ] && order+=("$i"); done
    done
}

# selected: the indices of the NODEs named on the command line (in that order), else all
# of them in `ordered` order; in `sel`.
sel=()
selected() {
    local n i
    sel=()
    if [ ${#nodes_named[@]} -gt 0 ]; then
        for n in "${nodes_named[@]}"; do
            i=$(index_of "$n") || exit 1
            sel+=("$i")
        done
    else
        ordered
        sel=("${order[@]}")
    fi
}

# ---- running things on a host as root ----------------------------------------------------
# Shared by the remote scripts below (bash, run as root on the host with `bash -s -- ID`).
# Every script is one function, main, called with stdin from /dev/null: bash has read the
# whole of it before anything runs, so no command can eat the rest of the script.
remote_lib=$(cat <<'EOF'
id=$1
svc="braid-node@$id"
dir="/etc/braid/$id"
# The admin address from the node's config, e.g. 127.0.0.1:9101.
admin_addr() { sed -n 's/^admin = "\(.*\)"$/\1/p' "$dir/node.toml" 2>/dev/null | head -n 1; }
# http_get PATH: the admin port's answer (status line, headers, body) with bash's /dev/tcp.
# shellcheck disable=SC2016  # the inner bash expands $0..$2
http_get() {
    local a host port
    a=$(admin_addr)
    [ -n "$a" ] || return 1
    port=${a##*:} host=${a%:*}
    host=${host#\[} host=${host%\]}
    case "$host" in 0.0.0.0|'') host=127.0.0.1 ;; ::) host=::1 ;; esac
    timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: braid\r\n\r\n" "$2" >&3
        tr -d "\r" <&3' "$host" "$port" "$1" 2>/dev/null
}
# health: "ok" (200), the node's reason (503, e.g. "no central linked"), or "no answer".
health() {
    local r why
    r=$(http_get /health) || true
    case "$r" in
        "HTTP/1.1 200"*) echo ok ;;
        HTTP/*)
            why=$(sed -n 's/.*"reason":"\([^"]*\)".*/\1/p' <<<"$r" | head -n 1)
            echo "${why:-$(head -n 1 <<<"$r")}" ;;
        *) echo "no answer" ;;
    esac
}
state() { systemctl is-active "$svc" 2>/dev/null || true; }
EOF
)

remote_status=$(cat <<'EOF'
main() {
    local st h="-" m="" links="-" ds="-" gw="-" ver dv
    st=$(state)
    if [ ! -f "$dir/node.toml" ] && [ "$st" != active ]; then st="not installed"; fi
    if [ "$st" = active ] || [ "$st" = deactivating ]; then
        h=$(health)
        m=$(http_get /metrics) || m=""
        metric() { awk -v n="$1{" 'index($0, n) == 1 { print $NF; exit }' <<<"$m"; }
        links=$(metric braid_links_up) ds=$(metric braid_downstreams_up) gw=$(metric braid_gateways_up)
    fi
    ver=$(/usr/local/bin/braid-node --version 2>/dev/null | awk '{ print $NF }') || true
    if [ -f "$dir/directory.toml" ]; then
        dv=$(sed -n 's/^version = \([0-9][0-9]*\).*/\1/p' "$dir/directory.toml" | head -n 1)
        dv=${dv:-unsigned}
    else
        dv="-"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$st" "$h" "${links:--}" "${ds:--}" "${gw:--}" "${ver:--}" "$dv"
}
EOF
)

remote_restart=$(cat <<'EOF'
main() {
    local limit=$2 t0 st h=- waited
    [ -f "$dir/node.toml" ] || { echo "$id: not installed here (no $dir/node.toml): deploy it first"; return 2; }
    t0=$(date +%s)
    if ! systemctl restart "$svc"; then
        journalctl -u "$svc" -n 20 --no-pager
        return 1
    fi
    while :; do
        st=$(state) h=-
        waited=$(( $(date +%s) - t0 ))
        if [ "$st" = active ]; then
            h=$(health)
            if [ "$h" = ok ]; then echo "$id: active and healthy ${waited}s after systemctl restart"; return 0; fi
        fi
        if [ "$st" = failed ] || [ "$waited" -ge "$limit" ]; then
            echo "$id: not healthy ${waited}s after systemctl restart: systemd $st, health: $h; its journal:"
            journalctl -u "$svc" -n 20 --no-pager
            return 1
        fi
        sleep 1
    done
}
EOF
)

remote_stop=$(cat <<'EOF'
main() {
    local st
    systemctl stop "$svc" 2>/dev/null || true
    st=$(state)
    if [ ! -f "$dir/node.toml" ] && [ "$st" != active ]; then st="not installed"; fi
    echo "$st"
    [ "$st" != active ] && [ "$st" != deactivating ]
}
EOF
)

remote_clean=$(cat <<'EOF'
main() {
    local removed="" left
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
    systemctl reset-failed "$svc" >/dev/null 2>&1 || true
    rm -f "/etc/systemd/system/multi-user.target.wants/$svc.service"
    if [ -e "$dir" ]; then removed="$dir"; fi
    rm -rf "$dir" "$dir.new" "$dir.old"
    # The last node on this host takes the shared pieces with it.
    left=$(ls -d /etc/braid/*/node.toml 2>/dev/null || true)
    if [ -z "$left" ]; then
        rm -f /usr/local/bin/braid-node /usr/local/bin/braid-node.new \
            /etc/systemd/system/braid-node@.service
        rm -rf /etc/systemd/system/braid-node@.service.d
        systemctl daemon-reload
        removed="${removed:+$removed, }/usr/local/bin/braid-node, braid-node@.service"
        if rmdir /etc/braid 2>/dev/null; then removed="$removed, /etc/braid"; fi
        if [ ! -e /etc/braid ] && getent passwd braid >/dev/null; then
            userdel braid && removed="$removed, user braid"
        fi
    fi
    if systemctl is-active --quiet "$svc"; then echo "$svc is still active"; return 1; fi
    echo "removed: ${removed:-nothing (was not installed)}"
}
EOF
)

# on_host INDEX SCRIPT [ARG...]: runs SCRIPT (after remote_lib) with bash as root on the
# node's host, with the node id and ARGs as $1...; sudo -n if the ssh user is not root.
on_host() {
    local i=$1 script=$2 args
    shift 2
    args=$(printf ' %q' "${ids[$i]}" "$@")
    run ssh "${ssh_opts[@]}" "${sshs[$i]}" \
        "if [ \"\$(id -u)\" = 0 ]; then bash -s --$args; else sudo -n bash -s --$args; fi" \
        <<<"$remote_lib
$script
main \"\$@\" </dev/null"
}

# in_parallel SCRIPT [ARG...]: on_host for every index in `sel` at once; each one's output
# in $tmp/<index>.out (stderr in .err), its exit status in rcs[<index>].
declare -A rcs=()
in_parallel() {
    local i
    declare -A pid=()
    for i in "${sel[@]}"; do
        on_host "$i" "$@" >"$tmp/$i.out" 2>"$tmp/$i.err" &
        pid[$i]=$!
    done
    for i in "${sel[@]}"; do
        rcs[$i]=0
        wait "${pid[$i]}" || rcs[$i]=$?
    done
}

tmp=""
mktmp() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/braid-deploy.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
}

# first_err INDEX: the first line of an ssh failure, for the table.
first_err() { grep -v '^Warning: Permanently added' "$tmp/$1.err" | head -n 1 || true; }

# ---- status --------------------------------------------------------------------------------
cmd_status() {
    load_hosts
    selected
    mktmp
    in_parallel "$remote_status"
    local i n_central=0 n_down=0 n_gw=0 st h links ds gw ver dv shown bad=()
    for i in "${!ids[@]}"; do
        case "${roles[$i]}" in
            central) n_central=$((n_central + 1)) ;;
            downstream) n_down=$((n_down + 1)) ;;
            gateway) n_gw=$((n_gw + 1)) ;;
        esac
    done
    {
        printf 'NODE\tHOST\tSYSTEMD\tHEALTH\tLINKS\tVERSION\tDIRECTORY\n'
        for i in "${sel[@]}"; do
            st="" h="-" links="-" ds="-" gw="-" ver="-" dv="-"
            if [ "${rcs[$i]}" = 0 ]; then
                IFS=$'\t' read -r st h links ds gw ver dv <"$tmp/$i.out" || true
            fi
            if [ -z "$st" ]; then
                st="ssh failed"
                h=$(first_err "$i")
                h=${h:-"exit ${rcs[$i]}"}
            fi
            case "${roles[$i]}" in
                upstream|downstream|gateway)
                    shown="$links/$n_central centrals"; [ "$links" != - ] || shown="-" ;;
                central)
                    shown="$ds/$n_down downstreams, $gw/$n_gw gateways"
                    [ "$ds" != - ] && [ "$gw" != - ] || shown="-" ;;
                *) shown="n/a"; [ "$h" != - ] || shown="-" ;;   # a relay dials nothing; /metrics counts none of its links
            esac
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${ids[$i]}" "${hosts[$i]}" "$st" "$h" "$shown" "$ver" "$dv"
            [ "$st" = active ] && [ "$h" = ok ] || bad+=("${ids[$i]}")
        done
    } >"$tmp/table"
    column -t -s $'\t' "$tmp/table" 2>/dev/null || cat "$tmp/table"
    if [ ${#bad[@]} -gt 0 ]; then
        note "${#bad[@]} of ${#sel[@]} nodes not active and healthy: ${bad[*]}"
        exit 3
    fi
}

# ---- logs ----------------------------------------------------------------------------------
cmd_logs() {
    load_hosts
    local i tty=() c
    i=$(index_of "${nodes_named[0]}")
    c="journalctl -u braid-node@${ids[$i]} --no-pager -n $lines"
    if [ "$follow" = 1 ]; then
        c="$c -f"
        # A terminal: ssh -t, so that ^C also ends journalctl on the host.
        if [ -t 0 ] && [ -t 1 ]; then tty=(-t); fi
    fi
    run ssh "${tty[@]+"${tty[@]}"}" "${ssh_opts[@]}" "${sshs[$i]}" \
        "if [ \"\$(id -u)\" = 0 ]; then $c; else sudo -n $c; fi"
}

# ---- stop ----------------------------------------------------------------------------------
cmd_stop() {
    load_hosts
    selected
    mktmp
    local i t0=$SECONDS failed=()
    note "stopping ${#sel[@]} node(s) at once (each drains its live streams first)"
    if [ "$dry" = 1 ]; then for i in "${sel[@]}"; do on_host "$i" "$remote_stop"; done; return; fi
    in_parallel "$remote_stop"
    for i in "${sel[@]}"; do
        if [ "${rcs[$i]}" = 0 ]; then
            note "${ids[$i]} on ${sshs[$i]}: $(tail -n 1 "$tmp/$i.out")"
        else
            note "${ids[$i]} on ${sshs[$i]}: FAILED: $(tail -n 1 "$tmp/$i.out")$(first_err "$i")"
            failed+=("${ids[$i]}")
        fi
    done
    [ ${#failed[@]} -eq 0 ] || die "could not stop: ${failed[*]}"
    note "stopped ${#sel[@]} node(s) in $((SECONDS - t0))s"
}

# ---- restart -------------------------------------------------------------------------------
cmd_restart() {
    load_hosts
    selected
    local i k t0=$SECONDS left
    for k in "${!sel[@]}"; do
        i=${sel[$k]}
        note "restart ${ids[$i]} on ${sshs[$i]} ($((k + 1))/${#sel[@]})"
        if ! on_host "$i" "$remote_restart" "$wait_secs" >&2; then
            left=()
            for i in "${sel[@]:k+1}"; do left+=("${ids[$i]}"); done
            die "${ids[sel[k]]} is not back (see above); rolling restart stopped${left[0]+, not restarted: ${left[*]}}"
        fi
    done
    note "restarted ${#sel[@]} node(s) one at a time in $((SECONDS - t0))s"
}

# ---- clean ---------------------------------------------------------------------------------
cmd_clean() {
    load_hosts
    selected
    local i answer failed=() targets
    targets=$(printf '%s\n' "${sshs[@]}" | sort -u | tr '\n' ' ')
    if [ "$yes" = 0 ] && [ "$dry" = 0 ]; then
        [ -t 0 ] || die "clean removes braid-node, its units, configs and keys from ${targets}: confirm with --yes (stdin is not a terminal)"
        echo "This stops ${#sel[@]} nodes (${ids[*]}) and removes braid-node, its units, configs and keys from: $targets" >&2
        printf 'Type yes to go on: ' >&2
        read -r answer || true
        [ "$answer" = yes ] || die "not confirmed: nothing was removed"
    fi
    for i in "${sel[@]}"; do
        echo "==> clean ${ids[$i]} on ${sshs[$i]}" >&2
        on_host "$i" "$remote_clean" >&2 || { note "${ids[$i]} on ${sshs[$i]} FAILED"; failed+=("${ids[$i]}"); }
    done
    [ ${#failed[@]} -eq 0 ] || die "clean failed for: ${failed[*]} (rerun clean to retry)"
    note "cleaned ${#sel[@]} node(s); the local network folder $net (with the keys) is kept"
}

# ---- deploy --------------------------------------------------------------------------------
cmd_deploy() {
    # Check the inventory before building anything.
    local line lineno=0 role addr total
    declare -A count=([upstream]=0 [central]=0 [downstream]=0 [relay]=0 [gateway]=0)
    while IFS= read -r line || [ -n "$line" ]; do
        lineno=$((lineno + 1))
        line=${line%%#*}
        read -r role addr _ <<<"$line" || true
        [ -n "${role:-}" ] || continue
        [ -n "${count[$role]+x}" ] || die "$inventory:$lineno: unknown role '$role' (upstream, central, downstream, relay, gateway)"
        [ -n "${addr:-}" ] || die "$inventory:$lineno: '$role' has no PUBLIC-ADDR"
        count[$role]=$((count[$role] + 1))
    done <"$inventory"
    [ "${count[central]}" -ge 1 ] || die "$inventory: no central: the network needs at least one"
    [ "${count[gateway]}" -ge 1 ] || die "$inventory: no gateway: the network needs at least one exit"
    [ "${count[upstream]}" -ge 2 ] || die "$inventory: ${count[upstream]} upstream(s): at least 2 are needed (cells are spread over several)"
    [ "${count[downstream]}" -ge 2 ] || die "$inventory: ${count[downstream]} downstream(s): at least 2 are needed"
    [ "${count[relay]}" -ge 1 ] || die "$inventory: no relay: at least 1 is needed"
    total=$((count[upstream] + count[central] + count[downstream] + count[relay] + count[gateway]))
    if [ "$total" -gt 15 ]; then note "note: $total nodes (this script is meant for 7 to 15)"; fi

    # Binaries.
    if [ -z "$bindir" ]; then
        bindir=$("$here/build-image.sh" --no-docker | tail -n 1)
    fi
    local b
    for b in braid-node braid; do
        [ -x "$bindir/$b" ] || die "no executable $bindir/$b"
    done

    # The network.
    if [ -d "$net" ] && [ "$newkeys" = 0 ]; then
        cmp -s "$inventory" "$net/inventory" ||
            die "$net was generated from another inventory: pass --new-keys to regenerate (every host must then be deployed) or use another --out"
        note "reusing the identities in $net"
    else
        mkdir -p "$out"
        "$here/gen-net.sh" --inventory "$inventory" --out "$net" --bin "$bindir/braid-node" \
            --bind "$bind" --force "${genopts[@]+"${genopts[@]}"}"
        cp "$inventory" "$net/inventory"
    fi

    # Bundles.
    rm -rf "$bundles"
    mkdir -p "$bundles"
    load_hosts
    local o i id fw
    for o in "${only[@]+"${only[@]}"}"; do index_of "$o" >/dev/null; done
    for i in "${!ids[@]}"; do
        id=${ids[$i]}
        b="$bundles/$id"
        mkdir -p "$b/bin" "$b/conf/keys"
        cp "$bindir/braid-node" "$b/bin/"
        cp "$net/$id/node.toml" "$net/$id/directory.toml" "$b/conf/"
        cp -p "$net/$id/keys/"* "$b/conf/keys/"
        chmod 700 "$b/conf/keys"
        cp "$here/systemd/braid-node@.service" "$b/"
        write_install "$b" node "$id"
        case "${roles[$i]}" in
            upstream|central|relay) fw="UDP ${ports[$i]} inbound (QUIC)" ;;
            *) fw="nothing inbound (it only dials)" ;;
        esac
        printf '%s\t%s\tssh %s\topen: %s\n' "$id" "${hosts[$i]}" "${sshs[$i]}" "$fw" >>"$bundles/SUMMARY"
    done
    b="$bundles/client"
    mkdir -p "$b/bin" "$b/conf"
    cp "$bindir/braid" "$b/bin/"
    cp "$net/client/client.toml" "$net/client/directory.toml" "$b/conf/"
    # A closed network (--operator): the client's credential, 0600.
    if [ -f "$net/client/client.cred" ]; then cp -p "$net/client/client.cred" "$b/conf/"; fi
    cp "$here/systemd/braid.service" "$b/"
    write_install "$b" client client
    note "bundles in $bundles (the client's is $bundles/client: install it where the SOCKS5 proxy should run)"
    column -t -s $'\t' "$bundles/SUMMARY" >&2 2>/dev/null || cat "$bundles/SUMMARY" >&2

    if [ -n "$render" ]; then return 0; fi

    # Push, listeners first so the dialers find them at once (they would redial anyway).
    ordered
    local failed=() target remote scp_host skip
    for i in "${order[@]}"; do
        id=${ids[$i]} target=${sshs[$i]}
        if [ ${#only[@]} -gt 0 ]; then
            skip=1
            for o in "${only[@]}"; do [ "$o" = "$id" ] && skip=0; done
            [ "$skip" = 0 ] || continue
        fi
        echo "==> $id on $target" >&2
        remote="braid-bundle-$id"
        # scp wants an IPv6 host in brackets: [2001:db8::1]:path, user@[2001:db8::1]:path.
        case "$target" in
            *@*:*) scp_host="${target%%@*}@[${target#*@}]" ;;
            *:*) scp_host="[$target]" ;;
            *) scp_host=$target ;;
        esac
        if run ssh "${ssh_opts[@]}" "$target" "rm -rf '$remote'" &&
           run scp -r -q "${ssh_opts[@]}" "$bundles/$id" "$scp_host:$remote" &&
           run ssh "${ssh_opts[@]}" "$target" \
               "if [ \"\$(id -u)\" = 0 ]; then sh '$remote/install.sh'; else sudo sh '$remote/install.sh'; fi; rc=\$?; rm -rf '$remote'; exit \$rc"
        then :; else
            note "$id on $target FAILED"
            failed+=("$id")
        fi
    done
    [ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]} (the others are deployed; rerun with --only ID to retry)"
    note "done; check with: deploy.sh status${out:+ --out $out} $inventory. Client bundle: $bundles/client (sudo sh install.sh there, or braid run --config conf/client.toml)"
}

write_install() { # bundle-dir kind(node|client) id
    local b=$1 kind=$2 id=$3
    cat >"$b/install.sh" <<EOF
#!/bin/sh
# Installs this Braid bundle ($id). Run as root on the target host; deploy.sh does.
set -eu
here=\$(cd "\$(dirname "\$0")" && pwd)
id=$id
kind=$kind
[ "\$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
command -v systemctl >/dev/null || { echo "install.sh: systemd is required" >&2; exit 1; }
if ! getent passwd braid >/dev/null; then
    nologin=/usr/sbin/nologin; [ -x "\$nologin" ] || nologin=/sbin/nologin
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell "\$nologin" braid
fi
if [ "\$kind" = node ]; then bin=braid-node unit=braid-node@.service svc="braid-node@\$id"; dest=/etc/braid/\$id
else bin=braid unit=braid.service svc=braid; dest=/etc/braid/client; fi
install -m 0755 -o root -g root "\$here/bin/\$bin" "/usr/local/bin/\$bin.new"
mv -f "/usr/local/bin/\$bin.new" "/usr/local/bin/\$bin"
install -d -m 0755 -o root -g root /etc/braid
rm -rf "\$dest.new"
install -d -m 0750 -o root -g braid "\$dest.new"
for f in "\$here"/conf/*.toml; do install -m 0640 -o root -g braid "\$f" "\$dest.new/"; done
if [ -f "\$here/conf/client.cred" ]; then install -m 0640 -o root -g braid "\$here/conf/client.cred" "\$dest.new/"; fi
if [ -d "\$here/conf/keys" ]; then
    install -d -m 0750 -o root -g braid "\$dest.new/keys"
    # Private keys: readable by the braid group only, not writable by the service.
    for f in "\$here"/conf/keys/*; do install -m 0640 -o root -g braid "\$f" "\$dest.new/keys/"; done
fi
rm -rf "\$dest.old"
if [ -e "\$dest" ]; then mv "\$dest" "\$dest.old"; fi
mv "\$dest.new" "\$dest"
rm -rf "\$dest.old"
install -m 0644 -o root -g root "\$here/\$unit" "/etc/systemd/system/\$unit"
systemctl daemon-reload
systemctl enable "\$svc" >/dev/null 2>&1
systemctl restart "\$svc"
sleep 2
if systemctl is-active --quiet "\$svc"; then echo "install.sh: \$svc is running"
else echo "install.sh: \$svc failed to start:" >&2; journalctl -u "\$svc" -n 30 --no-pager >&2 || true; exit 1; fi
EOF
    chmod 755 "$b/install.sh"
}

"cmd_$cmd"
