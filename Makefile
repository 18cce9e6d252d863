# multiarch-operator — every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
CRD := crds/multiarch.dev_multiarchbuilds.yaml
POLICY_CRD := crds/multiarch.dev_multiarchbuildpolicies.yaml
# FIPS=1: `make image` builds the `fips` feature (README "FIPS (GovCloud)").
FIPS_FEATURES := $(if $(filter 1,$(FIPS)),fips)

.PHONY: help test lint crds demo run bench e2e deps image fips-check

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

test: deps ## The whole suite (installs and starts what it needs)
	e2e/local-stack up
	MAB_E2E_REQUIRED=1 $(CARGO) test --all-targets --locked
	shellcheck -s sh builder/build.sh
	shellcheck -x e2e/local-stack e2e/demo.sh e2e/builder_validation_test.sh e2e/builder_secret_test.sh e2e/builder_cache_test.sh e2e/controller_e2e.sh e2e/install_test.sh e2e/image_test.sh benches/clone_large_repo.sh benches/rebuild_cold_host.sh benches/lib.sh e2e/tap.sh scripts/*.sh
	e2e/builder_validation_test.sh
	e2e/builder_secret_test.sh
	e2e/builder_cache_test.sh
	bash e2e/install_test.sh
	e2e/image_test.sh
	fuzz/run.sh 30

lint: ## rustfmt check + clippy with -D warnings, without and with the `fips` feature
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(MAKE) --no-print-directory fips-check

fips-check: ## The `fips` feature: clippy-clean, and the FIPS module runs (installs cmake, Go, Perl; README "FIPS (GovCloud)")
	scripts/install-deps.sh fips
	$(CARGO) clippy --all-targets --locked --features fips -- -D warnings
	$(CARGO) test --locked --features fips --lib crypto::

crds: ## Regenerate the CRDs from the Rust types (and their copies in the chart and config/crd)
	$(CARGO) run --quiet -- crd > $(CRD)
	MAB_WRITE_CRDS=1 $(CARGO) test --quiet --test policy committed_policy_crd_matches_the_types
	cp $(CRD) $(POLICY_CRD) charts/multiarch-operator/crds/
	cp $(CRD) $(POLICY_CRD) config/crd/

deps: ## Install the test tools the local stack does not bring (idempotent; the stack installs its own)
	scripts/install-deps.sh

demo: ## Run a real two-platform build end to end on the local stack
	e2e/demo.sh

image: ## Build the controller image (IMAGE=<registry>/multiarch-operator:<tag>; FIPS=1 for the FIPS build; pulls the Rust and distroless bases)
	docker build --build-arg CARGO_FEATURES=$(FIPS_FEATURES) -t $(or $(IMAGE),multiarch-operator:dev$(if $(FIPS_FEATURES),-fips)) .

run: ## Run the controller against the current kubeconfig context and the AWS default credentials (ARGS='--namespaces sims')
	$(CARGO) run --quiet --locked -- controller $(ARGS)

bench: deps ## Benchmarks; each figure prints as `bench <name> <value> <unit>`
	e2e/local-stack up
	benches/clone_large_repo.sh
	benches/rebuild_cold_host.sh
	$(CARGO) bench --locked --profile dev --bench describe_calls
	$(CARGO) bench --locked --profile dev --bench engine_memory
	$(CARGO) bench --locked --bench index_assembly

e2e: ## The controller against the real cluster named by KUBECONFIG and the local stack (skips when unset)
	e2e/controller_e2e.sh
