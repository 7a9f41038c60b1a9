# Shared by the gateway benches (nfs.sh, smb.sh): a scratch directory per run, processes
# stopped by PID on exit, a `brickd dev` to serve from, timed runs. Source it after
# setting ROOT and SCRATCH; call bench_start NAME first.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Commands run at exit before the processes are stopped (an anchor's own cleanup).
EXIT_HOOKS=()
PIDS=()

stop_pid() { # pid: SIGTERM (after SIGCONT, in case a run froze it), up to 10 s to exit, then SIGKILL
  kill -CONT "$1" 2>/dev/null || true
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}

bench_exit() {
  for hook in "${EXIT_HOOKS[@]}"; do eval "$hook" || true; done
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  for hook in "${AFTER_STOP_HOOKS[@]}"; do eval "$hook" || true; done
  rm -rf "$RUN"
}
AFTER_STOP_HOOKS=()

bench_start() { # name: sets RUN (the run's scratch directory) and the exit trap
  RUN="$SCRATCH/$1-$$"
  mkdir -p "$RUN"
  RUN=$(cd "$RUN" && pwd -P)
  trap bench_exit EXIT INT TERM
}

need_tools() { # hint tool...: exits unless every tool is on PATH
  local hint=$1; shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed ($hint)" >&2; exit 2; }
  done
}

wait_for_line() { # file needle what: waits up to 10 s for needle in file
  for _ in $(seq 1 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "$3 did not start:" >&2; cat "$1" >&2; exit 1
}

start_dev() { # cores [replica]: brickd dev in $RUN/dev, gateways on free ports; exports BRICK_ENDPOINTS
  local port
  port=$(free_port)
  "$BIN/brickd" dev --dir "$RUN/dev" --replica "${2:-3}" --listen "127.0.0.1:$port" \
    --nbd-listen 127.0.0.1:0 --nfs-listen 127.0.0.1:0 --smb-listen 127.0.0.1:0 \
    --cores "$1" >"$RUN/brickd.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 300); do [ -f "$RUN/dev/endpoints.json" ] && break; sleep 0.1; done
  [ -f "$RUN/dev/endpoints.json" ] || { echo "brickd did not start:" >&2; cat "$RUN/brickd.log" >&2; exit 1; }
  export BRICK_ENDPOINTS="$RUN/dev/endpoints.json"
}

timed() { # name system bytes command...: appends "name system MB/s" to $RESULTS
  local name=$1 system=$2 bytes=$3; shift 3
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null
  end=$(date +%s.%N)
  python3 -c "s=float('$end')-float('$start'); print('$name $system %.1f' % ($bytes/s/1e6))" | tee -a "$RESULTS"
}
