# Everyday commands. The README's two commands are scripts/setup.sh (+ the main job) and scripts/test.sh.
PY ?= .venv/bin/python

setup:  ## venv + Vulkan driver (lavapipe) + realm_web[dev]
	./scripts/setup.sh
gen:    ## render shaders/*.wgsl.j2 into realm_web/wgsl/
	$(PY) -m codegen
test:   ## the whole suite, as CI runs it
	./scripts/test.sh
bench:  ## decode matvec GB/s per quant type vs copy bandwidth
	.venv/bin/realm-web bench --kernels
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

.PHONY: setup gen test bench lint
