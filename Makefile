# pds_nerfstudio: `make install` (idempotent), `make test`, `make demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo clean system-deps

install: $(STAMP)

# Re-installs only when the package metadata changes; seconds when already done.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from its own line, so pip resolves the rest against this build.
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[test,cluster]'
	@(ldconfig -p | grep -q libusb-1.0.so.0 && ldconfig -p | grep -q libcairo.so.2) || $(MAKE) --no-print-directory system-deps
	touch $(STAMP)

# open3d, which `ns-export` imports, links libusb-1.0; cairosvg, the real SVG renderer the SVG rasteriser's tests
# compare with, loads libcairo. Minimal Linux images lack both.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq libusb-1.0-0 libcairo2 >/dev/null; \
	else \
		echo "note: ns-export needs libusb-1.0 and the SVG tests need cairo: install your system's libusb-1.0-0 and libcairo2 packages"; \
	fi

# Two pytest workers, one torch thread each (tests/conftest.py); a file's tests share a worker, in order.
# Files are handed out longest first (conftest.LONGEST_FIRST), not by xdist's default of most tests first.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

demo: install
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) outputs demo_outputs
