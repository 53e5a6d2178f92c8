# Two commands do all the set-up:   make repro   (run the pipeline, offline demo preset)
#                                   make test    (run the test suite)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# dvc.yaml's stage commands call `python`: the venv's must come first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: repro compare test train-demo rehearse readme lock clean-venv web-check serve plots

$(BIN)/.installed: requirements.lock requirements-vad.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements-vad.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# torch is only for (re)training the demo model and its tests; the pipeline never imports it.
$(BIN)/.torch: $(BIN)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	touch $@

repro: $(BIN)/.installed
	$(BIN)/dvc repro

# The heaviest comparisons as well (params.yaml compare): the long-form recordings and every comparison row,
# as a DVC experiment applied to the workspace (about 34 min forced on 2 cores, against ~10 for `make repro`).
# Off again: dvc exp run -S 'compare.longform=[]' -S 'compare.builds=[]' -S '~compare.rows' -S '+compare.rows={}'
ROWS = $(BIN)/python -c "from requant.variants import COMPARISON_ROWS, VARIANTS; \
	print(', '.join(f'{v}: {VARIANTS[v].folder}' for v in COMPARISON_ROWS))"
compare: $(BIN)/.installed
	$(BIN)/dvc exp run -S 'compare.longform=[all]' -S 'compare.builds=[all]' -S "++compare.rows={$$($(ROWS))}"

test: $(BIN)/.installed $(BIN)/.torch web/node_modules/.installed
	$(BIN)/python -m pytest

# onnxruntime-web and playwright-core for the browser test, from web/package-lock.json (no browser download:
# the test drives Debian's /usr/bin/chromium, or runs the page's code in Node when it is absent)
web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --ignore-scripts
	touch $@

# The page on this machine, cross-origin isolated (WASM threads): open the URL it prints (docs/browser.md)
serve: web/node_modules/.installed
	node web/serve.mjs models/release

# DVC's plots of two revisions overlaid, offline (vega from web/node_modules): make plots REVS="main exp-name"
REVS ?= HEAD
plots: $(BIN)/.installed web/node_modules/.installed
	$(BIN)/dvc plots diff $(REVS)

# Retrain the demo model from scratch on 2 CPU cores: about 3.5 min of synthesis, 98 min of training.
# The schedule runs over a fixed 9602 steps (what 98 min gave on an idle machine), not the wall clock.
train-demo: $(BIN)/.torch
	$(BIN)/python -m demo.train --out demo/model --minutes 600 --steps 9602 --n-per-lang 5000 --n-french 11000 --seed 0 --segment-long

# The parakeet preset end to end on the Parakeet-size random twin, offline, every stage under dvc repro: the
# default run, then the comparisons on top as `make compare` runs them (the last rehearsal, with everything:
# 4.5 h on 2 cores, 12.3 GB of RAM at most, 65 GB of disk under /tmp). The summary goes to
# metrics/rehearsal.json and docs/rehearsal.md. After a cut: python -m bench.rehearse --compare --resume.
rehearse: $(BIN)/.installed
	$(BIN)/python -m bench.rehearse --compare

# Paste the report stage's headline (reports/headline.md: a short table and the picks) into README.md;
# docs/results.md (every table) is written by the report stage itself. tests/test_docs.py checks they agree.
readme: $(BIN)/.installed
	$(BIN)/python -c "import re, pathlib; r = pathlib.Path('README.md'); t = r.read_text(); \
	new = pathlib.Path('reports/headline.md').read_text().strip(); \
	r.write_text(re.sub(r'(<!-- headline:start.*?-->\n).*?(<!-- headline:end -->)', lambda m: m[1] + new + '\n' + m[2], t, flags=re.S))"

lock:
	uv pip compile pyproject.toml --extra test --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes -o requirements.lock

clean-venv:
	rm -rf $(VENV)

# The browser at Parakeet scale (twin, ~35 min past the builds, 7 GB): headless Chromium runs every released
# encoder over 30 s at 1 and 2 threads, the int8 ones over 390 s, int8 local attention over 20 min, and the
# int8 profile; metrics/web_check.json and a table (generated into docs/results.md by the report stage).
web-check: $(BIN)/.installed web/node_modules/.installed
	$(BIN)/python -m bench.web_check --long-s 390 --local-s 1200
