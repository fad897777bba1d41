# cnn-deploy: `make demo` runs the main job on this machine, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
MODELS ?= alexnet resnet18 resnet50
WEIGHTS ?= random
URL    ?= grpc://127.0.0.1:8001
# What `make venv` installs: everything for one CPU machine, plus the test tools.
EXTRAS ?= export,serving,cpu,dev

.PHONY: help venv browser test test-slow lint demo export repo serve loadtest bench-export bench-serving bench-loadgen bench-int8 bench-images tune report compose-test drills bench-threads gpu-check benchmarks-doc clean

help:
	@echo "make demo          export $(MODELS) ($(WEIGHTS) weights), serve them with Triton on CPU, classify,"
	@echo "                   verify, load-test, stop (WEIGHTS=imagenet needs the network)"
	@echo "make test          set up $(VENV) and run the tests (not slow, gpu or docker), import contracts included"
	@echo "make test-slow     every architecture, long load tests"
	@echo "make lint          ruff and the import contracts (lint-imports)"
	@echo "make export        python -m export build MODELS, then python -m serving repo MODELS"
	@echo "make serve         python -m serving up (foreground, Ctrl-C stops)"
	@echo "make bench-export  PyTorch eager vs ONNX Runtime, JSON in reports/"
	@echo "make bench-serving Triton vs in-process ONNX Runtime on ResNet-50, JSON in reports/"
	@echo "make bench-loadgen our load generator vs perf_analyzer (fetched into build/cache), JSON+PNG in reports/"
	@echo "make bench-images  image input vs tensor input on ResNet-50, one server (exports it first)"
	@echo "make bench-int8    INT8 / fp32 on ResNet-50, in process and served (exports it with --int8 first)"
	@echo "make tune          the fastest ResNet-50 serving config under P99_MS (default 300), answers verified"
	@echo "make report        the lecture's costs beside measured serving costs for MODELS: HTML in reports/"
	@echo "make compose-test  the CPU compose deployment run for real: build, up, verify, load test, down"
	@echo "make bench-threads one and two models busy: ORT default, cores, share, turns, side by side"
	@echo "make drills        failure drills (replica killed, restarted, overload, 10-min soak): < 15 min"
	@echo "make gpu-check     every GPU check in one run, JSON in reports/ (exit 2 without a GPU)"
	@echo "make benchmarks-doc  docs/benchmarks.md from the JSON reports in docs/benchmarks/"

# gpu-check has its own venv: the `gpu` extra's onnxruntime-gpu installs the same `onnxruntime`
# module as the `cpu` extra's package, so the two must never share one. With no network on the GPU
# host, `python -m cnn_deploy gpu-check` in any Python with PyTorch still measures what is there.
GPU_VENV   ?= .venv-gpu
GPU_PY     := $(GPU_VENV)/bin/python
GPU_EXTRAS ?= export,serving,gpu

# $(call venv_rule,DIR,EXTRAS): a venv rebuilt from nothing when the project's dependency files change.
define venv_rule
$(1)/.installed: pyproject.toml constraints.txt
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet -c constraints.txt -e '.[$(2)]'
	touch $$@
endef
$(eval $(call venv_rule,$(VENV),$(EXTRAS)))
$(eval $(call venv_rule,$(GPU_VENV),$(GPU_EXTRAS)))

venv: $(VENV)/.installed

# The report's browser test renders the HTML in Debian's Chromium: installed here when missing
# (as root, which CI and these machines are); otherwise one line says how, and that test fails.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium (the report's browser test renders in it)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq chromium >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; \
	  else \
	    echo "note: no chromium and not root: run 'apt-get install chromium' or the browser test fails"; \
	  fi; }

test: venv browser
	$(PY) -m pytest -m "not slow and not gpu and not docker"

test-slow: venv
	$(PY) -m pytest -m "slow"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

demo: venv
	$(PY) -m cnn_deploy demo --models $(MODELS) --weights $(WEIGHTS)

export: venv
	$(PY) -m export build $(MODELS) --weights $(WEIGHTS)
	$(PY) -m serving repo $(MODELS)

repo: venv
	$(PY) -m serving repo $(MODELS)

serve: venv
	$(PY) -m serving up

loadtest: venv
	$(PY) -m clients loadtest --url $(URL) --model resnet50 --concurrency 1,2,4,8

bench-export: venv
	$(PY) -m export benchmark $(MODELS) vgg16 googlenet

bench-serving: venv
	$(PY) -m cnn_deploy bench-serving

bench-loadgen: venv
	$(PY) -m export build resnet18
	$(PY) -m cnn_deploy bench-loadgen

bench-int8: venv
	$(PY) -m export build resnet50 --int8
	$(PY) -m serving repo resnet50
	$(PY) -m cnn_deploy bench-int8 --model resnet50

report: venv
	$(PY) -m export build $(MODELS) --int8
	$(PY) -m cnn_deploy report $(MODELS)

bench-images: venv
	$(PY) -m export build resnet50
	$(PY) -m cnn_deploy bench-images --model resnet50

P99_MS ?= 300
tune: venv
	$(PY) -m export build resnet50 --int8
	$(PY) -m serving repo resnet50
	$(PY) -m serving tune resnet50 --p99-ms $(P99_MS)

bench-threads: venv
	$(PY) -m export build resnet18 alexnet
	$(PY) -m cnn_deploy bench-threads --models resnet18,alexnet

drills: venv
	$(PY) -m export build resnet18
	$(PY) -m cnn_deploy drills --model resnet18

compose-test: venv
	$(PY) -m export build $(MODELS)
	$(PY) -m serving repo $(MODELS)
	$(PY) -m cnn_deploy compose-test

gpu-check: $(GPU_VENV)/.installed
	$(GPU_PY) -m cnn_deploy gpu-check

benchmarks-doc: venv
	$(PY) -m cnn_deploy benchmarks-doc

clean:
	rm -rf build reports
