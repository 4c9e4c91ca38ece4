# Two commands set everything up on a fresh machine:
#   make demo   create .venv, install, run the main job
#   make test   create .venv if needed, lint (ruff), run the tests
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install model heldout-report clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,redrock]'
	$(PY) -m pip install -q --no-deps moons1d==1.0.3
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mtopnet demo --out demo-output

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q -m "not slow"

# The shipped MOONS LR model, from nothing (docs/model.md): simulate the training and validation
# stores from the training prior with randomised observing conditions (seeds 1001, 1002), make a
# second validation set with another simulator (benchmarks/cross_sim.py: Bagpipes' own
# model_galaxy through the consortium's moons1d; seed 6001), train (stage 1); fine-tune on
# the stage-1 stores plus 40,000 more from the training prior (seed 1004) and 60,000 from the
# survey population with randomised conditions (seed 1003) (stage 2); fine-tune again with
# 200,000 more from the training prior (seeds 1005, 1006) (stage 3); calibrate the template
# scan, p_dz01, QOP and the intervals on both validation sets, and copy the checkpoint into the
# package. Never the test seeds (2024, 3001, 7001-7004, 424242).
MODEL_DIR := runs/moons-lr
PRIOR := --population training --nuisance randomised --hmag-range 20 25.5 --z-range 0.6 3.0
# $(call SIMULATE_PRIOR,N,SEED): N spectra of the training prior into the target
SIMULATE_PRIOR = mkdir -p data && nice -n 10 $(VENV)/bin/mtopnet simulate --instrument moons-lr --exposure 8h $(PRIOR) --n $(1) --seed $(2) --out $@ --workers 2
# Order within `make model`, whose recipe sets these (order-only prerequisites; empty when a
# store is made on its own): the later stages' stores and the calibration set wait for the
# first two stores, and the calibration set for stage 2. Otherwise make's traversal gives a job
# slot that a finished job frees to the next store rather than to the stage that can start
# (measured: stage 1 waited for two more stores, and stage 2 5 min for the calibration set).
AFTER_FIRST_STORES ?=
AFTER_STAGE2 ?=
data/train.h5: | $(STAMP)
	$(call SIMULATE_PRIOR,100000,1001)

data/val.h5: | $(STAMP)
	$(call SIMULATE_PRIOR,10000,1002)

data/train2.h5: | $(STAMP) $(AFTER_FIRST_STORES)
	$(call SIMULATE_PRIOR,40000,1004)

data/train3.h5: | $(STAMP) $(AFTER_FIRST_STORES)
	$(call SIMULATE_PRIOR,100000,1005)

data/train4.h5: | $(STAMP) $(AFTER_FIRST_STORES)
	$(call SIMULATE_PRIOR,100000,1006)

data/train-survey.h5: | $(STAMP) $(AFTER_FIRST_STORES)
	mkdir -p data
	nice -n 10 $(VENV)/bin/mtopnet simulate --instrument moons-lr --exposure 8h --population survey --nuisance randomised --n 60000 --seed 1003 --out $@ --workers 2

data/calib-xsim.h5: | $(STAMP) $(AFTER_FIRST_STORES) $(AFTER_STAGE2)
	mkdir -p data
	nice -n 10 $(PY) benchmarks/cross_sim.py --n 1000 --seed 6001 --out data/calib-xsim --skip-predict --skip-redrock --store-out $@

TRAIN_ALL := data/train.h5 data/train2.h5 data/train3.h5 data/train4.h5 data/train-survey.h5
TRAIN_CFG := --val data/val.h5 --config configs/train-moons-lr.yaml
# a stage killed midway left DIR/last.pt: the re-run continues it (expanded when the recipe runs)
RESUME = $(if $(wildcard $(1)/last.pt),--resume)
# Two jobs at once (`make model` runs `make -j2` on the stages): training uses one core, so
# the stores a later stage needs are simulated on the other one (nice 10: the training keeps
# most of its core, -5% measured) while an earlier stage trains. The stores and the model are the same as in one job
# at a time; only the wall time differs (docs/model.md).
model: | $(STAMP)
	$(MAKE) -j2 AFTER_FIRST_STORES="data/train.h5 data/val.h5" AFTER_STAGE2=$(MODEL_DIR)-stage2/model.pt \
		$(MODEL_DIR)/model-calibrated.pt
	cp $(MODEL_DIR)/model-calibrated.pt src/mtopnet/models/moons-lr.pt

$(MODEL_DIR)-stage1/model.pt: data/train.h5 data/val.h5
	$(VENV)/bin/mtopnet train --train data/train.h5 $(TRAIN_CFG) --out $(MODEL_DIR)-stage1 $(call RESUME,$(MODEL_DIR)-stage1)

$(MODEL_DIR)-stage2/model.pt: $(MODEL_DIR)-stage1/model.pt data/train2.h5 data/train-survey.h5
	$(VENV)/bin/mtopnet train --train data/train.h5 data/train2.h5 data/train-survey.h5 $(TRAIN_CFG) --out $(MODEL_DIR)-stage2 --init $< $(call RESUME,$(MODEL_DIR)-stage2) --epochs 5 --lr 0.001

$(MODEL_DIR)/model.pt: $(MODEL_DIR)-stage2/model.pt $(TRAIN_ALL)
	$(VENV)/bin/mtopnet train --train $(TRAIN_ALL) $(TRAIN_CFG) --out $(MODEL_DIR) --init $< $(call RESUME,$(MODEL_DIR)) --epochs 3 --lr 0.001

$(MODEL_DIR)/model-calibrated.pt: $(MODEL_DIR)/model.pt data/val.h5 data/calib-xsim.h5
	$(VENV)/bin/mtopnet calibrate $< data/val.h5 data/calib-xsim.h5 --scan --scan-lines none --out $@

# The held-out test set (seed 2024, never used in training or calibration) and the
# report whose figures the README quotes.
data/heldout.h5: | $(STAMP)
	mkdir -p data
	$(VENV)/bin/mtopnet simulate --instrument moons-lr --exposure 8h --n 10000 --seed 2024 --out $@ --workers 2

heldout-report: data/heldout.h5
	mkdir -p runs/heldout
	$(VENV)/bin/mtopnet predict data/heldout.h5 --out runs/heldout/catalogue.fits --overwrite
	$(VENV)/bin/mtopnet evaluate runs/heldout/catalogue.fits --truth data/heldout.h5 --report runs/heldout/report

bench: $(STAMP)
	$(PY) benchmarks/simulate.py

clean:
	rm -rf $(VENV) demo-output
