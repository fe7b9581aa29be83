#!/usr/bin/env bash
# Runs every fuzz target in turn, one fuzzer process at a time, for SECONDS each
# (default 600), seeded from seeds/<target> and growing corpus/<target>.
# Logs go to logs/<target>.log; the final `stat::` lines are printed at the end.
#
#   fuzz/run_all.sh            # 9 targets x 10 minutes
#   fuzz/run_all.sh 60 socks5  # one target for a minute
set -u
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=${*:-cell record handshake socks5 config envelope resume admission registration credential join http socks4}
mkdir -p fuzz/logs
export RUSTC_BOOTSTRAP=1
cargo fuzz build || exit 1
for t in $targets; do
    mkdir -p "fuzz/corpus/$t"
    # libFuzzer exits at once on a corpus directory that does not exist.
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    echo "== $t: ${secs}s, log fuzz/logs/$t.log"
    cargo fuzz run "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1
    echo "   exit $?"
    grep -E '^stat::|DONE|SUMMARY|panicked' "fuzz/logs/$t.log"
done
