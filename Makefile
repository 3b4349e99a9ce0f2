# The README's two commands are `make demo` and `make test`; both set up first (idempotent, cached).
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=
# The cached venv is shared by every checkout of this project; its editable install points at the
# checkout that last ran setup, so each target puts its own lib/ first (Spark's Python workers inherit it).
export PYTHONPATH := $(CURDIR)/lib$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: setup demo loop-demo test test-fast catalog-docs cluster-test bench-sessionize bench-ingest bench-train bench-model bench-score bench-scale bench-speed-quality bad-input chaos results results-quick clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

setup:  ## create/refresh the cached environment (venv, Delta jars, Horovod build)
	@bash scripts/setup.sh

demo: setup  ## run the whole pipeline on generated data (DATA=movielens for ml-latest-small)
	@$(PY) scripts/demo.py $(if $(DATA),--data $(DATA))

loop-demo: setup  ## replay 14 days of generated logs through the nightly and weekly workflows; last line JSON (ARGS=--fresh ...)
	@$(PY) scripts/loop_demo.py $(ARGS)

test: setup  ## the full test suite (real Spark, Delta, Petastorm, Horovod, MLflow); not the cluster test
	@$(PY) -m pytest -m "not cluster" $(PYTEST_ARGS)

test-fast: setup  ## the tests not marked slow
	@$(PY) -m pytest -m "not slow and not cluster" $(PYTEST_ARGS)

catalog-docs: setup  ## docs/tables.md and the DDL of deploy/sql/01_score_tables.sql from the table specs (lib/ebbtide/catalog.py; ARGS=--check)
	@$(PY) scripts/catalog_docs.py $(ARGS)

cluster-test: setup  ## the chain on a local standalone cluster (master + 2 workers), moto S3 (s3a) and an MLflow server; last line JSON (ARGS=--help)
	@bash scripts/setup.sh --s3a
	@$(PY) scripts/cluster.py $(ARGS)

bench-sessionize: setup  ## ebbtide's sessionize job against DuckDB on the same events
	@$(PY) bench/bench_sessionize.py

bench-ingest: setup  ## ebbtide ingest against a plain Spark CSV -> Delta append of the same files, 5 M rows (ARGS=--rows 400000 ...)
	@$(PY) bench/bench_ingest.py $(ARGS)

bench-train: setup  ## Petastorm-fed training loop against the bare model step
	@$(PY) bench/bench_train.py

bench-model: setup  ## EbbtideNet training step vs a plain cuDNN-style nn.LSTM step of the same shape
	@$(PY) bench/bench_model.py

bench-score: setup  ## Spark scoring against the bare matrix product + top-k
	@$(PY) bench/bench_score.py

bench-scale: setup  ## 30 days x 300 k events, the nightly workflow after each: does night 30 cost what night 1 does? (ARGS=--days 3 ...)
	@$(PY) bench/bench_scale.py $(ARGS)

bench-speed-quality: setup  ## ML-100k: ebbtide (conf/profiles/quick.yaml) with a tenth of GRU4Rec's training seconds against GRU4Rec trained to convergence (ARGS=--share 0.2 ...)
	@$(PY) bench/bench_speed_quality.py $(ARGS)

bad-input: setup  ## every kind of broken input in tests/data/bad_input through `ebbtide ingest`: nothing lost, no traceback (ARGS=--subprocess ...)
	@$(PY) bench/bad_input.py $(ARGS)

chaos: setup  ## kill -9 each job at seeded random moments, rerun, compare with an uninterrupted run (CHAOS_TRIALS, CHAOS_SEED, CHAOS_FULL, CHAOS_LANES)
	@$(PY) bench/chaos.py $(ARGS)

results: setup  ## docs/results.md + .json: ebbtide, its no-time ablation, baselines and RecBole (resumes; ARGS=--fresh)
	@$(PY) scripts/results.py $(ARGS)

results-quick: setup  ## 1 seed, ebbtide on a 3-minute budget (conf/profiles/quick.yaml), no RecBole runs (peers from docs/results.json): .ebbtide/results-quick.md
	@$(PY) scripts/results.py --quick $(ARGS)

clean:  ## remove local tables, checkpoints and MLflow runs (not the cached environment)
	rm -rf .ebbtide spark-warehouse metastore_db derby.log

.PHONY: package
package: setup  ## the wheel (conf inside) + venv-pack archive for spark-submit --archives (ARGS=--wheel-only ...)
	@bash scripts/package.sh $(ARGS)
