# Two entry points for a fresh machine: `make demo` and `make test`. Each sets itself up.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test native lint clean check-aarch64

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -e '.[train,dev,serve]'
	# PyTriton pins numpy<2 for its backend stub only: install it without its dependencies and give the
	# stub its own numpy-1 environment (npgmf_edge/serve/stub_env.py says why).
	$(BIN)/pip install --no-deps 'nvidia-pytriton>=0.5'
	$(BIN)/python -m npgmf_edge.serve.stub_env
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/npgmf-edge demo --out demo_out

# libnpgmf (native/): Debian packages (installed when run as root), then the release, ASan + UBSan and TSan
# builds. A machine where it cannot be configured (exit 3: packages missing, not root) still runs the Python
# suite, whose native tests then skip with the reason; a compile error fails here.
native: $(STAMP)
	-native/setup_deps.sh
	NPGMF_PYTHON=$(abspath $(BIN)/python) native/build.sh || [ $$? -eq 3 ]

# PYTEST_ARGS narrows the run, e.g. `make test PYTEST_ARGS=tests/native` (the native build and its tests).
PYTEST_ARGS ?=
test: $(STAMP) native
	$(BIN)/ruff check npgmf_edge tests
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'pytest collected no tests' >&2; exit 1; fi; exit $$rc

# The bundle on emulated aarch64 CPUs (qemu-user; Debian arm64 Python, aarch64 wheels): self-test passes,
# verdicts as on x86. `make check-aarch64 BUNDLE=demo_out/bundle IMAGES=demo_out/data/breakfast_tray/test` (after `make demo`).
BUNDLE ?= demo_out/bundle
IMAGES ?= demo_out/data/breakfast_tray/test
check-aarch64: $(STAMP)
	PYTHON=$(BIN)/python scripts/check_aarch64.sh $(BUNDLE) $(IMAGES)

clean:
	rm -rf $(VENV) demo_out .pytest_cache native/build native/build-asan native/build-tsan native/build*.log
