# ckptkit: `make demo` and `make test` work on a fresh clone with nothing prepared.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
FIXTURE := fixtures/mobilenet_v2_tiny/model.ckpt
DIGITS := fixtures/digits
BROKEN := $(DIGITS)/broken
CK     := $(VENV)/bin/ckptkit
OUT    := out/demo
JOBS   ?= 2

.PHONY: setup demo test test-fast bench fixtures caffe-proto clean

# The editable install is setuptools' "strict" mode: a tree of links to the sources, put on sys.path, holding
# exactly the packages pyproject.toml declares (`converters/` as `ckptkit.converters`, no top-level `converters`)
# and found before a namespace folder named ckptkit in the current folder. A new source file needs a new link:
# SOURCES lists them, and the install runs again when the list changes.
SOURCES := $(VENV)/.sources
$(shell mkdir -p $(VENV) && find ckptkit converters -name '*.py' | sort > $(SOURCES).now && \
        (cmp -s $(SOURCES).now $(SOURCES) || mv $(SOURCES).now $(SOURCES)); rm -f $(SOURCES).now)

# The packages go in with uv (from PyPI, 2 s): pip takes about 58 s, uv about 16 s, both writing the .pyc files
# (the environment sets PYTHONDONTWRITEBYTECODE: without them every process would compile TensorFlow's modules
# again, which made the suite half as fast again). Where uv cannot be had, pip does the same install.
INSTALL = if $(PY) -m pip install -q uv; then $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) $(1); \
          else $(PY) -m pip install -q $(1); fi

$(STAMP): pyproject.toml $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(call INSTALL,-e ".[test]" --config-settings editable_mode=strict)
	$(PY) -m compileall -q -j 0 build >/dev/null  # ckptkit's own .pyc, in the link tree (a changed source is read again)
	touch $(STAMP)

setup: $(STAMP)

# The main job on the bundled broken checkpoint (trained without running the BN update ops):
# inspect finds it, diagnose measures it on data, recalibrate fixes it, fold and the exports verify.
# inspect/diagnose exit 1 when they find a problem (exit 2 would be an error): `|| test $$? = 1`.
demo: setup
	@rm -rf $(OUT) && mkdir -p $(OUT)
	@echo "\n== 1. inspect: what does the checkpoint say about itself?"
	$(CK) inspect $(BROKEN) || test $$? = 1
	@echo "\n== 2. diagnose: stored statistics against data (writes nothing)"
	$(CK) diagnose $(BROKEN) --data $(DIGITS)/calibration --preprocess unit -q || test $$? = 1
	$(PY) fixtures/demo_accuracy.py $(BROKEN) $(DIGITS)/test
	@echo "\n== 3. recalibrate: recompute the statistics exactly from the data"
	$(CK) recalibrate $(BROKEN) --data $(DIGITS)/calibration --preprocess unit -o $(OUT)/recalibrated/model.ckpt -q --top 3
	$(PY) fixtures/demo_accuracy.py $(OUT)/recalibrated $(DIGITS)/test
	@echo "\n== 4. fold BatchNorm and export, each verified against TensorFlow"
	$(CK) fold $(OUT)/recalibrated -o $(OUT)/folded/model.ckpt
	$(CK) export $(OUT)/recalibrated --to onnx,keras,caffe -o $(OUT)/exported
	@echo "\n== 5. int8 LiteRT for a phone, calibrated on the same images (their preprocessing was recorded)"
	$(CK) to-tflite $(OUT)/recalibrated --quantize int8 --data $(DIGITS)/calibration -o $(OUT)/digits_int8.tflite
	$(PY) fixtures/demo_accuracy.py --tflite $(OUT)/digits_int8.tflite $(DIGITS)/test

# --durations: the slowest tests, for whoever next shortens the suite; --dist loadgroup: every test of one network of
# the matrix runs on one worker (it loads the network once), the groups and the `slow` tests first, so that the
# workers finish together (tests/conftest.py)
test: setup
	$(PY) -m pytest -n $(JOBS) --dist loadgroup --durations=25 tests

# the quick development tier (tests marked `fast` in tests/conftest.py): TF-free unit tests, every op in
# ONNX, one network per format; `make test` stays the full matrix CI runs
test-fast: setup
	$(PY) -m pytest -n $(JOBS) -m fast tests

bench: setup
	$(call INSTALL,-e ".[bench]" --config-settings editable_mode=strict)
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
