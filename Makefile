# voxserve. `make run` and `make test` are all a new machine needs: each
# installs what is missing (Go modules, ONNX Runtime from npm, tools from the
# Go module proxy, Python packages from PyPI into .venv) and is idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := build

GO        ?= go
DEPS      := .deps
GOBIN_DIR := $(CURDIR)/$(DEPS)/bin
ORT_LIB   := $(DEPS)/onnxruntime/libonnxruntime.so.1
DCIODVFY  := $(DEPS)/dicom3tools/usr/bin/dciodvfy
PERF_ANALYZER := $(DEPS)/perf_analyzer/perf_analyzer
CUDA_DIR  := $(DEPS)/cuda
NVCC      := $(CUDA_DIR)/bin/nvcc
# --fmad=false: a*b+c rounds twice, as in the Go reference, so that the
# kernels match it bit for bit where the operations are the same.
NVCC_FLAGS := -ptx --fmad=false -Ikernels/src
PTX_ARCHS := 90 75
CUDA_ENV  := CGO_CFLAGS="-I$(CURDIR)/$(CUDA_DIR)/include"
VENV      := .venv
PY        := $(VENV)/bin/python

STATICCHECK_VERSION   := v0.8.2
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GRPC_VERSION := v1.6.0

GRPC_ADDR ?= 127.0.0.1:8001
HTTP_ADDR ?= 127.0.0.1:8002
MODELS    ?= models
# Tests run with -race, except the phantom renderer: pure arithmetic whose
# workers write disjoint slices, minutes slower when instrumented.
TEST_FLAGS ?= -count=1 -timeout 20m
RACE       ?= -race
NORACE_PKGS := ./phantom/

export CGO_ENABLED := 1

.PHONY: models eval venv deps deps-go deps-dicom3tools deps-perf-analyzer gpu-test-binaries deps-cuda deps-gpu lint-docker kernels kernels-check build-cuda check-cuda build run test test-short lint fmt vet staticcheck proto proto-check \
        fuzz models-demo clean help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

deps: $(ORT_LIB) deps-go ## install what is missing: ONNX Runtime, Go modules

$(ORT_LIB): scripts/fetch-onnxruntime.sh
	@scripts/fetch-onnxruntime.sh $(DEPS)/onnxruntime
	@touch $@

deps-go:
	@$(GO) mod download

deps-dicom3tools: $(DCIODVFY) ## dciodvfy (Debian's dicom3tools) for validating our SR and SEG

$(DCIODVFY): scripts/fetch-dicom3tools.sh
	@scripts/fetch-dicom3tools.sh $(DEPS)/dicom3tools
	@touch $@

deps-perf-analyzer: $(PERF_ANALYZER) ## Triton's perf_analyzer (PyPI's tritonclient wheel + its two libraries)

$(PERF_ANALYZER): scripts/fetch-perf-analyzer.sh
	@scripts/fetch-perf-analyzer.sh $(DEPS)/perf_analyzer
	@touch $@

deps-cuda: $(NVCC) ## CUDA 13.0 nvcc and headers from PyPI, for the kernels and the cuda build

$(NVCC): scripts/fetch-cuda.sh scripts/requirements-cuda.txt
	@scripts/fetch-cuda.sh $(CUDA_DIR)
	@touch $@

kernels: $(NVCC) ## regenerate kernels/ptx from kernels/src with nvcc
	@for a in $(PTX_ARCHS); do \
	  $(NVCC) $(NVCC_FLAGS) -arch=compute_$$a -o kernels/ptx/voxkernels_sm$$a.ptx kernels/src/voxkernels.cu || exit 1; \
	done

kernels-check: $(NVCC) ## check that the committed PTX is what the sources compile to
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	for a in $(PTX_ARCHS); do \
	  $(NVCC) $(NVCC_FLAGS) -arch=compute_$$a -o $$tmp/voxkernels_sm$$a.ptx kernels/src/voxkernels.cu || exit 1; \
	  cmp -s $$tmp/voxkernels_sm$$a.ptx kernels/ptx/voxkernels_sm$$a.ptx || \
	    { echo "kernels/ptx/voxkernels_sm$$a.ptx is stale: run make kernels"; exit 1; }; \
	done; echo "kernels: PTX matches kernels/src"

deps-gpu: $(ORT_LIB) ## ONNX Runtime's CUDA provider from PyPI's onnxruntime-gpu wheel, beside the core library (about 250 MB)
	@scripts/fetch-onnxruntime-gpu.sh $(DEPS)/onnxruntime

lint-docker: $(VENV)/.ok ## hadolint (from PyPI) on Dockerfile.cuda
	$(VENV)/bin/hadolint Dockerfile.cuda

lint-scripts: $(VENV)/.ok ## shellcheck (from PyPI) on every shell script, the GPU session's included
	$(VENV)/bin/shellcheck -S warning scripts/*.sh scripts/lib/*.sh bench/*.sh .ci/run

build-cuda: deps $(NVCC) ## build the GPU binaries into bin/cuda/ (they run on the CPU where there is no GPU)
	$(CUDA_ENV) $(GO) build -tags cuda -o bin/cuda/ ./cmd/...

gpu-test-binaries: deps $(NVCC) ## the cuda-tagged test binaries a GPU machine runs (bin/gpu/kernels.test, bin/gpu/engine.test)
	$(CUDA_ENV) $(GO) test -c -tags cuda -o bin/gpu/kernels.test ./kernels/
	$(CUDA_ENV) $(GO) test -c -tags cuda -o bin/gpu/engine.test ./engine/

check-cuda: kernels-check ## what CI can check of the GPU path: PTX, cuda build, vet, tests (they skip with no device)
	$(CUDA_ENV) $(GO) build -tags cuda ./...
	$(CUDA_ENV) $(GO) vet -tags cuda ./...
	$(CUDA_ENV) $(GO) test -tags cuda -count=1 ./kernels/...

build: deps ## build bin/voxserve, bin/voxctl, bin/voxbench
	$(GO) build -o bin/ ./cmd/...

run: build ## build and serve the bundled models (CPU when there is no GPU)
	bin/voxserve --model-repository $(MODELS) --grpc-addr $(GRPC_ADDR) --http-addr $(HTTP_ADDR)

test: deps lint check-cuda lint-docker lint-scripts $(VENV)/.ok $(DCIODVFY) $(PERF_ANALYZER) ## the whole test suite
	VOXSERVE_REQUIRE_PYTHON=1 VOXSERVE_REQUIRE_NVCC=1 $(GO) test $(RACE) $(TEST_FLAGS) $$($(GO) list ./... | grep -v -e '/phantom$$')
	VOXSERVE_REQUIRE_PYTHON=1 VOXSERVE_REQUIRE_NVCC=1 $(GO) test $(TEST_FLAGS) $(NORACE_PKGS)

test-short: deps ## tests without -race and lint, for a quick loop
	$(GO) test -count=1 ./...

lint: fmt vet staticcheck ## gofmt, go vet, staticcheck

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.deps/*')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

$(GOBIN_DIR)/staticcheck:
	GOBIN=$(GOBIN_DIR) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

staticcheck: $(GOBIN_DIR)/staticcheck
	$(GOBIN_DIR)/staticcheck ./...

venv: $(VENV)/.ok ## the Python virtualenv (pydicom, numpy, grpcio-tools) for tests and scripts

$(VENV)/.ok: scripts/requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
	@touch $@

$(GOBIN_DIR)/protoc-gen-go:
	GOBIN=$(GOBIN_DIR) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(GOBIN_DIR)/protoc-gen-go-grpc:
	GOBIN=$(GOBIN_DIR) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GRPC_VERSION)

PROTOS := $(shell find proto -name '*.proto')

proto: $(VENV)/.ok $(GOBIN_DIR)/protoc-gen-go $(GOBIN_DIR)/protoc-gen-go-grpc ## regenerate Go code from proto/
	PATH=$(GOBIN_DIR):$$PATH $(PY) -m grpc_tools.protoc -I proto \
	  --go_out=. --go_opt=module=github.com/voxserve/voxserve \
	  --go-grpc_out=. --go-grpc_opt=module=github.com/voxserve/voxserve $(PROTOS)

proto-check: proto ## fail if the committed generated code is stale
	@git diff --exit-code -- proto || { echo "generated code in proto/ is stale: run make proto and commit"; exit 1; }

FUZZTIME ?= 30s
fuzz: deps ## run every fuzz target for FUZZTIME each
	@for p in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$p | grep '^Fuzz'); do \
	    echo "== $$p $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$p || exit 1; \
	  done; done

TRAIN_VENV := .venv-train

$(TRAIN_VENV)/.ok: scripts/requirements-train.txt
	python3 -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-train.txt
	@touch $@

models: build $(TRAIN_VENV)/.ok ## train the reference bundles from scratch on phantoms (CPU: about 20, 10 and 45 minutes; PyTorch is a 5 GB install)
	$(TRAIN_VENV)/bin/python scripts/train_ich.py --voxctl bin/voxctl --work data/ich --out models/ich/1/model.onnx
	$(TRAIN_VENV)/bin/python scripts/train_seg.py --task pneumothorax --voxctl bin/voxctl
	$(TRAIN_VENV)/bin/python scripts/train_seg.py --task psoas --voxctl bin/voxctl

EVAL_CASES ?= 100
eval: build ## evaluate the reference bundles on held-out phantoms; writes models/<name>/eval/ and the bundles' metrics
	scripts/eval.sh $(EVAL_CASES)

models-demo: ## regenerate the demo ONNX file and example input
	$(GO) run ./scripts/gen-demo-model $(MODELS)/hyperdensity/1/model.onnx examples/hyperdensity-phantom.npy

clean: ## remove build outputs (keeps .deps and .venv)
	rm -rf bin
