#!/usr/bin/env bash
# Faults beyond a killed process, on real processes (brickd/cli/tests/faults.rs): disks that
# return EIO or ENOSPC (reads on the primary, writes on the primary or a secondary), power
# cuts of one node or of every node (bricks on brick-faultfs, which forgets unsynced writes),
# the cluster store frozen or without quorum, and network partitions between namespaces
# (brickd/cli/tests/partitions.rs: primary cut from the store, replica cut from the primary,
# client cut from the primary, 2/1 splits with etcd on either side, a flapping link). Each
# scenario runs ROUNDS times under a workload of keyed records (4 writers, 2 readers) whose
# history is checked: acknowledged
# writes lost (after a cut of every node: writes made durable by FUA or fsync), stale reads,
# client errors, and the longest time without a successful operation.
#
# Prints a table and writes OUT/faults.json (one entry per scenario, its rounds inside).
# Repeatable: --seed picks the readers' blocks and the moments of the faults. CI runs one
# round of every scenario as tests, and this script once on one scenario.
#
#   bench/faults.sh [--rounds N] [--seed N] [--out DIR] [--filter TEST_NAME_PART] [--quorum-s S]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=3
SEED=1
OUT="$ROOT/target/faults-bench"
FILTER=""
QUORUM_S=60
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --filter) FILTER=$2; shift 2 ;;
    --quorum-s) QUORUM_S=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v etcd >/dev/null || { echo "etcd is not installed (apt-get install etcd-server)" >&2; exit 2; }
command -v nft >/dev/null || { echo "nft is not installed (apt-get install nftables)" >&2; exit 2; }
[ -e /dev/fuse ] || { echo "/dev/fuse is missing: brick-faultfs cannot mount" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd) # the tests run in their package's directory
REPORT="$OUT/rounds.jsonl"
rm -f "$REPORT"
cd "$ROOT"
cargo build --release -p brickd -p brick-testkit --bin brick-faultfs >/dev/null
status=0
FAULTS_ROUNDS=$ROUNDS FAULTS_SEED=$SEED FAULTS_REPORT=$REPORT \
  cargo test --release --no-fail-fast -p brick --test faults --test partitions -- --test-threads=1 $FILTER || status=$?
if [ -z "$FILTER" ] || [[ "$FILTER" == *quorum* ]]; then
  # Two of three etcd members down for QUORUM_S under fio through NBD, a FUSE remount, CLI
  # clients and a node restart (brickd/cli/tests/store_outage.rs); its summary line only.
  echo "== etcd without quorum for ${QUORUM_S} s: fio through NBD, FUSE remount, CLI, node restart"
  BRICK_GATEWAYS_QUORUM_LOST_S=$QUORUM_S cargo test --release -p brick --test store_outage \
    nbd_fio_fuse_remount -- --nocapture 2>&1 | grep -E "no quorum for|panicked|test result" || status=1
fi
touch "$REPORT"
python3 - "$REPORT" "$OUT/faults.json" "$ROUNDS" "$SEED" <<'EOF' || status=1
import json, sys
report, out, rounds, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
by = {}
for line in open(report):
    r = json.loads(line)
    by.setdefault(r["scenario"], []).append(r)
doc = {"seed": seed, "rounds_asked": rounds, "scenarios": []}
rows = []
for name, rs in by.items():
    s = {
        "scenario": name,
        "rounds": len(rs),
        "acked_writes": sum(r["acked_writes"] for r in rs),
        "reads": sum(r["reads"] for r in rs),
        "lost_writes": sum(r["lost_writes"] for r in rs),
        "stale_reads": sum(r["stale_reads"] for r in rs),
        "client_errors": sum(r["client_errors"] for r in rs),
        "longest_unavailable_ms": max(r["longest_unavailable_ms"] for r in rs),
        "rounds_detail": rs,
    }
    doc["scenarios"].append(s)
    rows.append(s)
json.dump(doc, open(out, "w"), indent=2)
head = ("scenario", "rounds", "acked writes", "reads", "lost", "stale reads", "client errors", "longest unavailable")
fmt = "{:<32} {:>6} {:>12} {:>8} {:>5} {:>11} {:>13} {:>19}"
print(fmt.format(*head))
for s in rows:
    print(fmt.format(s["scenario"], s["rounds"], s["acked_writes"], s["reads"], s["lost_writes"],
                     s["stale_reads"], s["client_errors"], f'{s["longest_unavailable_ms"]} ms'))
print(f"seed {seed}; JSON: {out}")
bad = [s["scenario"] for s in rows if s["lost_writes"] or s["stale_reads"]]
if bad:
    print("lost writes or stale reads in: " + ", ".join(bad))
    sys.exit(1)
EOF
exit $status
