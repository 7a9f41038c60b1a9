#!/usr/bin/env bash
# Heal after an outage: three `brickd serve` nodes and a real etcd on loopback; a 2 GiB image
# on a replica-2 and a replica-3 volume under 4 KiB random writes at queue depth 4 paced to
# 1000 IOPS, every request's latency logged; one replica SIGKILLed for 20 s, then restarted.
# Prints and writes (OUT/summary.json) the distinct bytes written during the outage, the bytes
# the heal copied, the time from the restart to the heal's start and end, and the latency
# percentiles per phase (before, outage, heal, after).
#
#   bench/heal.sh [--out DIR] [--image-mib N] [--outage-s N] [--iops N] [--replicas 2,3]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ARGS=(--out "$ROOT/target/heal-bench")
while [ $# -gt 0 ]; do
  case "$1" in
    --out|--image-mib|--outage-s|--iops|--replicas) ARGS+=("$1" "$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v etcd >/dev/null || { echo "etcd is not installed (apt-get install etcd-server)" >&2; exit 2; }
(cd "$ROOT" && cargo build --release -p brickd -p brick-bench --bin heal-bench)
"$ROOT/target/release/heal-bench" --brickd "$ROOT/target/release/brickd" "${ARGS[@]}"
