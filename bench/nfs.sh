#!/usr/bin/env bash
# NFSv3 throughput of a 1 GiB file through our gateway (`brick nfs serve` on a replica-1
# volume of `brickd dev`) and through nfs-ganesha (Debian's nfs-ganesha, VFS backend,
# exporting a local directory on the same filesystem), in one run, interleaved per round:
# nfs-cp up, nfs-cp down (to a local file), nfs-cat down (to /dev/null, the steadiest
# figure). Medians over the rounds and our / ganesha ratios (>= 1: we are at least as fast).
#
#   bench/nfs.sh [--rounds N] [--size BYTES] [--cores N] [--scratch DIR] [--out FILE.json]
#
# Everything ganesha needs (configuration, recovery state, pid file, log) lives in the run's
# scratch directory; it needs rpcbind, which is started (and stopped) if none is running.
set -euo pipefail

ROUNDS=3
SIZE=$((1 << 30))
CORES=2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH="$ROOT/target/bench-scratch"
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --cores) CORES=$2; shift 2 ;;
    --scratch) SCRATCH=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
source "$ROOT/bench/lib.sh"
need_tools "apt-get install libnfs-utils nfs-ganesha nfs-ganesha-vfs rpcbind" \
  nfs-cp nfs-cat python3 ganesha.nfsd rpcbind
BIN="$ROOT/target/release"
OPS="$ROOT/brickd/cli/tests/nfs_ops.py"
(cd "$ROOT" && cargo build --release -p brickd -p brick)

bench_start nfs
GANESHA_RUN_DIR_EXISTED=$([ -d /var/run/ganesha ] && echo 1 || echo 0)
EXIT_HOOKS+=('[ -f "$RUN/ganesha/ganesha.pid" ] && PIDS+=("$(cat "$RUN/ganesha/ganesha.pid")")')
AFTER_STOP_HOOKS+=('[ "$GANESHA_RUN_DIR_EXISTED" = 1 ] || rm -rf /var/run/ganesha')

# --- brickd: a replica-1 volume (one copy, as the ganesha export) and two gateways --------
# "ours": `brick nfs serve`, its own process, reaching brickd over TCP; "hosted": the gateway
# brickd dev runs in its own process (its client reaches the cores in-process).
NFS_PORT=$(free_port)
start_dev "$CORES" 1
"$BIN/brick" nfs serve dev --listen "127.0.0.1:$NFS_PORT" >"$RUN/gateway.log" 2>&1 &
PIDS+=($!)
wait_for_line "$RUN/gateway.log" "nfs serving" "the gateway"
OURS="nfs://127.0.0.1/?version=3&nfsport=$NFS_PORT&mountport=$NFS_PORT"
ours_url() { echo "nfs://127.0.0.1/$1?version=3&nfsport=$NFS_PORT&mountport=$NFS_PORT"; }
HOSTED_PORT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nfs"].rsplit(":", 1)[1])' "$BRICK_ENDPOINTS")
HOSTED="nfs://127.0.0.1/?version=3&nfsport=$HOSTED_PORT&mountport=$HOSTED_PORT"
hosted_url() { echo "nfs://127.0.0.1/$1?version=3&nfsport=$HOSTED_PORT&mountport=$HOSTED_PORT"; }

# --- nfs-ganesha: VFS export of a local directory on the same filesystem ------------------
if ! pgrep -x rpcbind >/dev/null; then
  rpcbind -w
  PIDS+=("$(pgrep -x rpcbind | head -1)")
fi
G_NFS=$(free_port)
G_MNT=$(free_port)
while [ "$G_MNT" = "$G_NFS" ]; do G_MNT=$(free_port); done
G="$RUN/ganesha"
mkdir -p "$G/export" "$G/recovery"
cat >"$G/ganesha.conf" <<CONF
NFS_CORE_PARAM {
  NFS_Port = $G_NFS;
  MNT_Port = $G_MNT;
  Bind_addr = 127.0.0.1;
  Protocols = 3;
  Enable_NLM = false;
  Enable_RQUOTA = false;
  Enable_UDP = false;
}
NFSV4 { Graceless = true; RecoveryBackend = fs; RecoveryRoot = "$G/recovery"; }
EXPORT {
  Export_Id = 1;
  Path = "$G/export";
  Pseudo = /bench;
  Access_Type = RW;
  Squash = No_Root_Squash;
  Protocols = 3;
  Transports = TCP;
  SecType = sys;
  FSAL { Name = VFS; }
}
LOG { Default_Log_Level = WARN; }
CONF
ganesha.nfsd -f "$G/ganesha.conf" -L "$G/ganesha.log" -p "$G/ganesha.pid" -N NIV_WARN
for _ in $(seq 1 100); do nfs-ls "nfs://127.0.0.1$G/export?version=3&nfsport=$G_NFS&mountport=$G_MNT" >/dev/null 2>&1 && break; sleep 0.1; done
# NFSv3 clients mount the export's Path, not its Pseudo path.
ganesha_url() { echo "nfs://127.0.0.1$G/export$1?version=3&nfsport=$G_NFS&mountport=$G_MNT"; }
GANESHA=$(ganesha_url "")

# --- the runs -----------------------------------------------------------------------------
SRC="$RUN/src.bin"
head -c "$SIZE" /dev/urandom >"$SRC"
RESULTS="$RUN/results.txt"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for system in ours hosted ganesha; do
    case $system in
      ours) url=$(ours_url /bench.bin); base=$OURS ;;
      hosted) url=$(hosted_url /bench.bin); base=$HOSTED ;;
      ganesha) url=$(ganesha_url /bench.bin); base=$GANESHA ;;
    esac
    python3 "$OPS" "$base" unlink /bench.bin 2>/dev/null || true
    sync
    timed cp-up $system "$SIZE" nfs-cp "$SRC" "$url"
    rm -f "$RUN/down.bin"
    timed cp-down $system "$SIZE" nfs-cp "$url" "$RUN/down.bin"
    cmp -s "$SRC" "$RUN/down.bin" || { echo "$system: downloaded file differs" >&2; exit 1; }
    rm -f "$RUN/down.bin"
    timed cat-down $system "$SIZE" nfs-cat "$url"
  done
done

python3 - "$RESULTS" "$SIZE" "$ROUNDS" "${OUT:-$ROOT/bench/results/$(date +%Y-%m-%d)-nfs.json}" <<'PY'
import json, statistics, sys, time
path, size, rounds, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runs = {}
for line in open(path):
    name, system, mbps = line.split()
    runs.setdefault(name, {}).setdefault(system, []).append(float(mbps))
rows = []
print(f"\n{'workload':<10} {'ours MB/s':>10} {'hosted MB/s':>12} {'ganesha MB/s':>13} {'ratio':>6} "
      f"{'hosted ratio':>12}  (median of {rounds}, {size >> 20} MiB file)")
for name in ("cp-up", "cp-down", "cat-down"):
    ours = statistics.median(runs[name]["ours"])
    hosted = statistics.median(runs[name]["hosted"])
    gan = statistics.median(runs[name]["ganesha"])
    ratio, hosted_ratio = ours / gan, hosted / gan
    print(f"{name:<10} {ours:>10.0f} {hosted:>12.0f} {gan:>13.0f} {ratio:>6.2f} {hosted_ratio:>12.2f}")
    rows.append({"workload": name, "ours_mb_s": ours, "hosted_mb_s": hosted, "ganesha_mb_s": gan,
                 "ratio": ratio, "hosted_ratio": hosted_ratio, "ours_runs": runs[name]["ours"],
                 "hosted_runs": runs[name]["hosted"], "ganesha_runs": runs[name]["ganesha"]})
doc = {"bench": "nfs", "at_unix": int(time.time()), "file_bytes": size, "rounds": rounds,
       "ours": "brick nfs serve, replica-1 volume of brickd dev",
       "hosted": "the NFS gateway brickd dev hosts (in-process client), same volume",
       "anchor": "nfs-ganesha 4 VFS export on the same filesystem",
       "target": "nfs-cp up and down: ratio >= 1", "rows": rows}
json.dump(doc, open(out, "w"), indent=2)
print(f"wrote {out}")
PY
