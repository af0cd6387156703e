# ckptkit: `make demo` and `make test` work on a fresh clone with nothing prepared.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
FIXTURE := fixtures/mobilenet_v2_tiny/model.ckpt
OUT    := out/demo
JOBS   ?= 2

.PHONY: setup demo test bench fixtures caffe-proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	@mkdir -p $(OUT)
	$(VENV)/bin/ckptkit inspect $(FIXTURE)
	$(VENV)/bin/ckptkit fold $(FIXTURE) -o $(OUT)/folded.ckpt
	$(VENV)/bin/ckptkit to-onnx $(FIXTURE) -o $(OUT)/model.onnx
	$(VENV)/bin/ckptkit to-keras $(FIXTURE) -o $(OUT)/model.keras
	$(VENV)/bin/ckptkit to-caffe $(FIXTURE) -o $(OUT)/model --bn keep

test: setup
	$(PY) -m pytest -n $(JOBS) tests

bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/run.py

fixtures: setup
	$(PY) fixtures/make_fixtures.py

# Regenerate converters/caffe_pb2.py from converters/caffe.proto (protoc from grpcio-tools, in a
# throwaway venv so the project's protobuf is not touched).
caffe-proto:
	$(PYTHON) -m venv build/protoc-venv
	build/protoc-venv/bin/pip install -q grpcio-tools
	build/protoc-venv/bin/python -m grpc_tools.protoc -I converters --python_out=converters converters/caffe.proto

clean:
	rm -rf out .pytest_cache
