#!/usr/bin/env bash
# The longest client stall during failover: three `brickd serve` nodes and a real etcd on
# loopback, 32 concurrent 4 KiB writers on a replica-3 and a replica-2 volume, the primary or a
# secondary of the loaded PG frozen (SIGSTOP) or killed (SIGKILL). Every request's latency is
# logged (CSV per scenario); the summary gives the longest request per scenario.
#
#   bench/failover-stall.sh [--out DIR] [--during-ms N]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/target/failover-stall"
DURING=5000
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --during-ms) DURING=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v etcd >/dev/null || { echo "etcd is not installed (apt-get install etcd-server)" >&2; exit 2; }
(cd "$ROOT" && cargo build --release -p brickd -p brick-bench --bin failover-stall)
"$ROOT/target/release/failover-stall" --brickd "$ROOT/target/release/brickd" --out "$OUT" --during-ms "$DURING"
