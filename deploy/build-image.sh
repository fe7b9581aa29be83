#!/usr/bin/env bash
# Build statically linked braid-node and braid, check they are static, and build the
# `braid:dev` image FROM scratch around them (no registry needed).
#
#   deploy/build-image.sh [--no-docker] [--tag NAME]
#
# --no-docker only builds and checks the binaries (deploy.sh uses this) and prints the
# folder holding them: target/static/dist/ (stripped copies of the release binaries in
# target/static/x86_64-unknown-linux-gnu/release/, which keep their debug info). A
# separate --target-dir keeps the normal build cache intact.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
tag=braid:dev
docker=1
while [ $# -gt 0 ]; do
    case "$1" in
        --no-docker) docker=0 ;;
        --tag) tag=${2:?--tag needs a value}; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "build-image.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

target=x86_64-unknown-linux-gnu
outdir="$root/target/static/$target/release"

echo "==> cargo build (static, $target)" >&2
(cd "$root" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked --target "$target" --target-dir target/static \
    -p braid-node -p braid)

for b in braid-node braid; do
    f="$outdir/$b"
    [ -x "$f" ] || { echo "build-image.sh: $f was not built" >&2; exit 1; }
    desc=$(file -b "$f")
    case "$desc" in
        *"statically linked"*|*"static-pie linked"*) ;;
        *) echo "build-image.sh: $f is not statically linked: $desc" >&2; exit 1 ;;
    esac
    # ldd prints "not a dynamic executable" (exit 1) or "statically linked" for static ones.
    if ldd "$f" 2>&1 | grep -q '=>'; then
        echo "build-image.sh: ldd lists shared libraries for $f:" >&2
        ldd "$f" >&2 || true
        exit 1
    fi
    echo "    $b: $(du -h "$f" | cut -f1), $desc" >&2
done

dist="$root/target/static/dist"
mkdir -p "$dist"
for b in braid-node braid; do
    cp "$outdir/$b" "$dist/$b.tmp"
    if command -v strip >/dev/null; then strip "$dist/$b.tmp"; fi
    mv -f "$dist/$b.tmp" "$dist/$b"
done
echo "    stripped copies in $dist: $(du -h "$dist/braid-node" | cut -f1) + $(du -h "$dist/braid" | cut -f1)" >&2

[ "$docker" = 1 ] || { echo "$dist"; exit 0; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$dist/braid-node" "$dist/braid" "$here/Dockerfile" "$ctx/"
echo "==> docker build -t $tag" >&2
docker build -t "$tag" "$ctx"
docker image ls "$tag"
