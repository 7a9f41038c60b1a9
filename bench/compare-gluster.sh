#!/usr/bin/env bash
# brickd beside GlusterFS 10 on this machine, measured the same way in one run (issue 8):
#
#   1. GlusterFS: a private glusterd on 127.0.0.1 (state under the run's scratch directory), a
#      replica-2 volume of two bricks on the filesystem our bricks use,
#      performance.strict-o-direct on, its FUSE mount (bench/gluster-lib.sh).
#   2. brickd: a real etcd and two `brickd serve` nodes on loopback, a replica-2 volume, the NBD
#      gateway and the FUSE mount.
#   3. fio on a 2 GiB image: 4 KiB random write and read at queue depth 1 and 32, 1 MiB
#      sequential write and read (queue depth 8), through GlusterFS's gfapi_async engine and
#      its FUSE mount, through our NBD export and FUSE mount, `brick bench` over the native
#      client, and fio's io_uring engine on a local file (the physical limit).
#   4. The small-file test on both FUSE mounts and the local filesystem (10,000 x 4 KiB in one
#      directory: create, list, stat, read, delete; caches dropped between phases).
#   5. The heal scenario on both: 4 KiB random writes at queue depth 4 capped at 1000 IOPS on
#      the image, every request's latency logged (fio, per-request log); one brick SIGKILLed
#      for 20 s, then brought back; bytes copied by the heal, time to healed, latency per
#      phase. Then the frozen-brick scenario: the same load, one brick SIGSTOPped for 30 s.
#   6. bench/results/<date>-<host>/: raw fio JSON, per-request latency logs (gzip), report.md
#      with tables, ratios and the brief's scoreboard, PNG charts (bench/compare-report.py).
#   7. Everything it started is stopped by PID at exit, also on Ctrl-C; GlusterFS's files
#      outside the scratch directory are collected into the results and removed.
#
#   bench/compare-gluster.sh [--size-mib N] [--seconds N] [--scratch DIR] [--results DIR] [--quick]
#
# --quick checks the script end to end in a few minutes (256 MiB image, 2 s runs, 5 s
# faults, results under target/); its numbers mean nothing.
#
# Runs as root (GlusterFS, FUSE, dropping caches). Installs what it lacks with apt-get.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=2048
SECONDS_PER_RUN=10
SCRATCH="$ROOT/target/bench-scratch"
RESULTS=""
BEFORE_S=10
OUTAGE_S=20
FREEZE_S=30
AFTER_S=10
LOAD_IOPS=1000
LOAD_QD=4
LOAD_WARMUP_S=3
HEAL_WAIT_S_MAX=600
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
    --scratch) SCRATCH=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    --quick)
      SIZE_MIB=256; SECONDS_PER_RUN=2; BEFORE_S=3; OUTAGE_S=5; FREEZE_S=5; AFTER_S=3
      RESULTS="$ROOT/target/compare-quick"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (GlusterFS, FUSE mounts, drop_caches)" >&2; exit 2; }
SIZE=$((SIZE_MIB << 20))
HOST_SHORT=$(hostname -s)
RESULTS=${RESULTS:-"$ROOT/bench/results/$(date -u +%F)-$HOST_SHORT"}
STARTED_S=$(date +%s)

# --- what the run needs ---------------------------------------------------------------------
MISSING=()
command -v glusterd >/dev/null || MISSING+=(glusterfs-server)
command -v fio >/dev/null || MISSING+=(fio)
command -v etcd >/dev/null || MISSING+=(etcd-server)
command -v curl >/dev/null || MISSING+=(curl)
# The charts need matplotlib: Debian's python3-matplotlib serves /usr/bin/python3, which may
# not be the first python3 on PATH (pyenv).
REPORT_PY=""
for py in python3 /usr/bin/python3; do
  if "$py" -c 'import matplotlib' 2>/dev/null; then REPORT_PY=$py; break; fi
done
[ -n "$REPORT_PY" ] || { MISSING+=(python3-matplotlib); REPORT_PY=/usr/bin/python3; }
if [ ${#MISSING[@]} -gt 0 ]; then
  echo "installing ${MISSING[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${MISSING[@]}" >/dev/null
fi
for engine in gfapi_async nbd io_uring; do
  fio --enghelp 2>/dev/null | grep -qw "$engine" || { echo "this fio has no $engine engine" >&2; exit 2; }
done

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
# shellcheck source=bench/gluster-lib.sh
. "$ROOT/bench/gluster-lib.sh"
GL_HOST=$(gl_host)
gl_options_in_effect() { gl_cli volume get "$1" all; }
# Index heal of what the self-heal daemon recorded (what an admin runs after a brick returns;
# the daemon would also start on its own when it sees the brick come up).
gl_trigger_heal() { gl_cli volume heal "$1" >/dev/null; }
BIN="$ROOT/target/release"
(cd "$ROOT" && cargo build --release -q -p brickd -p brick)

bench_start compare
mkdir -p "$RESULTS/fio" "$RESULTS/lat" "$RESULTS/logs"
RESULTS=$(cd "$RESULTS" && pwd -P)
say() { echo "[$(($(date +%s) - STARTED_S))s] $*" >&2; }
now_ms() { date +%s%3N; }
EXIT_HOOKS+=("our_umount" "gl_stop \"$RESULTS\"")
AFTER_STOP_HOOKS+=("collect_our_logs")

# --- brickd: etcd, two nodes, a replica-2 volume, NBD and FUSE --------------------------------
export BRICK_USER=admin BRICK_PASSWORD=compare-password
declare -A NODE_PID NODE_ADDR
start_node() { # name: starts (or restarts) `brickd serve` node NAME, waits until it serves
  local n=$1 before cpu
  mkdir -p "$RUN/$n"
  before=$(grep -c "serving on" "$RUN/$n/brickd.log" 2>/dev/null || true)
  # Node nK's core on CPU (K-1) mod nproc: brickd pins core 0 to CPU 0 by default, which would
  # put both nodes on one CPU.
  cpu=$(( (${n#n} - 1) % $(nproc) ))
  BRICKD_ADMIN_PASSWORD=$BRICK_PASSWORD "$BIN/brickd" serve --node "$n" --listen "${NODE_ADDR[$n]}" \
    --store "etcd://127.0.0.1:$ETCD_PORT" --cores 1 --cpus "$cpu" >>"$RUN/$n/brickd.log" 2>&1 &
  NODE_PID[$n]=$!
  PIDS+=($!)
  disown "$!" # killing it is part of the run: no "Killed" line from the shell
  for _ in $(seq 1 300); do
    [ "$(grep -c "serving on" "$RUN/$n/brickd.log" || true)" -gt "${before:-0}" ] && return 0
    kill -0 "${NODE_PID[$n]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "brickd node $n did not start:" >&2; tail -20 "$RUN/$n/brickd.log" >&2; exit 1
}
our_umount() {
  if [ -n "${BMNT:-}" ] && grep -q " $BMNT " /proc/mounts; then "$BIN/brick" umount "$BMNT" || true; fi
}
collect_our_logs() {
  for f in "$RUN"/n*/brickd.log "$RUN"/etcd.log "$RUN"/nbd.log "$RUN"/mount.log; do
    if [ -f "$f" ]; then cp "$f" "$RESULTS/logs/brick-$(basename "$(dirname "$f")")-$(basename "$f")"; fi
  done
}

start_brickd() {
  ETCD_PORT=$(free_port)
  local peer_port
  peer_port=$(free_port)
  etcd --name compare --data-dir "$RUN/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "compare=http://127.0.0.1:$peer_port" >"$RUN/etcd.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
  local addrs=()
  for n in n1 n2; do
    NODE_ADDR[$n]="127.0.0.1:$(free_port)"
    start_node "$n"
    addrs+=("${NODE_ADDR[$n]}")
  done
  BRICK_SERVERS=$(IFS=,; echo "${addrs[*]}")
  export BRICK_SERVERS
  "$BIN/brick" --quiet volume create cmp replica 2 "n1:$RUN/n1/cmp" "n2:$RUN/n2/cmp" >/dev/null
  "$BIN/brick" --quiet volume start cmp >/dev/null
  NBD_PORT=$(free_port)
  "$BIN/brick" --quiet nbd serve cmp --listen "127.0.0.1:$NBD_PORT" >"$RUN/nbd.log" 2>&1 &
  PIDS+=($!)
  wait_for_line "$RUN/nbd.log" "nbd serving" "the NBD gateway"
  BMNT="$RUN/brick-mnt"
  mkdir -p "$BMNT"
  "$BIN/brick" --quiet mount cmp "$BMNT" >"$RUN/mount.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do grep -q " $BMNT " /proc/mounts && break; sleep 0.1; done
  grep -q " $BMNT " /proc/mounts || { echo "brick mount failed:" >&2; cat "$RUN/mount.log" >&2; exit 1; }
}

start_gluster() {
  gl_start "$RUN/gluster"
  gl_create_volume cmp "$RUN/gluster/b1" "$RUN/gluster/b2"
  GMNT="$RUN/gluster-mnt"
  mkdir -p "$GMNT"
  gl_mount cmp "$GMNT"
}

say "starting GlusterFS (private glusterd on 127.0.0.1, bricks on $GL_HOST) and brickd (etcd + 2 nodes)"
start_gluster
start_brickd
gl_options_in_effect cmp >"$RESULTS/gluster-volume-options.txt" 2>&1 || true

# --- the image: laid out in full on both (1 MiB sequential O_DIRECT writes via FUSE) -----------
say "laying out the ${SIZE_MIB} MiB image on both volumes and locally"
# fio would lay a missing file out with the job's block size (slow at 4 KiB): do it once at 1 MiB.
for img in "$GMNT/vm.img" "$BMNT/vm.img" "$RUN/local.img"; do
  fio --name=layout --filename="$img" --size="$SIZE" --rw=write --bs=1m --iodepth=8 \
    --ioengine=io_uring --direct=1 --output-format=json >"$RUN/layout.json" 2>"$RUN/fio.err" \
    || { cat "$RUN/fio.err" >&2; exit 1; }
done

# --- fio matrix -------------------------------------------------------------------------------
# system|fio engine options (the image's path per system)
SYSTEMS=(
  "local|--ioengine=io_uring --direct=1 --filename=$RUN/local.img"
  "gluster-gfapi|--ioengine=gfapi_async --volume=cmp --brick=$GL_HOST --direct=1 --filename=vm.img"
  "gluster-fuse|--ioengine=io_uring --direct=1 --filename=$GMNT/vm.img"
  "brick-nbd|--ioengine=nbd --uri=nbd://127.0.0.1:$NBD_PORT/vm.img"
  "brick-fuse|--ioengine=io_uring --direct=1 --filename=$BMNT/vm.img"
  "brick-native|"
)
# name|fio options|queue depth|brick bench workload
WORKLOADS=(
  "randwrite-4k-qd1|--rw=randwrite --bs=4k|1|randwrite-4k"
  "randwrite-4k-qd32|--rw=randwrite --bs=4k|32|randwrite-4k"
  "randread-4k-qd1|--rw=randread --bs=4k|1|randread-4k"
  "randread-4k-qd32|--rw=randread --bs=4k|32|randread-4k"
  "seqwrite-1m-qd8|--rw=write --bs=1m|8|seqwrite-1m"
  "seqread-1m-qd8|--rw=read --bs=1m|8|seqread-1m"
)
run_one() { # workload-line system-line
  local name opts qd bw sys engine out
  IFS='|' read -r name opts qd bw <<<"$1"
  IFS='|' read -r sys engine <<<"$2"
  out="$RESULTS/fio/$name-$sys.json"
  if [ "$sys" = brick-native ]; then
    "$BIN/brick" --json bench --volume cmp --workload "$bw" --qd "$qd" --seconds "$SECONDS_PER_RUN" \
      --size "$SIZE" >"$out" 2>"$RUN/bench.err" || { cat "$RUN/bench.err" >&2; exit 1; }
  else
    # shellcheck disable=SC2086
    fio --name="$name" $engine --size="$SIZE" $opts --iodepth="$qd" --time_based \
      --runtime="$SECONDS_PER_RUN" --output-format=json >"$out" 2>"$RUN/fio.err" \
      || { echo "fio $name on $sys failed:" >&2; cat "$RUN/fio.err" >&2; exit 1; }
  fi
  python3 "$ROOT/bench/compare-report.py" --summary-line "$out" "$name" "$sys" >&2
}
say "fio matrix: ${#WORKLOADS[@]} workloads x ${#SYSTEMS[@]} systems, ${SECONDS_PER_RUN} s each"
i=0
for w in "${WORKLOADS[@]}"; do
  # Rotate the order per workload so no system always runs first after a write-heavy one.
  n=${#SYSTEMS[@]}
  for k in $(seq 0 $((n - 1))); do
    run_one "$w" "${SYSTEMS[$(((k + i) % n))]}"
  done
  i=$((i + 1))
done
rm -f "$RUN/local.img"

# --- small files --------------------------------------------------------------------------------
say "small files (10,000 x 4 KiB) on the local filesystem, GlusterFS FUSE and brickd FUSE"
: >"$RESULTS/smallfiles.jsonl"
python3 "$ROOT/bench/smallfiles.py" local "$RUN/small-local" >>"$RESULTS/smallfiles.jsonl"
python3 "$ROOT/bench/smallfiles.py" gluster-fuse "$GMNT/small" >>"$RESULTS/smallfiles.jsonl"
python3 "$ROOT/bench/smallfiles.py" brick-fuse "$BMNT/small" >>"$RESULTS/smallfiles.jsonl"
cat "$RESULTS/smallfiles.jsonl" >&2

# --- heal and frozen-brick scenarios ---------------------------------------------------------
# The load: fio at queue depth 4 paced to 1000 IOPS, every request's completion time (unix ms),
# latency and offset logged. GlusterFS through gfapi (how QEMU reached it), brickd through NBD.
load_engine() { # system
  case "$1" in
    gluster) echo "--ioengine=gfapi_async --volume=cmp --brick=$GL_HOST --direct=1 --filename=vm.img" ;;
    brick) echo "--ioengine=nbd --uri=nbd://127.0.0.1:$NBD_PORT/vm.img" ;;
  esac
}
start_load() { # system scenario: starts fio in the background, sets LOAD_PID
  # shellcheck disable=SC2046
  fio --name="$2-$1" $(load_engine "$1") --size="$SIZE" --rw=randwrite --bs=4k \
    --iodepth="$LOAD_QD" --rate_iops="$LOAD_IOPS" --time_based --runtime=1800 \
    --write_lat_log="$RUN/lat-$2-$1" --log_avg_msec=0 --log_unix_epoch=1 --log_offset=1 \
    --output-format=json >"$RESULTS/fio/$2-$1.json" 2>"$RUN/load-$2-$1.err" &
  LOAD_PID=$!
  PIDS+=($!)
}
stop_load() { # system scenario
  kill -INT "$LOAD_PID" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$LOAD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$LOAD_PID" 2>/dev/null || true
  wait "$LOAD_PID" 2>/dev/null || true
  local log
  log=$(ls "$RUN/lat-$2-$1"_lat.*.log 2>/dev/null | head -n 1)
  [ -n "$log" ] || { echo "fio wrote no latency log for $2 on $1:" >&2; cat "$RUN/load-$2-$1.err" >&2; exit 1; }
  gzip -c "$log" >"$RESULTS/lat/$2-$1.log.gz"
  rm -f "$RUN/lat-$2-$1"_*.log
}

# brickd: the node that is a secondary of the image's placement group.
our_victim() {
  local pg primary
  pg=$("$BIN/brick" --json stat cmp/vm.img | python3 -c 'import json,sys; print(json.load(sys.stdin)["pg"])')
  primary=$("$BIN/brick" --json volume info cmp |
    python3 -c "import json,sys; print(json.load(sys.stdin)['pgs'][$pg]['primary'].split(':')[0])")
  if [ "$primary" = n1 ]; then echo n2; else echo n1; fi
}
our_heal_state() { # prints "healed copied_total_bytes"
  "$BIN/brick" --json heal status cmp 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(int(bool(d["healed"])), d.get("copied_total_bytes", 0))' ||
    echo "0 -1"
}
# Waits until the system reports nothing left to heal; sets HEALED_MS (empty if it never did).
wait_healed() { # system
  HEALED_MS=""
  local deadline=$(($(date +%s) + HEAL_WAIT_S_MAX)) state
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if [ "$1" = gluster ]; then
      state=$(gl_heal_pending cmp)
      [ "$state" = 0 ] && { HEALED_MS=$(now_ms); return 0; }
    else
      state=$(our_heal_state)
      [ "${state%% *}" = 1 ] && { HEALED_MS=$(now_ms); return 0; }
    fi
    sleep 1
  done
  say "$1: not healed after ${HEAL_WAIT_S_MAX} s"
}

scenario() { # system kill|freeze
  local sys=$1 kind=$2 victim pid t0 t_before t_fault t_back copied_before copied_after state
  local io_before io_after
  say "$kind scenario on $sys"
  start_load "$sys" "$kind"
  t0=$(now_ms)
  sleep "$LOAD_WARMUP_S" # gfapi takes 1-2 s to fetch its volfile and connect
  t_before=$(now_ms)
  sleep "$BEFORE_S"
  if [ "$sys" = gluster ]; then
    victim="brick 2"
    pid=$(gl_brick_pid cmp 2)
  else
    victim=$(our_victim)
    pid=${NODE_PID[$victim]}
    copied_before=$(our_heal_state | cut -d' ' -f2)
  fi
  t_fault=$(now_ms)
  if [ "$kind" = kill ]; then
    kill -KILL "$pid"
    sleep "$OUTAGE_S"
    t_back=$(now_ms)
    if [ "$sys" = gluster ]; then
      gl_restart_bricks cmp
      gl_trigger_heal cmp || true
      # A new process: its wchar counts from its start, so the heal is counted from its first
      # byte (it starts before gl_restart_bricks returns). wchar, not write_bytes: the latter
      # counts whole 2 MiB page-cache blocks and over-counted scattered heals by up to 76%.
      io_before=0
    else
      start_node "$victim"
    fi
  else
    kill -STOP "$pid"
    sleep "$FREEZE_S"
    t_back=$(now_ms)
    if [ "$sys" = gluster ]; then io_before=$(gl_brick_io cmp 2 wchar); fi
    kill -CONT "$pid"
  fi
  wait_healed "$sys"
  if [ "$sys" = gluster ]; then
    io_after=$(gl_brick_io cmp 2 wchar)
    copied_after=""
  else
    state=$(our_heal_state)
    copied_after=${state#* }
  fi
  sleep "$AFTER_S"
  stop_load "$sys" "$kind"
  python3 - "$RESULTS/scenario-$kind-$sys.json" <<EOF
import json, sys
def num(v):
    return int(v) if v not in ("", None) else None
doc = {
    "system": "$sys", "scenario": "$kind", "victim": "$victim",
    "image_bytes": $SIZE, "iops_cap": $LOAD_IOPS, "qd": $LOAD_QD,
    "load_start_ms": $t0, "before_ms": $t_before, "fault_ms": $t_fault, "back_ms": $t_back,
    "healed_ms": num("$HEALED_MS"),
    "copied_bytes": (num("${copied_after:-}") - num("${copied_before:-}"))
        if num("${copied_after:-}") is not None and num("${copied_before:-}") is not None else None,
    "sink_brick_wchar_bytes": (num("${io_after:-}") - num("${io_before:-}"))
        if num("${io_after:-}") is not None and num("${io_before:-}") is not None else None,
    "latency_log": "lat/$kind-$sys.log.gz",
}
json.dump(doc, open(sys.argv[1], "w"), indent=1)
EOF
}
for sys in gluster brick; do scenario "$sys" kill; done
for sys in gluster brick; do scenario "$sys" freeze; done

# --- the report -------------------------------------------------------------------------------
say "writing the report"
"$REPORT_PY" "$ROOT/bench/compare-report.py" --results "$RESULTS" --host "$HOST_SHORT" \
  --size "$SIZE" --seconds "$SECONDS_PER_RUN" --wall-s $(($(date +%s) - STARTED_S))
say "done: $RESULTS/report.md"
