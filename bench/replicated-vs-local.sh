#!/usr/bin/env bash
# 4 KiB random writes at queue depth 32: local fio (io_uring, O_DIRECT) beside `brick bench`
# on a replica-2 volume of two nodes and a replica-3 volume of three nodes, all on this
# machine (a real etcd and `brickd serve` processes on loopback), interleaved rounds, medians.
# Every replicated write lands R times on the same disk, so the ceiling is local IOPS / R;
# the target is 80% of it.
#
#   bench/replicated-vs-local.sh [--seconds N] [--rounds N] [--size BYTES] [--qd N]
#                                [--jobs N] [--scratch DIR] [--out FILE.json]
# --jobs: files written at once by brick bench (each in its own PG, so with its own primary),
# each at queue depth --qd.
set -euo pipefail

SECONDS_PER_RUN=8
ROUNDS=3
SIZE=$((256 << 20))
QD=32
JOBS=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH="$ROOT/target/bench-scratch"
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --qd) QD=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --scratch) SCRATCH=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v fio >/dev/null || { echo "fio is not installed (apt-get install fio)" >&2; exit 2; }
command -v etcd >/dev/null || { echo "etcd is not installed (apt-get install etcd-server)" >&2; exit 2; }
BIN="$ROOT/target/release"
(cd "$ROOT" && cargo build --release -p brickd -p brick)

RUN="$SCRATCH/repl-$$"
mkdir -p "$RUN"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$RUN"
}
trap cleanup EXIT INT TERM

EP=$(free_port); PP=$(free_port)
etcd --name bench --data-dir "$RUN/etcd" --listen-client-urls "http://127.0.0.1:$EP" \
  --advertise-client-urls "http://127.0.0.1:$EP" --listen-peer-urls "http://127.0.0.1:$PP" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PP" --initial-cluster "bench=http://127.0.0.1:$PP" \
  >"$RUN/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$EP/health" >/dev/null 2>&1 && break; sleep 0.1; done

export BRICK_USER=admin BRICK_PASSWORD=bench-password
ADDRS=()
# Each node's core gets its own CPU, round robin: by default core i is pinned to CPU i, which
# on one machine would put every node's only core on CPU 0 and leave the others idle.
NCPU=$(nproc)
IDX=0
for n in n1 n2 n3; do
  P=$(free_port)
  mkdir -p "$RUN/$n"
  BRICKD_ADMIN_PASSWORD=$BRICK_PASSWORD "$BIN/brickd" serve --node "$n" --listen "127.0.0.1:$P" \
    --store "etcd://127.0.0.1:$EP" --cores 1 --cpus $((IDX % NCPU)) >"$RUN/$n/brickd.log" 2>&1 &
  IDX=$((IDX + 1))
  PIDS+=($!)
  ADDRS+=("127.0.0.1:$P")
  for _ in $(seq 1 100); do grep -q "serving on" "$RUN/$n/brickd.log" && break; sleep 0.1; done
  grep -q "serving on" "$RUN/$n/brickd.log" || { cat "$RUN/$n/brickd.log" >&2; exit 1; }
done
export BRICK_SERVERS
BRICK_SERVERS=$(IFS=,; echo "${ADDRS[*]}")
"$BIN/brick" --quiet volume create r1 replica 1 "n1:$RUN/n1/r1" >/dev/null
"$BIN/brick" --quiet volume create r2 replica 2 "n1:$RUN/n1/r2" "n2:$RUN/n2/r2" >/dev/null
"$BIN/brick" --quiet volume create r3 replica 3 "n1:$RUN/n1/r3" "n2:$RUN/n2/r3" "n3:$RUN/n3/r3" >/dev/null
"$BIN/brick" --quiet volume set r2 io.mode "${IO_MODE:-auto}" >/dev/null
"$BIN/brick" --quiet volume set r3 io.mode "${IO_MODE:-auto}" >/dev/null
"$BIN/brick" --quiet volume set r1 io.mode "${IO_MODE:-auto}" >/dev/null
"$BIN/brick" --quiet volume start r1 >/dev/null
"$BIN/brick" --quiet volume start r2 >/dev/null
"$BIN/brick" --quiet volume start r3 >/dev/null
sleep 1 # every node serves the new volumes once its watch fires

# Busy CPU time of the whole machine (user, nice, system, irq, softirq) in microseconds.
TICKS=$(getconf CLK_TCK)
cpu_busy_us() { awk -v t="$TICKS" '/^cpu /{printf "%.0f\n", ($2+$3+$4+$7+$8)*1000000/t}' /proc/stat; }

RESULTS="$RUN/results.jsonl"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  FIO_CPU_START=$(cpu_busy_us)
  fio --name=local --filename="$RUN/fio.img" --size="$SIZE" --rw=randwrite --bs=4k \
    --iodepth="$QD" --ioengine=io_uring --direct=1 --time_based --runtime="$SECONDS_PER_RUN" \
    --output-format=json >"$RUN/fio.json" 2>"$RUN/fio.err" || { cat "$RUN/fio.err" >&2; exit 1; }
  FIO_CPU_US=$(( $(cpu_busy_us) - FIO_CPU_START ))
  for vol in r1 r2 r3; do
    "$BIN/brick" --quiet --json bench --volume "$vol" --workload randwrite-4k --qd "$QD" --jobs "$JOBS" \
      --seconds "$SECONDS_PER_RUN" --size "$SIZE" >"$RUN/$vol.json"
  done
  python3 - "$round" "$FIO_CPU_US" "$RUN/fio.json" "$RUN/r1.json" "$RUN/r2.json" "$RUN/r3.json" >>"$RESULTS" <<'PY'
import json, sys
rnd, fio_cpu_us, fio, r1, r2, r3 = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]
w = json.load(open(fio))["jobs"][0]["write"]
row = {"round": rnd, "local_iops": w["iops"],
       "local_cpu_us_per_op": fio_cpu_us / max(w["total_ios"], 1),
       "cpus": json.load(open(r1)).get("host_cpus", 1)}
for name, path in (("r1", r1), ("r2", r2), ("r3", r3)):
    b = json.load(open(path))
    row.update({f"{name}_iops": b["iops"], f"{name}_p50_us": b["lat_us"]["p50"],
                f"{name}_p99_us": b["lat_us"]["p99"], f"{name}_errors": b["errors"],
                f"{name}_cpu_us_per_op": b.get("host_cpu_us_per_op") or 0.0})
print(json.dumps(row))
PY
  tail -n 1 "$RESULTS" >&2
done

python3 - "$RESULTS" "$OUT" "$SIZE" "$QD" "$SECONDS_PER_RUN" "$ROUNDS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out, size, qd, secs, rounds = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
local = statistics.median(r["local_iops"] for r in rows)
local_cpu = statistics.median(r["local_cpu_us_per_op"] for r in rows)
cpus = rows[0]["cpus"]
print(f"\nrandwrite-4k qd {qd}, {size >> 20} MiB file, {secs} s x {rounds} interleaved rounds, medians; "
      f"every node --cores 1, all on this machine ({cpus} CPUs)")
# CPU us/op: busy time of the whole machine per request. CPU ceiling: the requests per second
# all its CPUs could carry at that cost. Disk share: R x fio's CPU per 4 KiB write, over that.
print(f"{'volume':<10} {'IOPS':>9} {'local/R':>9} {'ratio':>7} {'target':>7}  met   p99 us"
      f"  CPU us/op  CPU ceiling  disk share")
summary = []
for name, r in (("replica 1", 1), ("replica 2", 2), ("replica 3", 3)):
    key = f"r{r}_iops"
    iops = statistics.median(x[key] for x in rows)
    ceiling = local / r
    ratio = iops / ceiling if ceiling else 0.0
    p99 = statistics.median(x[f"r{r}_p99_us"] for x in rows)
    cpu = statistics.median(x[f"r{r}_cpu_us_per_op"] for x in rows)
    cpu_ceiling = cpus * 1e6 / cpu if cpu else 0.0
    disk_share = r * local_cpu / cpu if cpu else 0.0
    summary.append({"volume": name, "iops": iops, "ceiling_iops": ceiling, "ratio": ratio,
                    "target": 0.8, "met": ratio >= 0.8, "p99_us": p99, "cpu_us_per_op": cpu,
                    "cpu_ceiling_iops": cpu_ceiling, "disk_cpu_share": disk_share})
    print(f"{name:<10} {iops:>9.0f} {ceiling:>9.0f} {ratio:>7.2f} {0.8:>7.2f}  {'yes' if ratio >= 0.8 else 'NO ':<4} {p99:>7.0f}"
          f"  {cpu:>9.1f}  {cpu_ceiling:>11.0f}  {disk_share:>10.2f}")
print(f"local fio {local:.0f} IOPS, {local_cpu:.1f} CPU us per write "
      f"(CPU ceiling {cpus * 1e6 / local_cpu if local_cpu else 0:.0f})")
if out:
    json.dump({"local_iops": local, "local_cpu_us_per_op": local_cpu, "cpus": cpus, "qd": qd,
               "size_bytes": size, "seconds": secs, "rounds": rounds,
               "volumes": summary, "rows": rows}, open(out, "w"), indent=2)
    print(f"written to {out}")
PY
