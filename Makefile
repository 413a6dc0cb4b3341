# The two commands of the README: `make demo` (install, pull the default model, run the main job)
# and `make test` (install if needed, run the test suite). CI runs `make test` through .ci/run.
MODEL ?= qwen2.5-coder:1.5b
PYTEST_ARGS ?=

.PHONY: demo test venv

venv:
	@bash scripts/bootstrap.sh

PLAYBOOK ?= playbooks/models/qwen2.5-coder-1.5b-mvp.playbook.yaml
# The demo's reports go under the (git-ignored) work root; certifications/ holds the pipeline's results.
DEMO_OUT ?= .apr-work/demo/qwen2.5-coder-1.5b

# The main job: the MVP certification of the default model (18 cells: 3 formats x cpu/gpu x
# run/chat/serve; GPU cells are recorded as skipped on a machine without CUDA).
demo: venv
	.venv/bin/apr pull $(MODEL)
	.venv/bin/apr run $(MODEL) --prompt "Write a Python function to add two numbers."
	.venv/bin/apr certify $(PLAYBOOK) --output $(DEMO_OUT)

test: venv
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest $(PYTEST_ARGS)
