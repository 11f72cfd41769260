# kfcn — developer and user entry points.  Everything runs inside .venv, created on demand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# GPU=1 (make install GPU=1): also install TensorFlow's CUDA libraries (the `gpu` extra), for
# Linux machines with an NVIDIA GPU; without them TensorFlow sees no GPU and runs on the CPU.
GPU    ?=
comma  := ,
# The tests also export and score ONNX files: the `onnx` extra comes with them.
EXTRAS := test$(comma)onnx$(if $(filter 1,$(GPU)),$(comma)gpu)
STAMP  := $(VENV)/.kfcn-installed$(if $(filter 1,$(GPU)),-gpu)
LINT   := src tests $(wildcard bench)

.PHONY: install test lint format demo bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

# The suite runs in TEST_WORKERS processes (pytest-xdist; an idle worker takes tests queued for a
# busy one) and prints the 15 slowest tests. TEST_WORKERS=0: one process. Each worker peaks near
# 5 GB of memory.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q --durations=15 $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist worksteal)

lint: install
	$(VENV)/bin/ruff check $(LINT)
	$(VENV)/bin/ruff format --check $(LINT)

format: install
	$(VENV)/bin/ruff format $(LINT)
	$(VENV)/bin/ruff check --fix $(LINT)

# The whole pipeline on the embedded synthetic dataset, on CPU, in about two minutes: the small
# network (model.widths: small) trained from scratch, see configs/demo.yaml.
# DEMO_EPOCHS gives each stage its epochs (most of the demo's learning happens in FCN-8s, whose
# stride-8 skip sees the shallow features); DEMO_SET adds --set overrides to every stage (the test
# suite uses it to shorten training). DEMO_DATA: the images are larger than `kfcn synthesize`'s
# default, so that objects span many stride-8 cells, and there are more of them to train on.
DEMO        ?= demo
DEMO_SET    ?=
DEMO_EPOCHS ?= fcn32:2 fcn16:2 fcn8:8
DEMO_DATA   ?= --size 160-240x200-320 --sbd-train 600
KFCN        := $(abspath $(VENV))/bin/kfcn
demo: install
	rm -rf $(DEMO)
	$(KFCN) synthesize --out $(DEMO)/raw $(DEMO_DATA)
	$(KFCN) prepare --sbd-dir $(DEMO)/raw/benchmark_RELEASE/dataset \
	    --voc-dir $(DEMO)/raw/VOCdevkit/VOC2012 --out $(DEMO)/records
	for spec in $(DEMO_EPOCHS); do \
	    $(KFCN) train --stage $${spec%%:*} --data-dir $(DEMO)/records --run-dir $(DEMO)/run \
	        --config configs/demo.yaml --set train.epochs=$${spec##*:} $(DEMO_SET) || exit 1; \
	done
	$(KFCN) evaluate --split val --data-dir $(DEMO)/records --model $(DEMO)/run \
	    --out $(DEMO)/evaluation/val.json --report $(DEMO)/report
	$(KFCN) predict $$(head -n 4 $(DEMO)/records/val.txt | \
	    sed 's|^\(.*\)$$|$(DEMO)/raw/benchmark_RELEASE/dataset/img/\1.jpg|') \
	    --model $(DEMO)/run --out $(DEMO)/predictions --overlay
	@echo
	@$(PY) -c 'import json, sys, pathlib; r = json.load(open(sys.argv[1])); \
	    stage = pathlib.Path(r["model"]).parent.name; \
	    print("%s mean IoU on the %d val images: %.2f %%" % (stage, r["num_images"], 100 * r["mean_iou"]))' \
	    $(DEMO)/evaluation/val.json
	@echo "demo finished:"
	@echo "  models        $(DEMO)/run/{fcn32,fcn16,fcn8}/final.keras"
	@echo "  evaluation    $(DEMO)/evaluation/val.json (+ val.png, the confusion matrix)"
	@echo "  report        $(DEMO)/report/index.html (open it in a browser)"
	@echo "  predictions   $(DEMO)/predictions/*.png (masks) and *_overlay.* (pictures)"

# Benchmarks: results to bench/results/<device>.json; pass flags with BENCH_ARGS="--full" etc.
bench: install
	$(PY) -m bench.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
