#!/usr/bin/env bash
# Generate a Braid network folder: one identity per node (braid-node keygen), the
# directory, one node config per node and the client config.
#
#   deploy/gen-net.sh --out DIR (--compose PREFIX | --inventory FILE) [options]
#
# Address schemes (pick one):
#   --compose PREFIX    a docker network PREFIX.0/24 (e.g. 172.30.0; under docker-compose
#                       the bridge's host side is PREFIX.1). Docker assigns the addresses:
#                       the directory names listeners by service (`host = "central-1:7400"`),
#                       nodes listen on 0.0.0.0, and the client runs as the `client` service
#                       (SOCKS5 published on the host's --socks port, or $BRAID_SOCKS).
#                       Also writes DIR/docker-compose.yml (image braid:dev), which
#                       `docker stack deploy` takes too.
#   --inventory FILE    real hosts, one node per line: `ROLE PUBLIC-ADDR [ssh-target]`
#                       (ROLE: upstream|central|downstream|relay|gateway; PUBLIC-ADDR is
#                       HOST or HOST:PORT, IPv6 as [addr] or [addr]:port; `#` comments).
#                       The counts come from the file. Also writes DIR/hosts.tsv.
#
# Options:
#   --upstreams N --centrals N --downstreams N --relays N --gateways N
#                       counts for --compose (defaults 2, 1, 2, 1, 1); with --inventory
#                       they must match the file. Every upstream, downstream and gateway
#                       links to every central; the client picks one per session and
#                       moves to another when it dies (high availability: --centrals 2)
#   --bin PATH          the braid-node binary used for keygen (default: the static build,
#                       else target/release, else target/debug)
#   --bind any|public   inventory only: listen on 0.0.0.0:PORT (any, default: works behind
#                       1:1 NAT) or on the public address itself (public: several nodes on
#                       one machine, e.g. deploy/test-local.sh)
#   --cell-size BYTES   directory cell_size (default 8192)
#   --mix-ms MS         relays' mean mixing delay (default 25.0)
#   --drain-secs S      nodes' drain_timeout_secs (default 30)
#   --socks ADDR        the client's SOCKS5 address (default 127.0.0.1:1080)
#   --origin-port PORT  compose only: the one port of the bridge's host side (PREFIX.1)
#                       the gateway may reach, where deploy/test-compose.sh serves its
#                       test file (default 18080)
#   --exit-allow CIDR[:PORTS]
#                       adds an allow rule to every gateway's exit policy (repeatable):
#                       the network CIDR (an address, 10.0.0.0/8, fd12::/16), only on
#                       PORTS (443 or 8000-8999) if given. An allow rule with a cidr also
#                       opens the classes refused by default (private, loopback) inside
#                       it: deploy/test-deploy.sh lets its exit reach one port of the test
#                       host this way. Real networks: leave it out, or name public ranges
#   --operator OPDIR    a closed, signed network: the operator folder OPDIR (made with
#                       `braid-node operator init` if it has no key) signs the directory
#                       (version = now in Unix seconds, so a regenerated network is newer),
#                       every node and the client pin its key (`directory_key`), and the
#                       client gets a credential (user `client`, in client/client.cred)
#   --scalable ROLE=N   compose only (upstream or downstream; repeatable): a service ROLE
#                       of N replicas (`docker-compose up --scale ROLE=M` changes it) whose
#                       nodes are not in the directory but join: each makes its keys at
#                       start (in a tmpfs) and registers with the centrals under one shared
#                       join credential (DIR/ROLE/node.join). Needs --operator; the
#                       directory keeps the --upstreams/--downstreams seeds (a client opens
#                       its first session through a directory upstream)
#   --force             replace an existing DIR (its identities are lost)
#
# Output (DIR holds private keys: keep it out of git; deploy/.gitignore covers deploy/net/):
#   DIR/directory.toml              every node's role, addr and public keys
#   DIR/<id>/node.toml              the node's config (paths relative to its folder)
#   DIR/<id>/directory.toml         a copy, so each node folder is self-contained
#   DIR/<id>/keys/                  noise.key, tls.key (0600), tls.crt
#   DIR/client/client.toml          the client config, with directory.toml beside it
set -euo pipefail

die() { echo "gen-net.sh: $*" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

out="" compose="" inventory="" bin="" bind=any force=0 operator=""
n_up=2 n_central=1 n_down=2 n_relay=1 n_gw=1 counts_given=0
cell_size=8192 mix_ms=25.0 drain_secs=30 socks=127.0.0.1:1080 origin_port=18080
exit_allow=() scalable=()

need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out) need "$@"; out=$2; shift ;;
        --compose) need "$@"; compose=$2; shift ;;
        --inventory) need "$@"; inventory=$2; shift ;;
        --upstreams) need "$@"; n_up=$2; counts_given=1; shift ;;
        --centrals) need "$@"; n_central=$2; counts_given=1; shift ;;
        --downstreams) need "$@"; n_down=$2; counts_given=1; shift ;;
        --relays) need "$@"; n_relay=$2; counts_given=1; shift ;;
        --gateways) need "$@"; n_gw=$2; counts_given=1; shift ;;
        --bin) need "$@"; bin=$2; shift ;;
        --bind) need "$@"; bind=$2; shift ;;
        --cell-size) need "$@"; cell_size=$2; shift ;;
        --mix-ms) need "$@"; mix_ms=$2; shift ;;
        --drain-secs) need "$@"; drain_secs=$2; shift ;;
        --socks) need "$@"; socks=$2; shift ;;
        --origin-port) need "$@"; origin_port=$2; shift ;;
        --exit-allow) need "$@"; exit_allow+=("$2"); shift ;;
        --operator) need "$@"; operator=$2; shift ;;
        --scalable) need "$@"; scalable+=("$2"); shift ;;
        --force) force=1 ;;
        -h|--help) sed -n '2,64p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

[ -n "$out" ] || die "--out DIR is required"
if [ -n "$compose" ] && [ -n "$inventory" ]; then die "give either --compose or --inventory, not both"; fi
[ -n "$compose" ] || [ -n "$inventory" ] || die "give an address scheme: --compose PREFIX or --inventory FILE"
case "$bind" in any|public) ;; *) die "--bind must be any or public, not '$bind'" ;; esac
for v in "$n_up" "$n_central" "$n_down" "$n_relay" "$n_gw" "$cell_size" "$drain_secs" "$origin_port"; do
    case "$v" in ''|*[!0-9]*) die "counts, --cell-size, --drain-secs and --origin-port must be whole numbers, got '$v'" ;; esac
done
[ "$origin_port" -ge 1 ] && [ "$origin_port" -le 65535 ] || die "--origin-port must be 1..65535, got $origin_port"
for s in "${scalable[@]+"${scalable[@]}"}"; do
    case "$s" in
        upstream=[0-9]*|downstream=[0-9]*) case "${s#*=}" in *[!0-9]*) die "--scalable $s: N must be a whole number" ;; esac ;;
        *) die "--scalable wants upstream=N or downstream=N, got '$s'" ;;
    esac
done
if [ ${#scalable[@]} -gt 0 ]; then
    [ -n "$compose" ] || die "--scalable is for --compose networks"
    [ -n "$operator" ] || die "--scalable needs --operator (nodes join with the operator's join credential)"
fi
# --exit-allow CIDR[:PORTS] -> parallel arrays; an IPv6 CIDR has colons, so PORTS is what
# follows the last colon only when that part has no '/' and the rest is a network.
allow_cidrs=() allow_ports=()
for a in "${exit_allow[@]+"${exit_allow[@]}"}"; do
    c=$a p=""
    case "$a" in
        */*:*) c=${a%:*} p=${a##*:}; case "$p" in */*) c=$a p="" ;; esac ;;
        *.*:*) c=${a%:*} p=${a##*:} ;;
    esac
    case "$c" in ''|*[!0-9a-fA-F.:/]*) die "--exit-allow: '$a' is not CIDR[:PORTS] (e.g. 192.0.2.1/32:8080)" ;; esac
    case "$p" in *[!0-9-]*|-*|*-) die "--exit-allow: bad PORTS in '$a' (a port, 443, or a range, 8000-8999)" ;; esac
    allow_cidrs+=("$c"); allow_ports+=("$p")
done

if [ -z "$bin" ]; then
    for c in "$root/target/static/dist/braid-node" \
             "$root/target/static/x86_64-unknown-linux-gnu/release/braid-node" \
             "$root/target/release/braid-node" "$root/target/debug/braid-node"; do
        if [ -x "$c" ]; then bin=$c; break; fi
    done
    [ -n "$bin" ] || die "no braid-node binary found under target/: build one (deploy/build-image.sh --no-docker) or pass --bin"
fi
[ -x "$bin" ] || die "--bin $bin is not an executable"

# ---- the node list: parallel arrays id / role / host / port / ssh -------------------
ids=() roles=() hosts=() ports=() sshs=()

default_port() {
    case "$1" in
        upstream) echo 7100 ;; central) echo 7400 ;; relay) echo 7600 ;; *) echo "" ;;
    esac
}

add_node() { # role host port ssh
    local role=$1 n=1
    while :; do
        local id="$role-$n" dup=0 x
        for x in "${ids[@]+"${ids[@]}"}"; do [ "$x" = "$id" ] && dup=1; done
        [ "$dup" = 0 ] && break
        n=$((n + 1))
    done
    ids+=("$role-$n"); roles+=("$role"); hosts+=("$2"); ports+=("$3"); sshs+=("$4")
}

if [ -n "$compose" ]; then
    case "$compose" in
        *[!0-9.]*|*.*.*.*|*..*|.*|*.) die "--compose wants a /24 prefix of three numbers such as 172.30.0, got '$compose'" ;;
        *.*.*) ;;
        *) die "--compose wants a /24 prefix of three numbers such as 172.30.0, got '$compose'" ;;
    esac
    [ "$n_up" -ge 1 ] && [ "$n_central" -ge 1 ] && [ "$n_down" -ge 1 ] && [ "$n_relay" -ge 1 ] \
        && [ "$n_gw" -ge 1 ] || die "every role needs at least one node"
    total=$((n_up + n_central + n_down + n_relay + n_gw))
    [ "$total" -le 250 ] || die "$total nodes do not fit in a /24"
    ip=2
    for _ in $(seq "$n_up"); do add_node upstream "$compose.$ip" 7100 ""; ip=$((ip + 1)); done
    for _ in $(seq "$n_central"); do add_node central "$compose.$ip" 7400 ""; ip=$((ip + 1)); done
    for _ in $(seq "$n_down"); do add_node downstream "$compose.$ip" "" ""; ip=$((ip + 1)); done
    for _ in $(seq "$n_relay"); do add_node relay "$compose.$ip" 7600 ""; ip=$((ip + 1)); done
    for _ in $(seq "$n_gw"); do add_node gateway "$compose.$ip" "" ""; ip=$((ip + 1)); done
else
    [ -f "$inventory" ] && [ -r "$inventory" ] || die "cannot read the inventory file '$inventory'"
    lineno=0
    while IFS= read -r line || [ -n "$line" ]; do
        lineno=$((lineno + 1))
        line=${line%%#*}
        read -r role addr sshv extra <<<"$line" || true
        [ -n "${role:-}" ] || continue
        [ -z "${extra:-}" ] || die "$inventory:$lineno: too many fields (want ROLE PUBLIC-ADDR [ssh-target])"
        [ -n "${addr:-}" ] || die "$inventory:$lineno: '$role' has no PUBLIC-ADDR"
        case "$role" in upstream|central|downstream|relay|gateway) ;;
            *) die "$inventory:$lineno: unknown role '$role' (upstream, central, downstream, relay, gateway)" ;;
        esac
        # Split HOST[:PORT], with IPv6 in brackets or bare.
        port=""
        case "$addr" in
            \[*\]:*) host=${addr%%]*}; host=${host#[}; port=${addr##*]:} ;;
            \[*\]) host=${addr#[}; host=${host%]} ;;
            *:*:*) host=$addr ;;
            *:*) host=${addr%:*}; port=${addr##*:} ;;
            *) host=$addr ;;
        esac
        [ -n "$host" ] || die "$inventory:$lineno: empty host in '$addr'"
        case "$port" in *[!0-9]*) die "$inventory:$lineno: bad port in '$addr'" ;; esac
        [ -n "$port" ] || port=$(default_port "$role")
        case "$role" in downstream|gateway) port="" ;; esac
        add_node "$role" "$host" "$port" "${sshv:-$host}"
    done <"$inventory"
    count() { local r=$1 c=0 x; for x in "${roles[@]+"${roles[@]}"}"; do [ "$x" = "$r" ] && c=$((c + 1)); done; echo "$c"; }
    for r in upstream central downstream relay gateway; do
        [ "$(count $r)" -ge 1 ] || die "$inventory: needs at least one $r, found none"
    done
    if [ "$counts_given" = 1 ]; then
        [ "$(count upstream)" = "$n_up" ] && [ "$(count central)" = "$n_central" ] &&
            [ "$(count downstream)" = "$n_down" ] &&
            [ "$(count relay)" = "$n_relay" ] && [ "$(count gateway)" = "$n_gw" ] ||
            die "$inventory: counts differ from --upstreams/--centrals/--downstreams/--relays/--gateways"
    fi
fi

# ---- the output folder -----------------------------------------------------------------
if [ -e "$out" ]; then
    [ "$force" = 1 ] || die "$out exists (it may hold identities in use): pass --force to replace it"
    rm -rf "$out"
fi
umask 077
mkdir -p "$out/client"

# Host part of an address for TOML: IPv6 in brackets.
fmt_addr() { case "$1" in *:*) echo "[$1]:$2" ;; *) echo "$1:$2" ;; esac; }

dir="$out/directory.toml"
{
    echo "# Braid directory, generated by deploy/gen-net.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)."
    echo "# Every node and the client load this same file. Public keys only."
    echo
    echo "cell_size = $cell_size"
} >"$dir"

for i in "${!ids[@]}"; do
    id=${ids[$i]} role=${roles[$i]} host=${hosts[$i]} port=${ports[$i]}
    nd="$out/$id"
    mkdir -p "$nd"
    keys=$("$bin" keygen --out "$nd/keys") || die "braid-node keygen failed for $id"
    noise=$(sed -n 's/^noise_key = "\([0-9a-f]*\)"$/\1/p' <<<"$keys")
    tls=$(sed -n 's/^tls_key = "\([0-9a-f]*\)"$/\1/p' <<<"$keys")
    [ ${#noise} = 64 ] && [ ${#tls} = 64 ] || die "unexpected keygen output for $id: $keys"
    chmod 700 "$nd/keys"
    chmod 600 "$nd/keys/noise.key" "$nd/keys/tls.key"
    chmod 644 "$nd/keys/tls.crt"
    {
        echo
        echo "[[nodes]]"
        echo "id = \"$id\""
        echo "role = \"$role\""
        if [ -n "$port" ] && [ -n "$compose" ]; then echo "host = \"$id:$port\""
        elif [ -n "$port" ]; then echo "addr = \"$(fmt_addr "$host" "$port")\""; fi
        echo "noise_key = \"$noise\""
        echo "tls_key = \"$tls\""
    } >>"$dir"
done

# A closed network: the operator signs the directory and issues the client's credential.
pin=""
if [ -n "$operator" ]; then
    if [ ! -f "$operator/operator.key" ]; then
        "$bin" operator --dir "$operator" init >/dev/null || die "braid-node operator init failed"
    fi
    signed=$("$bin" directory --dir "$operator" sign "$dir" --version "$(date +%s)") \
        || die "signing the directory failed"
    pin=$(sed -n 's/.*signed by \([0-9a-f]\{64\}\)$/\1/p' <<<"$signed")
    [ ${#pin} = 64 ] || die "unexpected output of directory sign: $signed"
    cred=$("$bin" user --dir "$operator" add client 2>/dev/null \
        || "$bin" user --dir "$operator" renew client) || die "issuing the client's credential failed"
    install -m 600 "$cred" "$out/client/client.cred"
fi

for i in "${!ids[@]}"; do
    id=${ids[$i]} role=${roles[$i]} host=${hosts[$i]} port=${ports[$i]}
    nd="$out/$id"
    cp "$dir" "$nd/directory.toml"
    if [ -n "$compose" ]; then
        # Any address: a swarm task's is not known in advance. The admin port is reachable
        # over the bridge (docker-compose) or with `docker exec ID braid-node admin`.
        listen="0.0.0.0:$port"
        admin="0.0.0.0:9100"
    else
        if [ "$bind" = public ]; then
            listen=$(fmt_addr "$host" "$port")
        else
            case "$host" in *:*) listen="[::]:$port" ;; *) listen="0.0.0.0:$port" ;; esac
        fi
        admin="127.0.0.1:$((9101 + i))"
    fi
    f="$nd/node.toml"
    {
        echo "# braid-node config for $id, generated by deploy/gen-net.sh."
        echo "# Run: braid-node --config node.toml (paths are relative to this file's folder)."
        echo
        echo "role = \"$role\""
        case "$role" in
            upstream|central|relay) echo "listen = \"$listen\"" ;;
        esac
        case "$role" in
            relay)
                echo "mix_delay_ms = $mix_ms"
                echo "mailbox_cells = 4096" ;;
            gateway)
                echo "connect_timeout_secs = 10"
                echo "reconnect_min_ms = 200"
                echo "reconnect_max_ms = 30000" ;;
        esac
        echo
        echo "[node]"
        echo "id = \"$id\""
        echo "directory = \"directory.toml\""
        echo "identity = \"keys\""
        if [ -n "$pin" ]; then echo "directory_key = \"$pin\""; fi
        echo "admin = \"$admin\""
        echo "log = \"text\""
        echo "drain_timeout_secs = $drain_secs"
        if [ "$role" = gateway ]; then
            echo
            echo "# Exit policy: the safe defaults (no loopback, private, link-local, CGNAT,"
            echo "# metadata, and never an overlay node's address)."
            echo "[exit]"
            echo "allow_loopback = false"
            echo "allow_private = false"
            if [ -n "$compose" ]; then
                echo
                echo "# COMPOSE SIMULATION ONLY: lets this exit reach port $origin_port of the docker"
                echo "# bridge's host side ($compose.1), where deploy/test-compose.sh serves its test"
                echo "# file. The host's other ports and the rest of $compose.0/24 (the other nodes)"
                echo "# stay refused. Remove this rule anywhere else."
                echo "[[exit.rules]]"
                echo "action = \"allow\""
                echo "cidr = \"$compose.1/32\""
                echo "ports = $origin_port"
            fi
            for j in "${!allow_cidrs[@]}"; do
                echo
                echo "# Added by gen-net.sh --exit-allow ${exit_allow[$j]}: opens this network (also"
                echo "# its private or loopback addresses) to this exit. Remove it if unintended."
                echo "[[exit.rules]]"
                echo "action = \"allow\""
                echo "cidr = \"${allow_cidrs[$j]}\""
                if [ -n "${allow_ports[$j]}" ]; then echo "ports = \"${allow_ports[$j]}\""; fi
            done
        fi
    } >"$f"
    chmod 644 "$f" "$nd/directory.toml"
    chmod 755 "$nd"
done

# Scalable services: one folder per role, shared by its replicas (id "auto": the role and
# the first hex digits of the key each replica makes).
for s in "${scalable[@]+"${scalable[@]}"}"; do
    role=${s%%=*}
    nd="$out/$role"
    mkdir -p "$nd"
    cp "$dir" "$nd/directory.toml"
    "$bin" operator --dir "$operator" join --role "$role" --out "$nd/node.join" >/dev/null \
        || die "issuing the join credential for $role failed"
    {
        echo "# braid-node config for the scalable $role service, generated by deploy/gen-net.sh."
        echo "# Every replica joins with node.join and makes its own keys in /keys (a tmpfs)."
        echo
        echo "role = \"$role\""
        if [ "$role" = upstream ]; then echo "listen = \"0.0.0.0:7100\""; fi
        echo
        echo "[node]"
        echo "id = \"auto\""
        echo "directory = \"directory.toml\""
        echo "identity = \"/keys\""
        echo "join = \"node.join\""
        echo "directory_key = \"$pin\""
        echo "admin = \"0.0.0.0:9100\""
        echo "log = \"text\""
        echo "drain_timeout_secs = $drain_secs"
        echo "descriptor_lifetime_secs = 60"
    } >"$nd/node.toml"
    chmod 644 "$nd/node.toml" "$nd/directory.toml"
    chmod 600 "$nd/node.join"
    chmod 755 "$nd"
done

cp "$dir" "$out/client/directory.toml"
client_socks=$socks
# In the compose network the client is a service: it listens on every address of its
# container, and the host's --socks port is published to it.
if [ -n "$compose" ]; then client_socks=0.0.0.0:1080; fi
cat >"$out/client/client.toml" <<EOF
# braid client config, generated by deploy/gen-net.sh.
# Run: braid run --config client.toml, then e.g.
#   curl --proxy socks5h://$socks http://example.com/

directory = "directory.toml"
socks_listen = "$client_socks"
gateway = "gateway-1"
scheduler = "round-robin"
window_cells = 1024
log = "text"
EOF
if [ -n "$pin" ]; then
    printf 'directory_key = "%s"\ncredential = "client.cred"\n' "$pin" >>"$out/client/client.toml"
fi
chmod 644 "$dir" "$out/client/client.toml" "$out/client/directory.toml"
chmod 755 "$out" "$out/client"

if [ -n "$inventory" ]; then
    {
        printf '# id\trole\thost\tport\tssh-target\n'
        for i in "${!ids[@]}"; do
            printf '%s\t%s\t%s\t%s\t%s\n' "${ids[$i]}" "${roles[$i]}" "${hosts[$i]}" "${ports[$i]:--}" "${sshs[$i]}"
        done
    } >"$out/hosts.tsv"
fi

if [ -n "$compose" ]; then
    # Services run as the owner of the node folders (keys are 0600). As root, hand the
    # folders to nobody (65534) so the containers need not run as root.
    if [ "$(id -u)" = 0 ]; then
        uid=65534 gid=65534
        for id in "${ids[@]}"; do chown -R "$uid:$gid" "$out/$id"; done
        for s in "${scalable[@]+"${scalable[@]}"}"; do chown -R "$uid:$gid" "$out/${s%%=*}"; done
        chown -R "$uid:$gid" "$out/client"
    else
        uid=$(id -u) gid=$(id -g)
    fi
    pairs=()
    for i in "${!ids[@]}"; do pairs+=("${ids[$i]}=${hosts[$i]}"); done
    scale_args=()
    for s in "${scalable[@]+"${scalable[@]}"}"; do scale_args+=(--scalable "$s"); done
    "$here/compose-file.sh" --prefix "$compose" --uid "$uid" --gid "$gid" "${scale_args[@]+"${scale_args[@]}"}" \
        --socks "$socks" \
        --drain-secs "$drain_secs" --path "." -- "${pairs[@]}" >"$out/docker-compose.yml"
fi

echo "gen-net.sh: wrote $out (${#ids[@]} nodes: ${ids[*]})" >&2
