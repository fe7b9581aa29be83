#!/usr/bin/env bash
# Deploy a Braid network to real hosts (7 to 15 VPSes, one node per line of the inventory).
#
#   deploy/deploy.sh [options] INVENTORY
#
# INVENTORY: one node per line, `ROLE PUBLIC-ADDR [ssh-target]` (see gen-net.sh --help);
# at least 2 upstreams, 1 central (2 or more for high availability), 2 downstreams,
# 1 relay and 1 gateway.
#
# Steps: build the static binaries (deploy/build-image.sh --no-docker), generate the
# network (gen-net.sh --inventory: new identities, directory, configs), write one bundle
# per node (binary, node folder, systemd unit, install.sh) and one for the client, then
# per host: scp the bundle into the ssh user's home, run its install.sh as root (sudo if
# the ssh user is not root: installs /usr/local/bin/braid-node, /etc/braid/<id>/ and
# braid-node@.service, then enables and (re)starts braid-node@<id>).
#
# Options:
#   --render-only DIR   write DIR/net and DIR/bundles and stop (no ssh)
#   --dry-run           do everything but print the ssh/scp commands instead of running them
#   --out DIR           where the network and bundles go (default deploy/out/<inventory name>);
#                       an existing network there is reused if made from the same inventory
#   --new-keys          regenerate identities even if DIR/net exists (every node and the
#                       client must then get the new directory: deploy all hosts)
#   --bin DIR           take braid-node and braid from DIR instead of building them
#   --bind any|public   nodes listen on 0.0.0.0:PORT (default) or on their public address
#   --ssh-opt OPT       extra option for ssh and scp (repeatable), e.g. --ssh-opt -oPort=2222
#   --only ID           deploy only this node (repeatable); bundles are still all written
# Remaining options (--cell-size, --mix-ms, --drain-secs, --socks) go to gen-net.sh.
set -euo pipefail

die() { echo "deploy.sh: $*" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)

render="" dry=0 out="" newkeys=0 bindir="" bind=any inventory=""
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=15)
only=() genopts=()
need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --render-only) need "$@"; render=$2; shift ;;
        --dry-run) dry=1 ;;
        --out) need "$@"; out=$2; shift ;;
        --new-keys) newkeys=1 ;;
        --bin) need "$@"; bindir=$2; shift ;;
        --bind) need "$@"; bind=$2; shift ;;
        --ssh-opt) need "$@"; ssh_opts+=("$2"); shift ;;
        --only) need "$@"; only+=("$2"); shift ;;
        --cell-size|--mix-ms|--drain-secs|--socks) need "$@"; genopts+=("$1" "$2"); shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        -*) die "unknown option: $1 (see --help)" ;;
        *) [ -z "$inventory" ] || die "only one INVENTORY, got '$inventory' and '$1'"; inventory=$1 ;;
    esac
    shift
done
[ -n "$inventory" ] || die "usage: deploy.sh [--render-only DIR | --dry-run] INVENTORY (see --help)"
[ -f "$inventory" ] && [ -r "$inventory" ] || die "cannot read the inventory file '$inventory'"
if [ -n "$render" ] && [ -n "$out" ]; then die "--render-only DIR already names the output folder; drop --out"; fi
if [ -n "$render" ]; then out=$render; fi
[ -n "$out" ] || out="$here/out/$(basename "$inventory" | sed 's/\.[^.]*$//')"

# ---- check the inventory before building anything -------------------------------------
declare -A count=([upstream]=0 [central]=0 [downstream]=0 [relay]=0 [gateway]=0)
lineno=0
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
if [ "$total" -gt 15 ]; then echo "deploy.sh: note: $total nodes (this script is meant for 7 to 15)" >&2; fi

# ---- binaries -------------------------------------------------------------------------
if [ -z "$bindir" ]; then
    bindir=$("$here/build-image.sh" --no-docker | tail -n 1)
fi
for b in braid-node braid; do
    [ -x "$bindir/$b" ] || die "no executable $bindir/$b"
done

# ---- the network ------------------------------------------------------------------------
net="$out/net"
if [ -d "$net" ] && [ "$newkeys" = 0 ]; then
    cmp -s "$inventory" "$net/inventory" ||
        die "$net was generated from another inventory: pass --new-keys to regenerate (every host must then be deployed) or use another --out"
    echo "deploy.sh: reusing the identities in $net" >&2
else
    mkdir -p "$out"
    "$here/gen-net.sh" --inventory "$inventory" --out "$net" --bin "$bindir/braid-node" \
        --bind "$bind" --force "${genopts[@]+"${genopts[@]}"}"
    cp "$inventory" "$net/inventory"
fi

# ---- bundles ----------------------------------------------------------------------------
bundles="$out/bundles"
rm -rf "$bundles"
mkdir -p "$bundles"
ids=() sshs=() roles=() hosts=() ports=()
while IFS=$'\t' read -r id role host port sshv; do
    case "$id" in '#'*|'') continue ;; esac
    ids+=("$id"); roles+=("$role"); hosts+=("$host"); ports+=("$port"); sshs+=("$sshv")
done <"$net/hosts.tsv"

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
cp "$here/systemd/braid.service" "$b/"
write_install "$b" client client
echo "deploy.sh: bundles in $bundles (the client's is $bundles/client: install it where the SOCKS5 proxy should run)" >&2
column -t -s $'\t' "$bundles/SUMMARY" >&2 2>/dev/null || cat "$bundles/SUMMARY" >&2

if [ -n "$render" ]; then exit 0; fi

# ---- push ---------------------------------------------------------------------------------
run() {
    if [ "$dry" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
# Listeners first, so the dialers find them at once (they would redial anyway).
order=()
for r in central relay upstream downstream gateway; do
    for i in "${!ids[@]}"; do [ "${roles[$i]}" = "$r" ] && order+=("$i"); done
done
failed=()
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
        echo "deploy.sh: $id on $target FAILED" >&2
        failed+=("$id")
    fi
done
[ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]} (the others are deployed; rerun with --only ID to retry)"
echo "deploy.sh: done. Client bundle: $bundles/client (sudo sh install.sh there, or braid run --config conf/client.toml)" >&2
