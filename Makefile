# `make demo` and `make test` create .venv when it is missing (scripts/setup.sh), then run.
PY := .venv/bin/python
DEMO_ARGS ?= --dataset synthetic --arch mmoe --balancing uncertainty --fusion weighted --world-size 2 --epochs 2 --output-dir runs/demo --overwrite

.PHONY: setup demo test lint movielens movielens-topn clean
setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/torchrec-fusion train $(DEMO_ARGS)

test: setup lint
	$(PY) -m pytest -q

# ruff (pyproject [tool.ruff]) and mypy --strict on the package (pyproject [tool.mypy])
lint: setup
	.venv/bin/ruff check torchrec_fusion benchmarks scripts examples tests
	.venv/bin/mypy

movielens: setup
	.venv/bin/torchrec-fusion train --config configs/movielens-100k.yaml --overwrite

# the top-N model (README "Recommendations"): about 14 minutes on 2 cores
movielens-topn: setup
	.venv/bin/torchrec-fusion train --config configs/movielens-100k-topn.yaml --overwrite

clean:
	rm -rf runs .pytest_cache

# Benchmark suite (docs/performance.md): tables printed, JSON in runs/bench/bench.json.
# BENCH_ARGS="--quick" for a tiny run, "--device cuda" on a CUDA host, "--out DIR" elsewhere.
.PHONY: bench
bench: setup
	$(PY) -m benchmarks.run $(BENCH_ARGS)
