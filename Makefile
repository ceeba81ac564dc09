# msc-france: the two set-up commands are `make demo` and `make test` (see README.md).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STORE ?= data/demo.zarr
DEMO_PREVIEW ?= data/demo-preview
WORKERS ?= 2

.PHONY: install test demo pretrain baselines eval seeds bench bench-gpu clean-demo continual-s2 step-variants dihedral

# torch first, pinned to the CPU wheel, so that no extra resolves a CUDA build. The editable install
# maps catalogs/ and pipelines/ into the package; setuptools warns about that layout on every
# editable install (PYTHONWARNINGS silences that one warning; nothing of ours prints).
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet -e ".[train,dev]"
	touch $(STAMP)

install: $(STAMP)

# Lint (ruff: pyflakes, pycodestyle, isort, pyupgrade, bugbear, annotations, google docstrings),
# types (mypy), then the tests.
test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/msc-france build --region demo --recipe demo --out "$(DEMO_STORE)" --workers $(WORKERS)
	$(BIN)/msc-france validate "$(DEMO_STORE)"
	$(BIN)/msc-france info "$(DEMO_STORE)"
	$(BIN)/msc-france preview "$(DEMO_STORE)" --out "$(DEMO_PREVIEW)"

# X-STARS from scratch and its DINO-only baseline; then continual pretraining of the DINO model to
# aerial imagery (frozen Sentinel-2 anchor), with MSAD and without (its baseline). On the demo store.
pretrain: install
	@test -d "$(DEMO_STORE)" || { echo "error: $(DEMO_STORE) not found; run 'make demo' first"; exit 2; }
	$(BIN)/msc-france pretrain --config pipelines/pretrain-xstars.yaml --data "$(DEMO_STORE)" --quiet
	$(BIN)/msc-france pretrain --config pipelines/pretrain-dino.yaml --data "$(DEMO_STORE)" --quiet
	$(BIN)/msc-france pretrain --config pipelines/continual-xstars.yaml --data "$(DEMO_STORE)" --quiet
	$(BIN)/msc-france pretrain --config pipelines/continual-dino.yaml --data "$(DEMO_STORE)" --quiet

# The paper's continual scenario: DINO on Sentinel-2 only (the source never sees aerial), adapted
# to aerial with its frozen Sentinel-2 copy as anchor, with MSAD and without; then the same from the
# source exported in timm's layout (export-model, continual.init); evaluated on val and test.
continual-s2: install
	@test -d "$(DEMO_STORE)" || { echo "error: $(DEMO_STORE) not found; run 'make demo' first"; exit 2; }
	$(BIN)/msc-france pretrain --config pipelines/pretrain-s2-dino.yaml --data "$(DEMO_STORE)" --quiet
	$(BIN)/msc-france pretrain --config pipelines/continual-xstars.yaml --data "$(DEMO_STORE)" --out runs/continual-xstars-s2 --set continual.checkpoint=runs/s2-dino/checkpoints/last.pt --quiet
	$(BIN)/msc-france pretrain --config pipelines/continual-dino.yaml --data "$(DEMO_STORE)" --out runs/continual-dino-s2 --set continual.checkpoint=runs/s2-dino/checkpoints/last.pt --quiet
	$(BIN)/msc-france export-model runs/s2-dino --out runs/s2-dino-timm
	$(BIN)/msc-france pretrain --config pipelines/continual-xstars.yaml --data "$(DEMO_STORE)" --out runs/continual-xstars-timm --set continual.checkpoint=null --set continual.init.format=timm --set continual.init.path=runs/s2-dino-timm/model.safetensors --quiet
	$(BIN)/msc-france eval --config pipelines/eval-continual-s2.yaml --data "$(DEMO_STORE)"

# The global InfoNCE baseline: the X-STARS recipe with MSAD on one mean-pooled vector per image.
GLOBAL_INFONCE := --config pipelines/pretrain-xstars.yaml --set name=global-infonce --set msad.tokens=mean

# The trained baselines every claim must beat besides DINO only: a global InfoNCE model (MSAD on
# mean-pooled tokens only: does *dense* matter?) and the reference code's MSAD (its bugs fixed).
baselines: install
	@test -d "$(DEMO_STORE)" || { echo "error: $(DEMO_STORE) not found; run 'make demo' first"; exit 2; }
	$(BIN)/msc-france pretrain $(GLOBAL_INFONCE) --data "$(DEMO_STORE)" --out runs/global-infonce --quiet
	$(BIN)/msc-france pretrain --config pipelines/pretrain-reference.yaml --data "$(DEMO_STORE)" --quiet

# Evaluate the models of `make pretrain` (and of `make baselines`, when trained) against every
# baseline, on val and test separately; report in runs/eval/.
eval: install
	@test -f runs/xstars/checkpoints/last.pt || { echo "error: no pretrained model; run 'make pretrain' first"; exit 2; }
	$(BIN)/msc-france eval --config pipelines/eval.yaml --data "$(DEMO_STORE)"

# Seeds 1-4 of X-STARS, DINO-only and the global InfoNCE baseline (seed 0 is `make pretrain` and
# `make baselines`; each seed changes the initialisation and the batch order), evaluated together
# with five initialisations of the random ViTs: means with 95 % intervals, for the models and the
# baselines they must beat (runs/eval-seeds/report.md). About 40 minutes on 2 cores.
seeds: install
	@test -f runs/xstars/checkpoints/last.pt || { echo "error: no pretrained model; run 'make pretrain' first"; exit 2; }
	@test -f runs/global-infonce/checkpoints/last.pt || { echo "error: no global InfoNCE baseline; run 'make baselines' first"; exit 2; }
	for s in 1 2 3 4; do \
	  $(BIN)/msc-france pretrain --config pipelines/pretrain-xstars.yaml --data "$(DEMO_STORE)" --out runs/xstars-seed$$s --set run.seed=$$s --quiet && \
	  $(BIN)/msc-france pretrain --config pipelines/pretrain-dino.yaml --data "$(DEMO_STORE)" --out runs/dino-seed$$s --set run.seed=$$s --quiet && \
	  $(BIN)/msc-france pretrain $(GLOBAL_INFONCE) --data "$(DEMO_STORE)" --out runs/global-infonce-seed$$s --set run.seed=$$s --quiet || exit 1; \
	done
	$(BIN)/msc-france pretrain --config pipelines/pretrain-xstars.yaml --data "$(DEMO_STORE)" --out runs/xstars-seed0-rerun --quiet
	$(BIN)/msc-france eval --config pipelines/eval-seeds.yaml --data "$(DEMO_STORE)"

# Cheaper steps (msad.keep: a fraction of the MSAD views' tokens through the transformer) against
# the shipped step, seed 0, read on val only (runs/eval-step-variants/report.md). About 15 minutes.
step-variants: install
	@test -f runs/xstars/checkpoints/last.pt || { echo "error: no pretrained model; run 'make pretrain' first"; exit 2; }
	for k in 0.5 0.25; do \
	  $(BIN)/msc-france pretrain --config pipelines/pretrain-xstars.yaml --data "$(DEMO_STORE)" --out runs/xstars-keep$$k --set msad.keep=$$k --quiet || exit 1; \
	done
	$(BIN)/msc-france eval --config pipelines/eval-step-variants.yaml --data "$(DEMO_STORE)"

# Rotation in training, seed 0, read on val only (runs/eval-dihedral/report.md): quarter turns in
# the DINO views, and MSAD views turned per sensor with tokens aligned by ground. About 8 minutes.
dihedral: install
	@test -f runs/xstars/checkpoints/last.pt || { echo "error: no pretrained model; run 'make pretrain' first"; exit 2; }
	$(BIN)/msc-france pretrain --config pipelines/pretrain-xstars.yaml --data "$(DEMO_STORE)" --out runs/xstars-dihedral --set dino.dihedral=true --quiet
	$(BIN)/msc-france pretrain --config pipelines/pretrain-xstars.yaml --data "$(DEMO_STORE)" --out runs/xstars-msad-dihedral --set msad.dihedral=true --quiet
	$(BIN)/msc-france eval --config pipelines/eval-dihedral.yaml --data "$(DEMO_STORE)"

# Benchmarks against baselines (docs/benchmarks.md, benchmarks/results/latest.json); needs `make demo`.
bench: install
	@test -d "$(DEMO_STORE)" || { echo "error: $(DEMO_STORE) not found; run 'make demo' first"; exit 2; }
	$(BIN)/python -m benchmarks.run --store "$(DEMO_STORE)"

# The paper preset's step (ViT-tiny and ViT-small, 224 px, bf16) on one GPU: images/s and peak memory
# into docs/benchmarks.md's GPU rows. Never in CI; a machine without a GPU writes no row.
bench-gpu: install
	@test -d "$(DEMO_STORE)" || { echo "error: $(DEMO_STORE) not found; run 'make demo' first"; exit 2; }
	$(BIN)/python -m benchmarks.run --only gpu --store "$(DEMO_STORE)"

# The demo store, its previews and the generated demo world (per user, in the cache directory):
# each removed only when it is what msc-france made there (msc_france/cleanup.py).
clean-demo: install
	$(BIN)/python -m msc_france.cleanup --store "$(DEMO_STORE)" --preview "$(DEMO_PREVIEW)" --world
