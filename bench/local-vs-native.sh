#!/usr/bin/env bash
# Local io_uring (fio, O_DIRECT) versus brickd's native client on a single-brick volume, in one
# run, on the same filesystem, same block size, queue depth, file size and duration.
#
# The disk of a shared VM drifts by a factor of two within minutes, so the two sides are
# interleaved (fio, then brick, per round) and the median of the rounds is compared.
#
#   bench/local-vs-native.sh [--seconds N] [--rounds N] [--size BYTES] [--qd N] [--cores N]
#                            [--scratch DIR] [--out FILE.json]
set -euo pipefail

SECONDS_PER_RUN=8
ROUNDS=3
SIZE=$((1 << 30))
QD=32
CORES=2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH="$ROOT/target/bench-scratch"
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --qd) QD=$2; shift 2 ;;
    --cores) CORES=$2; shift 2 ;;
    --scratch) SCRATCH=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

command -v fio >/dev/null || { echo "fio is not installed (apt-get install fio)" >&2; exit 2; }
BIN="$ROOT/target/release"
if [ ! -x "$BIN/brickd" ] || [ ! -x "$BIN/brick" ]; then
  (cd "$ROOT" && cargo build --release -p brickd -p brick)
fi

RUN="$SCRATCH/run-$$"
mkdir -p "$RUN"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BRICKD_PID=""
cleanup() {
  if [ -n "$BRICKD_PID" ] && kill -0 "$BRICKD_PID" 2>/dev/null; then
    kill -TERM "$BRICKD_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$BRICKD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$BRICKD_PID" 2>/dev/null || true
  fi
  rm -rf "$RUN"
}
trap cleanup EXIT INT TERM

"$BIN/brickd" dev --dir "$RUN/dev" --listen "127.0.0.1:$PORT" --cores "$CORES" >"$RUN/brickd.log" 2>&1 &
BRICKD_PID=$!
for _ in $(seq 1 300); do [ -f "$RUN/dev/endpoints.json" ] && break; sleep 0.1; done
[ -f "$RUN/dev/endpoints.json" ] || { echo "brickd did not start:" >&2; cat "$RUN/brickd.log" >&2; exit 1; }
export BRICK_ENDPOINTS="$RUN/dev/endpoints.json"
"$BIN/brick" --quiet volume create bench replica 1 "dev:$RUN/bench-brick" >/dev/null
"$BIN/brick" --quiet volume start bench >/dev/null

fio_args() {
  case "$1" in
    randwrite-4k) echo "--rw=randwrite --bs=4k" ;;
    randread-4k) echo "--rw=randread --bs=4k" ;;
    seqwrite-1m) echo "--rw=write --bs=1m" ;;
    seqread-1m) echo "--rw=read --bs=1m" ;;
  esac
}

RESULTS="$RUN/results.jsonl"
: >"$RESULTS"
for workload in randwrite-4k randread-4k seqwrite-1m seqread-1m; do
  for round in $(seq 1 "$ROUNDS"); do
    # shellcheck disable=SC2046
    fio --name=local --filename="$RUN/fio.img" --size="$SIZE" $(fio_args "$workload") \
      --iodepth="$QD" --ioengine=io_uring --direct=1 --time_based --runtime="$SECONDS_PER_RUN" \
      --output-format=json >"$RUN/fio.json" 2>"$RUN/fio.err" || { cat "$RUN/fio.err" >&2; exit 1; }
    "$BIN/brick" --quiet --json bench --volume bench --workload "$workload" --qd "$QD" \
      --seconds "$SECONDS_PER_RUN" --size "$SIZE" >"$RUN/brick.json"
    python3 - "$workload" "$round" "$RUN/fio.json" "$RUN/brick.json" >>"$RESULTS" <<'EOF'
import json, sys
workload, rnd, fio_path, brick_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
job = json.load(open(fio_path))["jobs"][0]
side = job["write"] if "write" in workload else job["read"]
brick = json.load(open(brick_path))
print(json.dumps({
    "workload": workload, "round": rnd,
    "local_iops": side["iops"], "local_mib_s": side["bw"] / 1024,
    "local_p99_us": side["clat_ns"]["percentile"].get("99.000000", 0) / 1000,
    "native_iops": brick["iops"], "native_mib_s": brick["mib_s"], "native_p99_us": brick["lat_us"]["p99"],
}))
EOF
    tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("  %-13s round %d: local %9.0f IOPS %7.0f MiB/s | native %9.0f IOPS %7.0f MiB/s" % (
    r["workload"], r["round"], r["local_iops"], r["local_mib_s"], r["native_iops"], r["native_mib_s"]), file=sys.stderr)'
  done
done

python3 - "$RESULTS" "$OUT" "$SIZE" "$QD" "$SECONDS_PER_RUN" "$ROUNDS" "$CORES" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out, size, qd, secs, rounds, cores = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
targets = {"randwrite-4k": 0.60, "randread-4k": 0.60, "seqwrite-1m": 0.80, "seqread-1m": 0.80}
summary = []
print(f"\nlocal fio (io_uring, O_DIRECT) vs brick bench (native, 1 brick, {cores} cores); "
      f"qd {qd}, {size >> 20} MiB file, {secs} s x {rounds} interleaved rounds, medians")
print(f"{'workload':<13} {'local IOPS':>11} {'native IOPS':>12} {'local MiB/s':>12} {'native MiB/s':>13} {'ratio':>7} {'target':>7}  met")
for w in targets:
    rs = [r for r in rows if r["workload"] == w]
    li = statistics.median(r["local_iops"] for r in rs)
    ni = statistics.median(r["native_iops"] for r in rs)
    lm = statistics.median(r["local_mib_s"] for r in rs)
    nm = statistics.median(r["native_mib_s"] for r in rs)
    ratio = ni / li if li else 0.0
    met = ratio >= targets[w]
    summary.append({"workload": w, "local_iops": li, "native_iops": ni, "local_mib_s": lm, "native_mib_s": nm,
                    "ratio": ratio, "target": targets[w], "met": met,
                    "native_p99_us": statistics.median(r["native_p99_us"] for r in rs), "rounds": rs})
    print(f"{w:<13} {li:>11.0f} {ni:>12.0f} {lm:>12.0f} {nm:>13.0f} {ratio:>7.2f} {targets[w]:>7.2f}  {'yes' if met else 'NO'}")
if out:
    json.dump({"size_bytes": size, "qd": int(qd), "seconds": int(secs), "rounds": int(rounds), "cores": int(cores),
               "workloads": summary}, open(out, "w"), indent=2)
    print(f"\nwritten to {out}")
EOF
