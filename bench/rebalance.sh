#!/usr/bin/env bash
# Rebalance under load and kill -9: three `brickd serve` nodes and a real etcd on loopback; a
# replica-2 volume grows from one replica set to two and three and drains one back
# (add-brick, rebalance, remove-brick) while a small-file writer and a 4 KiB image writer run
# through the native client. Two runs of brickd/cli/tests/rebalance.rs:
#   1. no kills: what had to move and what landed on the new bricks, the rebalance rate
#      against a local copy (read, write, fsync) of the same files on the same file system,
#      the image writer's p99 during the moves over its p99 before, and its longest request;
#   2. --kills N per move (3 moves; default 17: 51 SIGKILLs of a random node at random
#      moments): every acknowledged file and the image are checked after each run (sha256),
#      and no brick may keep data of a PG it does not hold.
# Writes OUT/no-kills.json, OUT/kills.json and OUT/summary.md.
#
#   bench/rebalance.sh [--out DIR] [--kills N] [--seed N] [--baseline-s N]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/target/rebalance-bench"
KILLS=17
SEED=7
BASELINE_S=5
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$(realpath -m "$2"); shift 2 ;;
    --kills) KILLS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --baseline-s) BASELINE_S=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v etcd >/dev/null || { echo "etcd is not installed (apt-get install etcd-server)" >&2; exit 2; }
mkdir -p "$OUT"
cd "$ROOT"
cargo build --release -p brickd -p brick --tests
run() { # NAME KILLS
  echo "== run $1: $2 SIGKILLs per move"
  BRICK_REBALANCE_KILLS=$2 BRICK_REBALANCE_SEED=$SEED BRICK_REBALANCE_BASELINE_S=$BASELINE_S \
    BRICK_REBALANCE_REPORT="$OUT/$1.json" \
    cargo test --release -p brick --test rebalance -- --nocapture 2>&1 | tee "$OUT/$1.log" | grep -E "^\||SIGKILL|intact|test result"
}
run no-kills 0
run kills "$KILLS"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
a = json.load(open(f"{out}/no-kills.json"))
b = json.load(open(f"{out}/kills.json"))
lines = ["| move | PGs | had to move (MiB) | landed on new bricks (MiB) | landed / had to move | rate (MiB/s) | rate / local copy |",
         "|---|---|---|---|---|---|---|"]
for m in a["moves"]:
    lines.append(f"| {m['step']} | {m['pgs_moved']} | {m['bytes_had_to_move']/2**20:.1f} | {m['bytes_landed_on_new_bricks']/2**20:.1f} | {m['landed_over_had_to_move']:.2f} | {m['rate_bytes_s']/2**20:.1f} | {m['rate_over_local_copy']:.2f} |")
lines.append("")
lines.append(f"local copy of the same files: {a['local_copy_bytes_s']/2**20:.1f} MiB/s")
lines.append(f"image writer (4 KiB, QD1): p99 {a['client_p99_before_us']} us before, {a['client_p99_during_us']} us during the moves (ratio {a['client_p99_ratio']:.2f}), longest request during the moves {a['client_max_during_us']/1000:.1f} ms")
lines.append(f"kill -9: {b['kills']} SIGKILLs over 3 moves; {b['acknowledged_files']} acknowledged files and the image checked: {b['files_lost']} lost")
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
