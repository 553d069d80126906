# ringo: `make demo` runs the main job, `make test` the whole suite.
GO        ?= go
BIN       := bin
# go-nvml (device discovery, later) needs cgo; its headers warn on newer gcc.
export CGO_CFLAGS := -Wno-deprecated-declarations
TESTFLAGS ?=

.PHONY: all build demo test vet bench-once fuzz clean

all: build

build:
	$(GO) build -o $(BIN)/ringo ./cmd/ringo

# Until the training example lands, the demo is the all-reduce benchmark
# on 4 local processes: every size is checked, so it also proves the
# installation works.
demo: build
	$(BIN)/ringo bench allreduce --np 4 --min-bytes 4K --max-bytes 64M --iters 10 --warmup 3

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
	$(GO) test -run='^$$' -fuzz=FuzzParseHeader -fuzztime=60s ./checkpoint/safetensors/
	$(GO) test -run='^$$' -fuzz=FuzzParseManifest -fuzztime=60s ./checkpoint/
	$(GO) test -run='^$$' -fuzz=FuzzOpen -fuzztime=60s ./dataloader/shard/
	$(GO) test -run='^$$' -fuzz=FuzzDecodeFields -fuzztime=60s ./dataloader/shard/
	$(GO) test -run='^$$' -fuzz=FuzzParseIndex -fuzztime=60s ./dataloader/

clean:
	rm -rf $(BIN)
