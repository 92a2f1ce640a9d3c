# Everyday commands. The README's two commands are scripts/setup.sh (+ the main job) and scripts/test.sh.
PY ?= .venv/bin/python

setup:  ## venv + Vulkan driver (lavapipe) + Chromium + realm_web[dev] + npm's Pyodide + build/web/
	./scripts/setup.sh
web:    ## rebuild the browser bundle build/web/ (the realm_web wheel, after Python changes)
	$(PY) scripts/build_web.py
serve:  ## the demo page and the SDK on http://127.0.0.1:8000/
	.venv/bin/realm-web serve
gen:    ## render shaders/*.wgsl.j2 into realm_web/wgsl/
	$(PY) -m codegen
test:   ## the whole suite, as CI runs it
	./scripts/test.sh
bench:  ## realm_web vs llama.cpp (native) and wllama (browser) on ~125M/~1B models; kernel GB/s vs copy
	.venv/bin/realm-web bench --kernels
	$(PY) benchmarks/run.py
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

.PHONY: setup web serve gen test bench lint
