# The two commands of README.md: `make demo` and `make test`. Each bootstraps what it needs.
PY := .venv/bin/python

.PHONY: bootstrap demo demo-runtime test lint typecheck images

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	$(PY) -m lab.demo

# The same walk-through with the shipped images as real containers (podman); also DEMO_RUNTIME=podman make demo.
demo-runtime: bootstrap
	$(PY) -m lab.demo --runtime podman

lint: bootstrap
	$(PY) -m ruff check netinit netinit_cni injector lab tests bench
	$(PY) -m ruff format --check netinit netinit_cni injector lab tests bench
	.venv/bin/lint-imports

typecheck: bootstrap
	$(PY) -m mypy

test: bootstrap lint typecheck
	NETINIT_REQUIRE_NETNS_TESTS=1 SIDECAR_REQUIRE_RUNTIME_TESTS=1 $(PY) -m pytest -q -rs

# The three images (netinit, injector, envoy) with podman or docker; IMAGE_REGISTRY / IMAGE_TAG to rename them.
images:
	@scripts/images.sh
