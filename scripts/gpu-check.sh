#!/usr/bin/env bash
# gpu-check.sh: ringo's GPU data path on a machine with an NVIDIA GPU, in
# one run of under 10 minutes, for a machine that has no Go toolchain.
#
#   scripts/gpu-check.sh build [DIR]       # where Go is: binaries into DIR
#   scripts/gpu-check.sh run [DIR] [OUT]   # on the GPU machine, repo root
#
# build writes, gzipped, into DIR (default gpu-check, ignored by git):
# ringo, and the test binaries of device (NVML), device/cuda (the driver
# binding) and device/cuda/kernels (the PTX kernels). run then
#   1. lists the GPU with nvidia-smi and `ringo devices --json`, and scrapes
#      the GPU metrics of `ringo launch --metrics-addr`;
#   2. runs the GPU tests: the binding against the real driver, the kernels
#      of every op and dtype against the host reference at odd sizes, NVML
#      against the CUDA driver;
#   3. runs the benchmarks: kernels at 256 MiB beside a device-to-device
#      copy, pinned and pageable copies beside one plain copy, and one ring
#      step's reduction of 4 MiB on the GPU (copies included) beside the
#      host's;
#   4. sweeps all-reduce at --np 1, 2 and 4 (ranks share the GPU, each
#      process its own context) with `ringo bench --device cuda`, with
#      `ringo bench` on host memory, and with torch.distributed: NCCL (one
#      rank: NCCL refuses two on one GPU), Gloo on CUDA tensors and Gloo on
#      host tensors.
# OUT (default $OUT, else gpu-check-out) gets log.txt (everything),
# devices.json, nvidia-smi.csv, metrics.txt and bench.jsonl (one JSON row
# per size, "peer" naming who made it).
set -uo pipefail

cd "$(dirname "$0")/.."
cmd=${1:-}
DIR=${2:-gpu-check}

build() {
	mkdir -p "$DIR"
	set -e
	CGO_CFLAGS=-Wno-deprecated-declarations go build -trimpath -ldflags="-s -w" -o "$DIR/ringo" ./cmd/ringo
	CGO_ENABLED=0 go test -c -trimpath -ldflags="-s -w" -o "$DIR/cuda.test" ./device/cuda
	CGO_ENABLED=0 go test -c -trimpath -ldflags="-s -w" -o "$DIR/kernels.test" ./device/cuda/kernels
	CGO_CFLAGS=-Wno-deprecated-declarations go test -c -trimpath -ldflags="-s -w" -o "$DIR/device.test" ./device
	CGO_ENABLED=0 go test -c -trimpath -ldflags="-s -w" -o "$DIR/collective.test" ./collective
	# The NVML cross-check needs cgo; a cgo build of the binding's tests.
	CGO_CFLAGS=-Wno-deprecated-declarations go test -c -trimpath -ldflags="-s -w" -o "$DIR/cuda-nvml.test" ./device/cuda
	gzip -9f "$DIR"/ringo "$DIR"/*.test
	du -sh "$DIR"
}

run() {
	local out=${3:-${OUT:-gpu-check-out}}
	mkdir -p "$out"
	local log=$out/log.txt bin
	bin=$(mktemp -d)
	for f in "$DIR"/*.gz; do gunzip -c "$f" >"$bin/$(basename "$f" .gz)"; done
	chmod +x "$bin"/*
	local ringo=$bin/ringo root=$PWD
	export PYTHONUNBUFFERED=1
	step() { echo; echo "=== $* ($(date +%T))"; }
	{
		step "machine"
		nvidia-smi -L; nproc; uname -r
		nvidia-smi --query-gpu=name,uuid,memory.total,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,temperature.gpu,power.draw,power.limit,pcie.link.gen.max,pcie.link.width.max,compute_cap --format=csv | tee "$out/nvidia-smi.csv"
		step "ringo devices"
		timeout 30 "$ringo" devices
		timeout 30 "$ringo" devices --json >"$out/devices.json"; echo "rc $?"
		step "ringo launch: GPU metrics"
		timeout 30 "$ringo" launch --nproc-per-node gpu --metrics-addr 127.0.0.1:9466 -- sleep 8 &
		sleep 5
		python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9466/metrics").read().decode())' | grep '^ringo_gpu' | tee "$out/metrics.txt"
		wait
		step "GPU tests: binding, kernels, NVML"
		(cd device/cuda && timeout 120 "$bin/cuda.test" -test.v -test.run 'GPU|Fake')
		(cd device/cuda && timeout 60 "$bin/cuda-nvml.test" -test.v -test.run 'GPUMatchesNVML')
		(cd device/cuda/kernels && timeout 240 "$bin/kernels.test" -test.v -test.run 'GPU')
		(cd device && timeout 60 "$bin/device.test" -test.v -test.run 'DiscoverHere')
		step "benchmarks: kernels and copies"
		(cd device/cuda/kernels && timeout 120 "$bin/kernels.test" -test.run '^$' -test.bench 'GPUReduce$' -test.benchtime 3x)
		echo "-- one ring step's reduction of 4 MiB: on the GPU (copies in and out included), then on the host"
		(cd device/cuda/kernels && timeout 60 "$bin/kernels.test" -test.run '^$' -test.bench 'GPUReduceStep' -test.benchtime 200x -test.count 3)
		(cd collective && timeout 60 "$bin/collective.test" -test.run '^$' -test.bench 'Reduce$' -test.count 3)
		(cd device/cuda && timeout 120 "$bin/cuda.test" -test.run '^$' -test.bench GPUCopy -test.benchtime 10x)
		step "all-reduce sweeps, 1 MiB to 256 MiB"
		local sweep=(--min-bytes 1M --max-bytes 256M --factor 4 --iters 10 --warmup 3)
		: >"$out/bench.jsonl"
		for np in 1 2 4; do
			for dev in host cuda; do
				echo "-- ringo bench --device $dev --np $np"
				timeout 150 "$ringo" bench allreduce --device "$dev" --np "$np" "${sweep[@]}" --json |
					sed "s/^{/{\"peer\":\"ringo-$dev\",/" | tee -a "$out/bench.jsonl"
			done
			for peer in "gloo-cpu --backend gloo" "gloo-cuda --backend gloo --device cuda" "nccl --backend nccl"; do
				set -- $peer
				[[ $1 == nccl && $np -gt 1 ]] && continue
				echo "-- torch $1 --np $np"
				timeout 150 python3 "$root/scripts/peers/gloo_allreduce.py" --np "$np" --peer "$1" "${@:2}" \
					--min-bytes 1M --max-bytes 256M --iters 10 --warmup 3 2>&1 | grep -v '^\[' | tee -a "$out/bench.jsonl.tmp"
				grep '^{' "$out/bench.jsonl.tmp" >>"$out/bench.jsonl"; rm -f "$out/bench.jsonl.tmp"
			done
		done
		step "done"
	} 2>&1 | tee "$log"
	rm -rf "$bin"
}

case "$cmd" in
build) build ;;
run) run "$@" ;;
*) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
