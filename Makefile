# `make demo` and `make test` create .venv when it is missing (scripts/setup.sh), then run.
PY := .venv/bin/python
DEMO_ARGS ?= --dataset synthetic --arch mmoe --balancing uncertainty --fusion weighted --world-size 2 --epochs 2 --output-dir runs/demo

.PHONY: setup demo test movielens clean
setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/torchrec-fusion train $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q

movielens: setup
	.venv/bin/torchrec-fusion train --dataset movielens --data-dir ../shared/data/ml-100k --world-size 2 --output-dir runs/ml-100k

clean:
	rm -rf runs .pytest_cache
