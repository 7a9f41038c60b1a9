# shellcheck shell=bash
# A private GlusterFS 10 replica-2 volume on this one machine, for side-by-side benchmarks
# against brickd. Source it from a bash script (it works under `set -euo pipefail`):
#
#   . bench/gluster-lib.sh
#   trap 'gl_stop "$RESULTS"' EXIT; trap 'exit 130' INT TERM
#   gl_start "$SCRATCH/gluster"
#   gl_create_volume gv "$SCRATCH/gluster/b1" "$SCRATCH/gluster/b2"
#   gl_mount gv "$SCRATCH/gluster/mnt"              # optional: only for tests through FUSE
#   gl_fio gv --name=w --filename=f --size=2g ...   # gfapi_async, no FUSE in the way
#   kill -KILL "$(gl_brick_pid gv 2)"; ...; gl_restart_bricks gv
#   until [ "$(gl_heal_pending gv)" = 0 ]; do sleep 1; done
#   gl_brick_io gv 2 wchar                          # bytes the healed brick wrote (see there)
#
# Functions (all gl_*; gl__* are internal):
#   gl_host                      hostname to name bricks by (must resolve to 127.0.0.0/8)
#   gl_cli ARGS...               the gluster CLI, aimed at our glusterd, with a timeout
#   gl_start SCRATCH             private glusterd whose state, sockets and logs live in SCRATCH
#   gl_create_volume NAME B1 B2  replica-2 volume, strict-o-direct on, started, bricks online
#   gl_mount NAME MOUNTPOINT     FUSE mount (glusterfs client), waits until it answers
#   gl_fio NAME FIO-ARGS...      fio with the gfapi_async engine against the volume
#   gl_brick_pid NAME N          PID of brick N's glusterfsd (1 or 2), from its pidfile
#   gl_restart_bricks NAME       `volume start force` until every brick is back online
#   gl_heal_pending NAME         entries still to heal (sum over bricks), -1 if unknown
#   gl_brick_io NAME N [FIELD]   a /proc/PID/io counter of brick N (default wchar)
#   gl_leftovers                 lists our gluster processes still running (empty = clean)
#   gl_stop RESULTS_DIR          unmount, stop+delete volumes, kill all our processes, collect
#                                logs into RESULTS_DIR/gluster-logs, remove what we left outside
#
# Why the care below:
# - GlusterFS refuses localhost/127.0.0.1 as a brick host, so bricks are named by the
#   machine's hostname, which must resolve to loopback (gl_host).
# - Clients (FUSE, gfapi/fio, glfsheal, the bricks themselves) fetch volfiles from TCP port
#   24007 and there is no way to tell fio's gfapi engine another port, so our glusterd must
#   own 127.0.0.1:24007; gl_start refuses to run if something already listens there.
# - A frozen (SIGSTOPped) brick makes `gluster volume status`, heal info, umount... block,
#   so every gluster command runs under `timeout`, and gl_stop resumes (SIGCONT) our
#   processes before anything else.
# - Despite the private working/run/logging directories, GlusterFS still writes outside:
#   brick and self-heal-daemon sockets in /var/run/gluster (path compiled in), an empty
#   /var/run/gluster/snaps, /var/lib/glusterd/{geo-replication/gsyncd_template.conf,ss_brick},
#   glfsheal's log /var/log/glusterfs/glfsheal-NAME.log (compiled in), and fio's gfapi
#   engine always logs to /tmp/fio_gfapi.log. gl_start lists what existed there before;
#   gl_stop moves the new files into RESULTS_DIR/gluster-logs/outside and deletes the rest.
# - On this VM PID 1 reaps orphans only ~1.2 s after they die, so a SIGKILLed brick stays a
#   zombie (and its stale pidfile points at it) for ~1 s, during which glusterd still thinks
#   it runs and `volume start force` does nothing: gl_restart_bricks retries until the brick
#   is really back, and "dead" below means gone or zombie.

GL_TIMEOUT=${GL_TIMEOUT:-30} # seconds for any one gluster command
GL_PORT=24007                 # see above: fixed by the clients, not by us
GL_SCRATCH=${GL_SCRATCH:-}    # set by gl_start (absolute, symlinks resolved)

# Places GlusterFS writes to whatever we configure (resolved with readlink -f at use:
# /var/run is a symlink to /run on Debian).
GL_OUTSIDE_DIRS=(/var/log/glusterfs /var/run/gluster /var/lib/glusterd)
GL_FIO_GFAPI_LOG=/tmp/fio_gfapi.log

gl__err() { echo "gluster-lib: $*" >&2; }

gl__need_scratch() {
  if [ -z "$GL_SCRATCH" ] || [ ! -d "$GL_SCRATCH/gl" ]; then gl__err "gl_start has not run"; return 1; fi
}

gl_host() {
  # The first IPv4 address is what glusterd itself resolves and compares against its own
  # interfaces to decide a brick is local.
  local h addr
  h=$(uname -n)
  addr=$(getent ahostsv4 "$h" | awk 'NR == 1 { print $1 }')
  case "$h" in
    localhost | localhost.*) gl__err "hostname is '$h': GlusterFS refuses it as a brick host; set a hostname that resolves to 127.x.y.z"; return 1 ;;
  esac
  case "$addr" in
    127.*) printf '%s\n' "$h" ;;
    *) gl__err "hostname '$h' resolves to '${addr:-nothing}', not a 127.0.0.0/8 address; bricks must be named by a hostname on loopback (add '127.0.1.1 $h' to /etc/hosts)"; return 1 ;;
  esac
}

gl_cli() {
  # --glusterd-sock reaches our glusterd's UNIX socket (the CLI otherwise talks to
  # /var/run/glusterd.socket); --log-file keeps cli.log out of /var/log/glusterfs;
  # --mode=script answers the "replica 2 is prone to split-brain, continue?" style prompts.
  gl__need_scratch || return 1
  timeout -k 5 "$GL_TIMEOUT" gluster --mode=script --glusterd-sock="$GL_SCRATCH/run/glusterd.socket" \
    --log-file="$GL_SCRATCH/log/cli.log" "$@"
}

# --- process bookkeeping ----------------------------------------------------------------

gl__alive() { # pid: running or stopped, not gone and not a zombie
  local st
  st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

gl__is_gluster() { # pid: its executable is a GlusterFS one (guards against recycled PIDs)
  local exe
  exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
  case "$exe" in */glusterfsd | */glusterfs | */glusterd | */glfsheal) return 0 ;; esac
  return 1
}

gl__record_pid() { echo "$1" >>"$GL_SCRATCH/gl/pids"; }

gl__our_pids() {
  # Every live GlusterFS process that is ours: PIDs we started, PIDs in pidfiles under
  # SCRATCH (glusterd's children: bricks, glustershd), and any GlusterFS process whose
  # command line names SCRATCH (a brick glusterd respawned, a glfsheal a timeout left). The
  # executable check keeps the caller's own shell (whose arguments may contain SCRATCH)
  # and unrelated reused PIDs out.
  local pid f
  {
    [ -f "$GL_SCRATCH/gl/pids" ] && cat "$GL_SCRATCH/gl/pids"
    cat "$GL_SCRATCH/glusterd.pid" 2>/dev/null; echo
    while IFS= read -r -d '' f; do cat "$f" 2>/dev/null; echo; done \
      < <(find "$GL_SCRATCH/run" -name '*.pid' -type f -print0 2>/dev/null)
    for f in /proc/[0-9]*/cmdline; do
      pid=${f#/proc/}; pid=${pid%/cmdline}
      gl__is_gluster "$pid" || continue
      tr '\0' '\n' <"$f" 2>/dev/null | grep -qF -- "$GL_SCRATCH/" && echo "$pid"
    done
  } | grep -E '^[0-9]+$' | sort -un | while read -r pid; do
    if gl__alive "$pid" && gl__is_gluster "$pid"; then echo "$pid"; fi
  done || true
  return 0
}

gl_leftovers() {
  # What gl_stop should have left: nothing. Prints "PID command" lines.
  [ -n "$GL_SCRATCH" ] && [ -d "$GL_SCRATCH/gl" ] || return 0
  local pid
  for pid in $(gl__our_pids); do
    echo "$pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-200)"
  done
}

gl__wait_dead() { # seconds pid...: 0 once all are gone or zombies
  local deadline=$((SECONDS + $1)) pid left
  shift
  while :; do
    left=0
    for pid in "$@"; do gl__alive "$pid" && left=1; done
    [ "$left" = 0 ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.1
  done
}

# --- outside-of-SCRATCH files -------------------------------------------------------------

gl__outside_list() { # every path GlusterFS may have created outside SCRATCH, resolved
  local d
  for d in "${GL_OUTSIDE_DIRS[@]}"; do
    d=$(readlink -f "$d" 2>/dev/null) || continue
    [ -d "$d" ] && find "$d" -mindepth 1 -print 2>/dev/null
  done
  [ -e "$GL_FIO_GFAPI_LOG" ] && echo "$GL_FIO_GFAPI_LOG"
  return 0
}

# --- lifecycle -----------------------------------------------------------------------------

gl_start() {
  local scratch=${1:?gl_start SCRATCH}
  local host pid i
  if ! command -v glusterd >/dev/null || ! command -v gluster >/dev/null; then
    gl__err "GlusterFS is not installed (apt-get install -y glusterfs-server)"; return 1
  fi
  host=$(gl_host) || return 1
  mkdir -p "$scratch"
  scratch=$(cd "$scratch" && pwd -P)
  if [ -n "$GL_SCRATCH" ] && [ -d "$GL_SCRATCH/gl" ] && [ -n "$(gl__our_pids)" ]; then
    gl__err "a private glusterd from $GL_SCRATCH is still running; gl_stop it first"; return 1
  fi
  if [ -n "$(GL_SCRATCH=$scratch gl__our_pids)" ]; then
    gl__err "GlusterFS processes of an earlier run in $scratch are still running; gl_stop it first"; return 1
  fi
  if ss -Htln "sport = :$GL_PORT" 2>/dev/null | grep -q .; then
    gl__err "port $GL_PORT is taken (a system glusterd?): the bricks, FUSE and fio's gfapi fetch volfiles from it, so the private glusterd needs it"
    return 1
  fi
  GL_SCRATCH=$scratch
  # Fresh state each time: glusterd restores whatever volumes its working directory holds
  # and respawns their bricks, which would mix runs.
  rm -rf "$GL_SCRATCH/glusterd" "$GL_SCRATCH/run" "$GL_SCRATCH/log" "$GL_SCRATCH/gl"
  mkdir -p "$GL_SCRATCH/glusterd" "$GL_SCRATCH/run" "$GL_SCRATCH/log" "$GL_SCRATCH/gl"
  gl__outside_list >"$GL_SCRATCH/gl/preexisting"
  : >"$GL_SCRATCH/gl/pids"
  : >"$GL_SCRATCH/gl/volumes"
  : >"$GL_SCRATCH/gl/mounts"

  # The stock /etc/glusterfs/glusterd.vol, plus: our own working directory (volume store,
  # UUID), run-directory (brick/shd pidfiles), logging-directory (glusterd spawns bricks and
  # glustershd with logs there; `cluster-test-mode` is its deprecated name) and CLI socket,
  # and listening on loopback only (bricks inherit the bind address too).
  cat >"$GL_SCRATCH/glusterd.vol" <<EOF
volume management
    type mgmt/glusterd
    option working-directory $GL_SCRATCH/glusterd
    option run-directory $GL_SCRATCH/run
    option logging-directory $GL_SCRATCH/log
    option glusterd-sockfile $GL_SCRATCH/run/glusterd.socket
    option transport-type socket
    option transport.socket.bind-address 127.0.0.1
    option transport.socket.listen-port $GL_PORT
    option transport.socket.keepalive-time 10
    option transport.socket.keepalive-interval 2
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
    option max-port 60999
end-volume
EOF
  # glusterd daemonizes once initialized (~2 s here) and writes the pidfile.
  timeout -k 5 "$GL_TIMEOUT" glusterd -f "$GL_SCRATCH/glusterd.vol" -p "$GL_SCRATCH/glusterd.pid" \
    -l "$GL_SCRATCH/log/glusterd.log" ||
    { gl__err "glusterd failed to start; see $GL_SCRATCH/log/glusterd.log"; tail -20 "$GL_SCRATCH/log/glusterd.log" >&2; return 1; }
  for i in $(seq 1 100); do [ -s "$GL_SCRATCH/glusterd.pid" ] && break; sleep 0.1; done
  pid=$(cat "$GL_SCRATCH/glusterd.pid" 2>/dev/null || true)
  [ -n "$pid" ] || { gl__err "glusterd wrote no pidfile"; return 1; }
  gl__record_pid "$pid"
  for i in $(seq 1 300); do
    gl_cli pool list >/dev/null 2>&1 && { gl__err "glusterd $pid up ($host, 127.0.0.1:$GL_PORT)"; return 0; }
    gl__alive "$pid" || break
    sleep 0.1
  done
  gl__err "glusterd does not answer; see $GL_SCRATCH/log/glusterd.log"
  return 1
}

gl__volume_status_xml() { gl_cli volume status "$1" --xml 2>/dev/null; }

gl__bricks_online() { # name: 0 when every brick (and the self-heal daemon) is online
  # Brick and "Self-heal Daemon" nodes all carry <status>1</status> when up; the status
  # call hangs if a brick is frozen, hence the timeout inside gl_cli.
  local xml
  xml=$(gl__volume_status_xml "$1") || return 1
  python3 - "$xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.fromstring(sys.argv[1])
nodes = root.findall('.//volStatus/volumes/volume/node')
ok = root.findtext('opRet') == '0' and nodes and all(n.findtext('status') == '1' for n in nodes)
sys.exit(0 if ok else 1)
EOF
}

gl_create_volume() {
  local name=${1:?gl_create_volume NAME BRICK1 BRICK2} b1=${2:?} b2=${3:?}
  local host i opt
  gl__need_scratch || return 1
  host=$(gl_host) || return 1
  mkdir -p "$b1" "$b2"
  b1=$(cd "$b1" && pwd -P)
  b2=$(cd "$b2" && pwd -P)
  # `force`: both bricks on one host (no redundancy across hosts) and on the root
  # filesystem; GlusterFS refuses either without it.
  gl_cli volume create "$name" replica 2 "$host:$b1" "$host:$b2" force >/dev/null ||
    { gl__err "volume create $name failed; see $GL_SCRATCH/log/cli.log and glusterd.log"; return 1; }
  echo "$name" >>"$GL_SCRATCH/gl/volumes"
  printf '%s\n%s\n' "$b1" "$b2" >"$GL_SCRATCH/gl/bricks-$name"
  # The one deviation from shipped defaults: O_DIRECT writes must reach the bricks instead of
  # being absorbed by the client's write-behind, as they are on brickd.
  gl_cli volume set "$name" performance.strict-o-direct on >/dev/null || return 1
  # Quorum: nothing to set. For replica 2, GlusterFS 10 leaves client quorum off
  # (cluster.quorum-type none), so writes go on with either brick down. ("auto" would keep
  # accepting writes only while the FIRST brick is up — still fine, as only brick 2 is ever
  # killed or frozen.) Server quorum is off and meaningless with one glusterd.
  # cluster.data-self-heal-algorithm defaults to unset: "diff" (compare checksums, copy only
  # differing chunks of 128 KiB x cluster.self-heal-window-size = 8, i.e. 1 MiB) when the sink
  # file exists and is non-empty, "full" copy otherwise. Left as shipped.
  gl_cli volume start "$name" >/dev/null || { gl__err "volume start $name failed"; return 1; }
  for i in $(seq 1 60); do gl__bricks_online "$name" && break; sleep 0.5; done
  gl__bricks_online "$name" || { gl__err "bricks of $name did not come online"; gl_cli volume status "$name" >&2; return 1; }
  for opt in cluster.quorum-type cluster.quorum-count cluster.server-quorum-type \
    cluster.data-self-heal-algorithm cluster.self-heal-window-size cluster.self-heal-daemon \
    cluster.heal-timeout network.ping-timeout performance.strict-o-direct; do
    gl_cli volume get "$name" "$opt" 2>/dev/null | awk -v v="$name" -v o="$opt" '$1 == o { $1 = $1; print "gluster " v ": " $0 }' >&2 || true
  done
  return 0
}

gl_mount() {
  local name=${1:?gl_mount NAME MOUNTPOINT} mnt=${2:?} pidfile pid i
  gl__need_scratch || return 1
  mkdir -p "$mnt"
  mnt=$(cd "$mnt" && pwd -P)
  i=$(wc -l <"$GL_SCRATCH/gl/mounts")
  pidfile="$GL_SCRATCH/run/fuse-$name-$i.pid"
  # What mount.glusterfs would run, minus its defaults for log file (/var/log/glusterfs)
  # and pidfile; the client daemonizes and mounts once it has the volfile.
  glusterfs --process-name fuse --volfile-server=127.0.0.1 --volfile-id="$name" \
    --log-file="$GL_SCRATCH/log/fuse-$name-$i.log" --pid-file="$pidfile" "$mnt" ||
    { gl__err "glusterfs client for $name failed"; return 1; }
  echo "$mnt" >>"$GL_SCRATCH/gl/mounts"
  for i in $(seq 1 300); do
    if [ -s "$pidfile" ] && awk -v m="$mnt" '$2 == m && $3 == "fuse.glusterfs" { f = 1 } END { exit !f }' /proc/mounts; then
      pid=$(cat "$pidfile")
      gl__record_pid "$pid"
      # The first operation waits for the client to connect to the bricks.
      timeout -k 5 "$GL_TIMEOUT" stat -f "$mnt" >/dev/null && return 0
      break
    fi
    sleep 0.1
  done
  gl__err "mount of $name on $mnt did not come up; see $GL_SCRATCH/log/fuse-$name-*.log"
  return 1
}

# fio against the volume through libgfapi, i.e. without FUSE, with the exact options the
# benchmarks use:
#   fio --ioengine=gfapi_async --volume=NAME --brick=HOST --direct=1 --filename=FILE ...
# --brick is the host to fetch the volfile from (port 24007), not a brick; FILE is a path
# inside the volume. --direct=1 opens with O_DIRECT, which strict-o-direct passes through
# to the bricks. fio prints "the async interface is still very experimental..." on stderr
# and appends gfapi's log to /tmp/fio_gfapi.log (gl_stop collects it). fio lays a file out
# with the job's own block size before a random job starts (slow at 4k): lay it out with a
# 1M sequential write first. Verified with fio 3.33:
#   4k randwrite:  --rw=randwrite --bs=4k --iodepth=32 --size=256m --runtime=10 --time_based
#   1M seq:        --rw=write|read --bs=1M --iodepth=8 --size=512m
#   latency log:   --rw=randwrite --bs=4k --iodepth=4 --rate_iops=1000 --write_lat_log=PREFIX
#                  --log_avg_msec=0 --log_unix_epoch=1  (PREFIX_lat.1.log: one line per
#                  request: unix ms, latency ns, ddir, bs, prio)
gl_fio() {
  local name=${1:?gl_fio NAME FIO-ARGS...} host
  shift
  host=$(gl_host) || return 1
  fio --ioengine=gfapi_async --volume="$name" --brick="$host" --direct=1 "$@"
}

gl__brick_path() { # name n
  local f="$GL_SCRATCH/gl/bricks-$1"
  if [ -f "$f" ]; then
    sed -n "${2}p" "$f"
  else # a volume this library did not create: ask glusterd (never contacts the bricks)
    gl_cli volume info "$1" --xml 2>/dev/null | python3 -c '
import sys, xml.etree.ElementTree as ET
b = ET.parse(sys.stdin).getroot().findall(".//volume/bricks/brick")
print(b[int(sys.argv[1]) - 1].findtext("name").split(":", 1)[1])' "$2"
  fi
}

gl_brick_pid() {
  # From the pidfile glusterd keeps under SCRATCH/run/vols/NAME, checked against the
  # process's --brick-name: no gluster command, so it cannot hang on a frozen brick. Fails
  # when the brick is not running (a stale pidfile of a killed brick is not an answer).
  local name=${1:?gl_brick_pid NAME N} n=${2:?} path f pid
  gl__need_scratch || return 1
  path=$(gl__brick_path "$name" "$n") || path=
  if [ -z "$path" ]; then gl__err "$name has no brick $n"; return 1; fi
  for f in "$GL_SCRATCH/run/vols/$name"/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null) || continue
    if [ -z "$pid" ] || ! gl__alive "$pid" || ! gl__is_gluster "$pid"; then continue; fi
    if tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$path"; then
      echo "$pid"
      return 0
    fi
  done
  gl__err "brick $n of $name ($path) is not running"
  return 1
}

gl_restart_bricks() {
  # `volume start NAME force` starts the bricks glusterd knows to be down. glusterd learns a
  # brick died from its socket closing, which here comes only when PID 1 has reaped the
  # zombie, and until then a start is a no-op: so repeat until every brick runs and is online.
  local name=${1:?gl_restart_bricks NAME} deadline=$((SECONDS + 2 * GL_TIMEOUT)) n up
  gl__need_scratch || return 1
  while [ "$SECONDS" -lt "$deadline" ]; do
    up=1
    for n in 1 2; do gl_brick_pid "$name" "$n" >/dev/null 2>&1 || up=0; done
    if [ "$up" = 1 ] && gl__bricks_online "$name"; then return 0; fi
    [ "$up" = 0 ] && gl_cli volume start "$name" force >/dev/null 2>&1
    sleep 0.5
  done
  gl__err "bricks of $name did not come back"
  gl_cli volume status "$name" >&2 || true
  return 1
}

gl_heal_pending() {
  # glfsheal is what `gluster volume heal NAME info` runs, but the CLI does not pass its
  # --glusterd-sock on, so glfsheal would ask /var/run/glusterd.socket: run it ourselves.
  # "info-summary" counts without listing every entry. Each call fetches the volfile and
  # logs a few KB to /var/log/glusterfs/glfsheal-NAME.log (compiled in); poll at ~1 s, not
  # faster. A brick that is down reports "-" and is left out of the sum (the other brick
  # still counts what it owes it); -1 when no brick answered or glfsheal failed or timed out.
  local name=${1:?gl_heal_pending NAME} xml
  if ! gl__need_scratch 2>/dev/null; then echo -1; return 0; fi
  xml=$(timeout -k 5 "$GL_TIMEOUT" "$(glusterfs --print-libexecdir)/glfsheal" "$name" info-summary --xml \
    glusterd-sock "$GL_SCRATCH/run/glusterd.socket" 2>/dev/null) || true
  python3 - "$xml" <<'EOF' || echo -1
import sys, xml.etree.ElementTree as ET
try:
    root = ET.fromstring(sys.argv[1])
except ET.ParseError:
    print(-1); sys.exit(0)
counts = [b.findtext('totalNumberOfEntries', '-') for b in root.findall('.//healInfo/bricks/brick')]
counts = [int(c) for c in counts if c.strip().isdigit()]
print(sum(counts) if counts else -1)
EOF
}

gl_brick_io() {
  # Bytes the brick process moved, from /proc/PID/io. For a heal read it on the restarted
  # brick once gl_heal_pending says 0, and take the value as is: the restarted brick is a
  # new process (~16 KB written at startup), and the heal is already under way when
  # gl_restart_bricks returns (160 MB copied by then in one test), so a "before" reading
  # would miss its start. Use wchar (bytes passed to write
  # syscalls): during a heal with no client I/O it equals the data the heal copied to this
  # brick plus ~0.2-1 MB of replies and log lines. Not write_bytes: the kernel counts it per
  # page-cache folio dirtied, and ext4 on this kernel (6.18) uses large folios, so a heal that
  # copies scattered 1 MiB chunks is counted up to 2x (40 chunks in 40 separate 2 MiB
  # regions: wchar 40.2 MiB, write_bytes 76 MiB; in 20 regions: both 40 MiB). For a heal
  # that rewrites the whole file the two agree. wchar also counts what the brick sends to
  # clients, so it only measures the heal while no client reads from that brick.
  local name=${1:?gl_brick_io NAME N [FIELD]} n=${2:?} field=${3:-wchar} pid
  pid=$(gl_brick_pid "$name" "$n") || return 1
  awk -v f="$field:" '$1 == f { print $2; found = 1 } END { exit !found }' "/proc/$pid/io"
}

gl_stop() {
  # Safe to call twice and from a trap: every step tolerates "already done", nothing here
  # exits early on an error, and the only state is files under SCRATCH.
  local results=${1:?gl_stop RESULTS_DIR} logs m v pid pids p rel dest
  [ -n "$GL_SCRATCH" ] && [ -d "$GL_SCRATCH/gl" ] || return 0
  logs="$results/gluster-logs"
  mkdir -p "$logs/outside" || true

  # A stopped process ignores SIGTERM until resumed, and a frozen brick hangs the CLI.
  pids=$(gl__our_pids)
  for pid in $pids; do kill -CONT "$pid" 2>/dev/null || true; done

  # Unmounting makes the FUSE client exit by itself; lazy as a fallback for a dead client.
  while IFS= read -r m; do
    [ -n "$m" ] || continue
    if awk -v m="$m" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; then
      timeout -k 5 "$GL_TIMEOUT" umount "$m" 2>/dev/null || timeout -k 5 10 umount -l "$m" 2>/dev/null ||
        gl__err "could not unmount $m"
    fi
  done <"$GL_SCRATCH/gl/mounts"

  if [ -s "$GL_SCRATCH/glusterd.pid" ] && gl__alive "$(cat "$GL_SCRATCH/glusterd.pid")"; then
    while IFS= read -r v; do
      [ -n "$v" ] || continue
      gl_cli volume stop "$v" force >/dev/null 2>&1 || gl__err "volume stop $v failed (killing its processes anyway)"
      gl_cli volume delete "$v" >/dev/null 2>&1 || gl__err "volume delete $v failed"
    done <"$GL_SCRATCH/gl/volumes"
    : >"$GL_SCRATCH/gl/volumes"
  fi

  # Whatever is left (all of it if glusterd was gone): TERM, then KILL after 5 s.
  pids=$(gl__our_pids)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086 # word splitting of the PID list is intended
    kill -TERM $pids 2>/dev/null || true
    # shellcheck disable=SC2086
    if ! gl__wait_dead 5 $pids; then
      for pid in $pids; do gl__alive "$pid" && kill -KILL "$pid" 2>/dev/null; done
      # shellcheck disable=SC2086
      gl__wait_dead 5 $pids || true
    fi
  fi
  # A client killed rather than unmounted leaves a dead mount ("Transport endpoint is not
  # connected") behind.
  while IFS= read -r m; do
    [ -n "$m" ] || continue
    awk -v m="$m" '$2 == m { f = 1 } END { exit !f }' /proc/mounts && { timeout -k 5 10 umount -l "$m" 2>/dev/null || true; }
  done <"$GL_SCRATCH/gl/mounts"

  # Logs: copies of everything under SCRATCH/log (glusterd, bricks, glustershd, FUSE, CLI),
  # and whatever GlusterFS or fio put outside moved in. Sockets and empty directories are
  # just removed. Files that existed before gl_start are left alone (fio_gfapi.log copied).
  cp -a "$GL_SCRATCH/log/." "$logs/" 2>/dev/null || true
  # Deepest first, so directories are empty by the time they come up.
  gl__outside_list | sort -r | while IFS= read -r p; do
    grep -qxF -- "$p" "$GL_SCRATCH/gl/preexisting" && continue
    if [ -f "$p" ] && [ ! -L "$p" ]; then
      rel=${p#/}
      dest="$logs/outside/${rel//\//_}"
      if [ -s "$p" ]; then mv -f -- "$p" "$dest" 2>/dev/null || rm -f -- "$p"; else rm -f -- "$p"; fi
    elif [ -d "$p" ] && [ ! -L "$p" ]; then
      rmdir -- "$p" 2>/dev/null || gl__err "left non-empty $p"
    else
      rm -f -- "$p" # sockets
    fi
  done || true
  if [ -f "$GL_FIO_GFAPI_LOG" ] && grep -qxF -- "$GL_FIO_GFAPI_LOG" "$GL_SCRATCH/gl/preexisting"; then
    cp -f -- "$GL_FIO_GFAPI_LOG" "$logs/outside/tmp_fio_gfapi.log" 2>/dev/null || true
  fi

  if [ -n "$(gl_leftovers)" ]; then
    gl__err "GlusterFS processes still running:"
    gl_leftovers >&2
    return 1
  fi
  return 0
}
