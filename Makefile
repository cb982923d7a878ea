# Two commands after `git clone`: `make demo` and `make test`. Each creates or reuses .venv.
# TORCH picks the torch build: the default is the CPU wheel this project's machines have on disk;
# on a CUDA box use e.g. `make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lab lint venv clean-venv tokenizers list run-next run-specific run-all results

# Experiments (tinylib.experiments): EXPERIMENTS picks the list, LOG_TO a tracker (tensorboard, trackio, wandb)
EXPERIMENTS ?= experiments/cpu_study.yaml
LOG_TO ?=
RUN_FLAGS = $(if $(LOG_TO),--log-to $(LOG_TO))

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m tinylib.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

lint: $(STAMP)
	$(BIN)/ruff check .

tokenizers: $(STAMP)
	$(BIN)/python scripts/train_tokenizers.py

list: $(STAMP)
	$(BIN)/python -m tinylib.experiments list $(EXPERIMENTS)

run-next: $(STAMP)
	$(BIN)/python -m tinylib.experiments run-next $(EXPERIMENTS) $(RUN_FLAGS)

run-specific: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make run-specific NAME=<experiment> (make list shows the names)"; exit 2; }
	$(BIN)/python -m tinylib.experiments run $(EXPERIMENTS) $(NAME) $(RUN_FLAGS)

run-all: $(STAMP)
	$(BIN)/python -m tinylib.experiments run-all $(EXPERIMENTS) $(RUN_FLAGS)

results: $(STAMP)
	$(BIN)/python -m tinylib.experiments results $(EXPERIMENTS)

clean-venv:
	rm -rf $(VENV)
