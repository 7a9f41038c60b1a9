#!/usr/bin/env bash
# VM-image workloads with fio on the replica-1 volume of `brickd dev --replica 1`, through the
# NBD gateway brickd hosts (fio's nbd engine; the gateway's client reaches the dataplane
# in-process) and through the FUSE mount (`brick mount`, io_uring engine, O_DIRECT), beside
# fio's io_uring engine on a local file of the same filesystem and beside qemu-nbd serving a
# local file of the same filesystem (io_uring, O_DIRECT: the NBD path's own cost on this
# machine), in one run, interleaved (local, qemu-nbd, NBD, FUSE per round), medians and
# ratios. Then the small-file test (10,000 x 4 KiB in one directory: create, list, stat, read,
# delete) on the FUSE mount beside the local filesystem.
#
# Workloads: 4 KiB random read and write at queue depth 1 and 32, a 70/30 random mix at
# queue depth 32, 1 MiB sequential read and write at queue depth 8.
#
# CPUs: brickd's cores are pinned to the last --cores CPUs (one image is served by one core;
# on this VM the disk's interrupts all land on the last CPU, so its completions reach the core
# without a cross-CPU wake-up), qemu-nbd and the FUSE daemon run on those CPUs too, and every
# fio (the local ones included) on the others, as a VM host keeps its guests' CPUs apart from
# its storage daemons'. Left to the scheduler, fio's thread is often woken onto the serving
# core's CPU and a round loses half its IOPS. `--client-cpus none` turns the pinning off.
#
#   bench/vm.sh [--seconds N] [--rounds N] [--size BYTES] [--cores N] [--scratch DIR]
#               [--client-cpus LIST|none] [--out FILE.json]
set -euo pipefail

SECONDS_PER_RUN=8
ROUNDS=2
SIZE=$((1 << 30))
CORES=1
CLIENT_CPUS=""
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH="$ROOT/target/bench-scratch"
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --cores) CORES=$2; shift 2 ;;
    --scratch) SCRATCH=$2; shift 2 ;;
    --client-cpus) CLIENT_CPUS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

command -v fio >/dev/null || { echo "fio is not installed (apt-get install fio)" >&2; exit 2; }
command -v qemu-nbd >/dev/null || { echo "qemu-nbd is not installed (apt-get install qemu-utils)" >&2; exit 2; }
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "this fio has no nbd engine" >&2; exit 2; }
CPUS=$(nproc)
SERVER_CPUS="$((CPUS - CORES))-$((CPUS - 1))"
if [ -z "$CLIENT_CPUS" ]; then
  if [ "$CPUS" -gt "$CORES" ]; then CLIENT_CPUS="0-$((CPUS - CORES - 1))"; else CLIENT_CPUS=none; fi
fi
if [ "$CLIENT_CPUS" = none ]; then
  ON_CLIENT=(); ON_SERVER=(); CORE_CPUS=()
else
  ON_CLIENT=(taskset -c "$CLIENT_CPUS"); ON_SERVER=(taskset -c "$SERVER_CPUS")
  CORE_CPUS=(--cpus "$(seq -s, $((CPUS - CORES)) $((CPUS - 1)))")
fi
echo "brickd cores: $CORES (CPUs $SERVER_CPUS); fio on CPUs: $CLIENT_CPUS" >&2
BIN="$ROOT/target/release"
(cd "$ROOT" && cargo build --release -p brickd -p brick)

RUN="$SCRATCH/vm-$$"
mkdir -p "$RUN"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
QEMU_NBD_PORT=$(free_port)
PIDS=()
cleanup() {
  if [ -n "${MNT:-}" ] && grep -q " $MNT " /proc/mounts; then "$BIN/brick" umount "$MNT" || true; fi
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$RUN"
}
trap cleanup EXIT INT TERM

"$BIN/brickd" dev --dir "$RUN/dev" --replica 1 --listen "127.0.0.1:$PORT" \
  --nbd-listen 127.0.0.1:0 --nfs-listen 127.0.0.1:0 --smb-listen 127.0.0.1:0 \
  --cores "$CORES" "${CORE_CPUS[@]}" >"$RUN/brickd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do [ -f "$RUN/dev/endpoints.json" ] && break; sleep 0.1; done
[ -f "$RUN/dev/endpoints.json" ] || { echo "brickd did not start:" >&2; cat "$RUN/brickd.log" >&2; exit 1; }
export BRICK_ENDPOINTS="$RUN/dev/endpoints.json"
# The images, laid out in full (as fio lays out its local file).
truncate -s "$SIZE" "$RUN/zero.img"
"$BIN/brick" --quiet put "$RUN/zero.img" dev/vm.img >/dev/null
rm -f "$RUN/zero.img"
NBD_ADDR=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nbd"])' "$BRICK_ENDPOINTS")
URI="nbd://$NBD_ADDR/vm.img"
dd if=/dev/zero of="$RUN/qemu.img" bs=1M count=$((SIZE >> 20)) oflag=direct status=none
"${ON_SERVER[@]}" qemu-nbd -f raw --cache=none --aio=io_uring --persistent --shared=8 -b 127.0.0.1 \
  -p "$QEMU_NBD_PORT" -x vm.img "$RUN/qemu.img" >"$RUN/qemu-nbd.log" 2>&1 &
PIDS+=($!)
QEMU_URI="nbd://127.0.0.1:$QEMU_NBD_PORT/vm.img"
for _ in $(seq 1 100); do nbdinfo "$QEMU_URI" >/dev/null 2>&1 && break; sleep 0.1; done
MNT="$RUN/mnt"
mkdir -p "$MNT"
MNT=$(cd "$MNT" && pwd -P)
"${ON_SERVER[@]}" "$BIN/brick" --quiet mount dev "$MNT" >"$RUN/mount.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q " $MNT " /proc/mounts && break; sleep 0.1; done
grep -q " $MNT " /proc/mounts || { echo "FUSE mount failed:" >&2; cat "$RUN/mount.log" >&2; exit 1; }

# Unmeasured warm-up: fio lays out the local and FUSE images (1 GiB each of writes), every
# path serves a few seconds of 4 KiB reads, then the writeback settles. Without it the first
# measured 4 KiB QD32 round of every path ran at a third to half of the later ones.
for target in "--filename=$RUN/local.img --ioengine=io_uring --direct=1" \
  "--ioengine=nbd --uri=$QEMU_URI" "--ioengine=nbd --uri=$URI" \
  "--filename=$MNT/fuse.img --ioengine=io_uring --direct=1"; do
  # shellcheck disable=SC2086
  "${ON_CLIENT[@]}" fio --name=warmup $target --size="$SIZE" --rw=randread --bs=4k --iodepth=32 \
    --time_based --runtime=3 --output-format=json >/dev/null 2>"$RUN/fio.err" || { cat "$RUN/fio.err" >&2; exit 1; }
done
sync
sleep 5

# name|fio options|queue depth
WORKLOADS=(
  "randread-4k-qd1|--rw=randread --bs=4k|1"
  "randread-4k-qd32|--rw=randread --bs=4k|32"
  "randwrite-4k-qd1|--rw=randwrite --bs=4k|1"
  "randwrite-4k-qd32|--rw=randwrite --bs=4k|32"
  "randrw70-4k-qd32|--rw=randrw --rwmixread=70 --bs=4k|32"
  "seqread-1m-qd8|--rw=read --bs=1m|8"
  "seqwrite-1m-qd8|--rw=write --bs=1m|8"
)

RESULTS="$RUN/results.jsonl"
: >"$RESULTS"
for w in "${WORKLOADS[@]}"; do
  IFS='|' read -r name opts qd <<<"$w"
  for round in $(seq 1 "$ROUNDS"); do
    # shellcheck disable=SC2086
    "${ON_CLIENT[@]}" fio --name=local --filename="$RUN/local.img" --size="$SIZE" $opts --iodepth="$qd" \
      --ioengine=io_uring --direct=1 --time_based --runtime="$SECONDS_PER_RUN" \
      --output-format=json >"$RUN/local.json" 2>"$RUN/fio.err" || { cat "$RUN/fio.err" >&2; exit 1; }
    # shellcheck disable=SC2086
    "${ON_CLIENT[@]}" fio --name=qemu-nbd --ioengine=nbd --uri="$QEMU_URI" --size="$SIZE" $opts --iodepth="$qd" \
      --time_based --runtime="$SECONDS_PER_RUN" \
      --output-format=json >"$RUN/qemu-nbd.json" 2>"$RUN/fio.err" || { cat "$RUN/fio.err" >&2; exit 1; }
    # shellcheck disable=SC2086
    "${ON_CLIENT[@]}" fio --name=nbd --ioengine=nbd --uri="$URI" --size="$SIZE" $opts --iodepth="$qd" \
      --time_based --runtime="$SECONDS_PER_RUN" \
      --output-format=json >"$RUN/nbd.json" 2>"$RUN/fio.err" || { cat "$RUN/fio.err" >&2; exit 1; }
    # shellcheck disable=SC2086
    "${ON_CLIENT[@]}" fio --name=fuse --filename="$MNT/fuse.img" --size="$SIZE" $opts --iodepth="$qd" \
      --ioengine=io_uring --direct=1 --time_based --runtime="$SECONDS_PER_RUN" \
      --output-format=json >"$RUN/fuse.json" 2>"$RUN/fio.err" || { cat "$RUN/fio.err" >&2; exit 1; }
    python3 - "$name" "$round" "$RUN/local.json" "$RUN/nbd.json" "$RUN/fuse.json" "$RUN/qemu-nbd.json" >>"$RESULTS" <<'EOF'
import json, sys
name, rnd, local_path, nbd_path, fuse_path, qemu_path = sys.argv[1], int(sys.argv[2]), *sys.argv[3:7]
def side(path):
    text = open(path).read()
    job = json.loads(text[text.index("{"):])["jobs"][0]
    iops = job["read"]["iops"] + job["write"]["iops"]
    mib = (job["read"]["bw"] + job["write"]["bw"]) / 1024
    p99 = max(job[d]["clat_ns"].get("percentile", {}).get("99.000000", 0) for d in ("read", "write")) / 1000
    return iops, mib, p99
li, lm, lp = side(local_path)
ni, nm, np = side(nbd_path)
fi, fm, fp = side(fuse_path)
qi, qm, qp = side(qemu_path)
print(json.dumps({"workload": name, "round": rnd, "local_iops": li, "local_mib_s": lm, "local_p99_us": lp,
                  "qemu_nbd_iops": qi, "qemu_nbd_mib_s": qm, "qemu_nbd_p99_us": qp,
                  "nbd_iops": ni, "nbd_mib_s": nm, "nbd_p99_us": np,
                  "fuse_iops": fi, "fuse_mib_s": fm, "fuse_p99_us": fp}))
EOF
    tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("  %-18s round %d: local %8.0f IOPS %7.0f MiB/s | qemu-nbd %8.0f IOPS %7.0f MiB/s | nbd %8.0f IOPS %7.0f MiB/s | fuse %8.0f IOPS %7.0f MiB/s" % (
    r["workload"], r["round"], r["local_iops"], r["local_mib_s"], r["qemu_nbd_iops"], r["qemu_nbd_mib_s"],
    r["nbd_iops"], r["nbd_mib_s"], r["fuse_iops"], r["fuse_mib_s"]), file=sys.stderr)'
  done
done

# Small files: the same Python steps on the FUSE mount and on a local directory.
SMALL="$RUN/small.jsonl"
: >"$SMALL"
for side in local fuse; do
  if [ "$side" = local ]; then DIR="$RUN/small-local"; else DIR="$MNT/small"; fi
  python3 "$ROOT/bench/smallfiles.py" "$side" "$DIR" >>"$SMALL"
  tail -n 1 "$SMALL" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  small files on %s: %s" % (r["side"], ", ".join("%s %.2fs" % kv for kv in r["seconds"].items())), file=sys.stderr)'
done

python3 "$ROOT/bench/vm-report.py" "$RESULTS" "$SMALL" "$OUT" "$SIZE" "$SECONDS_PER_RUN" "$ROUNDS" "$CORES" "$CLIENT_CPUS"
