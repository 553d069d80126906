#!/usr/bin/env bash
# compare-peers.sh: ringo's all-reduce (TCP, and shared memory) next to Gloo
# (torch.distributed), Open MPI (TCP, and shared memory when available) and
# the machine's own TCP ring ceiling, on one host. See docs/compare-peers.md.
#
#   scripts/compare-peers.sh [--install] [--np "2 4"] [--min-bytes 4K]
#       [--max-bytes 64M] [--iters 20] [--warmup 5] [--sockets K]
#       [--out bench-results] [--timeout 300] [--seconds 3] [--runs 1]
#       [--skip "gloo openmpi-shm ringo-shm ..."] [--python /usr/bin/python3]
set -euo pipefail

usage() {
	sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
	cat <<'EOF'

  --install      apt-get install the peers (python3-torch, openmpi-bin,
                 libopenmpi-dev) when missing; without it missing peers are
                 skipped with a note
  --np LIST      process counts, e.g. "2 4" (default "2 4")
  --min-bytes B  smallest message (4K, 1M, 4096 ...; default 4K)
  --max-bytes B  largest message (default 64M); sizes double from min to max
  --iters N      timed iterations per size (default 20)
  --warmup N     untimed iterations per size (default 5)
  --sockets K    TCP sockets per ring link, for ringo and ringceiling
                 (default: ringo bench's own default, else 2)
  --out DIR      raw JSON lines and logs (default bench-results)
  --timeout S    time limit for each single run in seconds (default 300)
  --seconds S    ringceiling measurement window (default 3)
  --runs N       run everything N times, one after another, into DIR/run-1
                 ... DIR/run-N, then print the medians over the runs and
                 each run's ringo/Open MPI time ratio (DIR/medians.md)
  --skip LIST    any of: ringceiling gloo openmpi openmpi-shm ringo ringo-shm
  --python PATH  Python with torch for Gloo (default /usr/bin/python3)
EOF
}

cd "$(dirname "$0")/.."

ARGS=("$@")
INSTALL=0
NPS="2 4"
MIN_BYTES=4K
MAX_BYTES=64M
ITERS=20
WARMUP=5
SOCKETS=
OUT=bench-results
TIMEOUT=300
SECONDS_CEIL=3
SKIP=
PY_TORCH=/usr/bin/python3
RUNS=1

while [[ $# -gt 0 ]]; do
	case "$1" in
	--install) INSTALL=1; shift ;;
	--np) NPS="$2"; shift 2 ;;
	--min-bytes) MIN_BYTES="$2"; shift 2 ;;
	--max-bytes) MAX_BYTES="$2"; shift 2 ;;
	--iters) ITERS="$2"; shift 2 ;;
	--warmup) WARMUP="$2"; shift 2 ;;
	--sockets) SOCKETS="$2"; shift 2 ;;
	--out) OUT="$2"; shift 2 ;;
	--timeout) TIMEOUT="$2"; shift 2 ;;
	--seconds) SECONDS_CEIL="$2"; shift 2 ;;
	--skip) SKIP="$2"; shift 2 ;;
	--python) PY_TORCH="$2"; shift 2 ;;
	--runs) RUNS="$2"; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "compare-peers: unknown option $1 (see --help)" >&2; exit 2 ;;
	esac
done

note() { echo "compare-peers: $*" >&2; }

# to_bytes 4K -> 4096 (K, M, G are powers of 1024; an optional trailing B or iB)
to_bytes() {
	local s="${1^^}" n mult=1
	s="${s%B}"
	s="${s%I}"
	case "$s" in
	*K) mult=1024; n="${s%K}" ;;
	*M) mult=$((1024 * 1024)); n="${s%M}" ;;
	*G) mult=$((1024 * 1024 * 1024)); n="${s%G}" ;;
	*) n="$s" ;;
	esac
	if ! [[ "$n" =~ ^[0-9]+$ ]]; then
		echo "compare-peers: bad size $1" >&2
		exit 2
	fi
	echo $((n * mult))
}
MIN_B=$(to_bytes "$MIN_BYTES")
MAX_B=$(to_bytes "$MAX_BYTES")
for v in "$ITERS" "$WARMUP" "$TIMEOUT" "$RUNS" $NPS; do
	[[ "$v" =~ ^[0-9]+$ ]] || { note "not a number: $v"; exit 2; }
done

skipped() { [[ " $SKIP " == *" $1 "* ]]; }

have_torch() { [[ -x "$PY_TORCH" ]] && "$PY_TORCH" -c 'import torch.distributed as d; assert d.is_gloo_available()' 2>/dev/null; }
have_mpi() { command -v mpicc >/dev/null && command -v mpirun >/dev/null; }

if [[ $INSTALL -eq 1 ]]; then
	pkgs=()
	have_torch || pkgs+=(python3-torch)
	have_mpi || pkgs+=(openmpi-bin libopenmpi-dev)
	if [[ ${#pkgs[@]} -gt 0 ]]; then
		sudo=()
		[[ $EUID -eq 0 ]] || sudo=(sudo)
		note "installing ${pkgs[*]}"
		"${sudo[@]}" apt-get update -q
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}"
	fi
fi

# Python for the (stdlib-only) table: Debian's if present, else any.
PY_TABLE=/usr/bin/python3
[[ -x "$PY_TABLE" ]] || PY_TABLE=$(command -v python3)

# --runs N: the whole comparison N times, then the medians over the runs.
if [[ $RUNS -gt 1 ]]; then
	mkdir -p "$OUT"
	dirs=()
	failed=()
	for k in $(seq "$RUNS"); do
		note "run $k of $RUNS"
		"$PWD/scripts/compare-peers.sh" "${ARGS[@]}" --runs 1 --out "$OUT/run-$k" || failed+=("$k")
		dirs+=("$OUT/run-$k")
	done
	"$PY_TABLE" scripts/peers/median_table.py "${dirs[@]}" | tee "$OUT/medians.md"
	rc=${PIPESTATUS[0]}
	if [[ ${#failed[@]} -gt 0 ]]; then
		note "run(s) ${failed[*]} failed: their logs are in $OUT/run-N/; the medians above leave out what they did not measure"
		exit 1
	fi
	exit "$rc"
fi

mkdir -p "$OUT" bin

# ---- build -------------------------------------------------------------
RINGO=0
if ! skipped ringo; then
	if go build -o bin/ringo ./cmd/ringo 2>"$OUT/build-ringo.log"; then
		RINGO=1
	else
		note "ringo: does not build (see $OUT/build-ringo.log), skipped"
	fi
fi
CEIL=0
if ! skipped ringceiling; then
	if go build -o bin/ringceiling ./scripts/ringceiling; then
		CEIL=1
	else
		note "ringceiling: does not build, skipped"
	fi
fi
GLOO=0
if ! skipped gloo; then
	if have_torch; then
		GLOO=1
	else
		note "gloo: no torch with Gloo in $PY_TORCH (try --install), skipped"
	fi
fi
MPI=0
MPI_SHM_BTL=
if ! skipped openmpi || ! skipped openmpi-shm; then
	if ! have_mpi; then
		note "openmpi: mpicc/mpirun not found (try --install), skipped"
	elif ! mpicc -O2 -o bin/mpi_allreduce scripts/peers/mpi_allreduce.c; then
		note "openmpi: mpi_allreduce.c does not build, skipped"
	else
		MPI=1
		# Open MPI 4 calls its shared-memory BTL vader, Open MPI 5 sm.
		btls=$(ompi_info 2>/dev/null | sed -n 's/^ *MCA btl: \([a-z0-9_]*\) .*/\1/p' || true)
		if grep -qx vader <<<"$btls"; then
			MPI_SHM_BTL=vader
		elif grep -qx sm <<<"$btls"; then
			MPI_SHM_BTL=sm
		elif ! skipped openmpi-shm; then
			note "openmpi-shm: no vader/sm BTL in this Open MPI, skipped"
		fi
	fi
fi

# Sockets per ring link: --sockets, or ringo's own default for NP workers
# on this machine (one per core a worker can call its own, 1 to 4; the
# same rule as tcp.SocketsFor), so that ringceiling measures the ring
# ringo actually builds.
sockets_for() {
	if [[ -n "$SOCKETS" ]]; then
		echo "$SOCKETS"
		return
	fi
	local k=$(($(nproc) / $1))
	((k < 1)) && k=1
	((k > 4)) && k=4
	echo "$k"
}

# busy_pct: percent of all CPUs busy over half a second (0 where /proc/stat
# is missing). Other work on the machine skews every number here.
busy_pct() {
	[[ -r /proc/stat ]] || { echo 0; return; }
	local a b
	read -r -a a < <(grep '^cpu ' /proc/stat)
	sleep 0.5
	read -r -a b < <(grep '^cpu ' /proc/stat)
	local i tot=0 idle
	for i in 1 2 3 4 5 6 7 8; do tot=$((tot + b[i] - a[i])); done
	idle=$((b[4] - a[4] + b[5] - a[5]))
	[[ $tot -gt 0 ]] || { echo 0; return; }
	echo $(((tot - idle) * 100 / tot))
}

# run NAME NP CMD...: one time-boxed run; JSON lines to $OUT/NAME-npNP.jsonl,
# stderr to the matching .log. A failure is noted, never fatal.
run() {
	local name=$1 np=$2
	shift 2
	local f="$OUT/$name-np$np"
	local busy
	busy=$(busy_pct)
	note "np=$np $name ..."
	if [[ $busy -gt 25 ]]; then
		note "np=$np $name: the machine is already ${busy}% busy; expect skewed numbers"
	fi
	local t0=$SECONDS rc=0
	timeout --kill-after=10 "$TIMEOUT" "$@" >"$f.jsonl" 2>"$f.log" || rc=$?
	if [[ $rc -ne 0 ]]; then
		if [[ $rc -eq 124 || $rc -eq 137 ]]; then
			note "np=$np $name: timed out after ${TIMEOUT}s (partial results kept; see $f.log)"
		else
			note "np=$np $name: failed with status $rc (see $f.log)"
		fi
		tail -n 3 "$f.log" | sed 's/^/    /' >&2 || true
	fi
	note "np=$np $name done in $((SECONDS - t0))s, $(grep -c '^{' "$f.jsonl" || true) lines"
}

# as_peer NAME FILE: relabel ringo bench rows as rows of peer NAME, so that
# compare_table.py keeps its ringo column for the TCP transport.
as_peer() {
	[[ -s "$2" ]] || return 0
	"$PY_TABLE" - "$1" "$2" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
out = []
for line in open(path):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if isinstance(r, dict) and "op" in r:
        r["peer"] = name
        r["ringo_op"] = r.pop("op")
        out.append(json.dumps(r))
open(path, "w").write("".join(l + "\n" for l in out))
PY
}

# shm_tables DIR: one table per np of ringo's shared-memory transport next
# to its TCP transport and Open MPI's shared memory.
shm_tables() {
	"$PY_TABLE" - "$1" <<'PY'
import glob, json, os, sys
rows = {}
for path in glob.glob(os.path.join(sys.argv[1], "*.jsonl")):
    for line in open(path):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if not isinstance(r, dict) or "bytes" not in r or "np" not in r:
            continue
        who = r.get("peer") or ("ringo" if r.get("op") == "allreduce" else None)
        if who in ("ringo", "ringo-shm", "openmpi-shm"):
            rows[(who, int(r["np"]), int(r["bytes"]))] = r
def get(who, n, b, k):
    r = rows.get((who, n, b))
    return None if r is None else float(r[k])
def f(x, fmt="%.3f"):
    return "-" if x is None else fmt % x
def q(a, b):
    return "-" if a is None or not b else "%.2f" % (a / b)
def human(b):
    for u, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if b >= m and b % m == 0:
            return "%d%s" % (b // m, u)
    return str(b)
for n in sorted({k[1] for k in rows if k[0] == "ringo-shm"}):
    sizes = sorted({k[2] for k in rows if k[0] == "ringo-shm" and k[1] == n})
    print("\n### shared memory, np = %d\n" % n)
    head = ["bytes", "shm time_us", "shm busbw", "ringo tcp busbw", "openmpi-shm busbw",
            "openmpi-shm time_us", "shm/tcp", "shm/ompi-shm", "shm/ompi-shm time"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---:" for _ in head) + "|")
    for b in sizes:
        st, sb = get("ringo-shm", n, b, "time_us"), get("ringo-shm", n, b, "busbw_gbps")
        tb = get("ringo", n, b, "busbw_gbps")
        ob, ot = get("openmpi-shm", n, b, "busbw_gbps"), get("openmpi-shm", n, b, "time_us")
        wrong = "!" if (rows.get(("ringo-shm", n, b)) or {}).get("wrong") else ""
        print("| " + " | ".join([human(b) + wrong, f(st, "%.1f"), f(sb), f(tb), f(ob), f(ot, "%.1f"),
                                  q(sb, tb), q(sb, ob), q(st, ot)]) + " |")
PY
}

SIZES=(--min-bytes "$MIN_B" --max-bytes "$MAX_B" --iters "$ITERS" --warmup "$WARMUP")
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --bind-to none)

for np in $NPS; do
	K=$(sockets_for "$np")
	rm -f "$OUT"/*-np"$np".jsonl "$OUT"/*-np"$np".log
	if [[ $CEIL -eq 1 ]]; then
		run ringceiling "$np" bin/ringceiling --np "$np" --sockets "$K" --seconds "$SECONDS_CEIL" --json
	fi
	if [[ $GLOO -eq 1 ]]; then
		run gloo "$np" "$PY_TORCH" scripts/peers/gloo_allreduce.py --np "$np" "${SIZES[@]}"
	fi
	if [[ $MPI -eq 1 ]] && ! skipped openmpi; then
		# ob1 + the TCP BTL on loopback (the default excludes 127.0.0.0/8,
		# and the UCX PML would ignore the BTL list altogether).
		run openmpi "$np" "${MPIRUN[@]}" -np "$np" --mca pml ob1 --mca btl tcp,self \
			--mca btl_tcp_if_include lo bin/mpi_allreduce "${SIZES[@]}" --peer openmpi
	fi
	if [[ $MPI -eq 1 && -n "$MPI_SHM_BTL" ]] && ! skipped openmpi-shm; then
		run openmpi-shm "$np" "${MPIRUN[@]}" -np "$np" --mca pml ob1 --mca btl "self,$MPI_SHM_BTL" \
			bin/mpi_allreduce "${SIZES[@]}" --peer openmpi-shm
	fi
	if [[ $RINGO -eq 1 ]]; then
		run ringo "$np" bin/ringo bench allreduce --np "$np" "${SIZES[@]}" \
			--dtype float32 --transport tcp --sockets "$K" --json
	fi
	if [[ $RINGO -eq 1 ]] && ! skipped ringo-shm; then
		run ringo-shm "$np" bin/ringo bench allreduce --np "$np" "${SIZES[@]}" \
			--dtype float32 --transport shm --json
		as_peer ringo-shm "$OUT/ringo-shm-np$np.jsonl"
	fi
done

"$PY_TABLE" scripts/peers/compare_table.py "$OUT" --np "$NPS" | tee "$OUT/tables.md" ||
	note "no tables (nothing ran to completion?)"
shm_tables "$OUT" | tee -a "$OUT/tables.md" || note "no shared-memory tables"
note "raw results and logs in $OUT/"
