# okta-token-operator — the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := build

CARGO ?= cargo
# Kubernetes version of the test control plane; keep its minor equal to the k8s-openapi feature in Cargo.toml.
K8S_VERSION ?= v1.37.2
CACHE_DIR ?= $(HOME)/.cache/okta-token-operator
K8S_BIN_DIR ?= $(CACHE_DIR)/k8s-$(K8S_VERSION)/bin
export OKTA_TEST_K8S_BIN_DIR := $(K8S_BIN_DIR)

.PHONY: build test lint fmt crd deps python-deps node-deps controlplane-bins controlplane demo bench clean

build:
	$(CARGO) build --release --bin okta-token-operator

## deps: everything the tests need, installed only when missing.
deps: python-deps node-deps controlplane-bins

python-deps:
	@command -v moto_server >/dev/null 2>&1 && python3 -c 'import moto, flask, flask_cors' 2>/dev/null \
	  || python3 -m pip install --quiet 'moto[server]==5.2.1'

node-deps:
	@[ -d tests/oauth-server/node_modules ] || npm ci --prefix tests/oauth-server --no-audit --no-fund

controlplane-bins:
	@tests/controlplane/build.sh "$(K8S_VERSION)" "$(K8S_BIN_DIR)"

## controlplane: etcd + kube-apiserver + kube-controller-manager in the foreground until Ctrl-C
## (CONTROLPLANE_ARGS="--kubeconfig PATH" also writes the kubeconfig to PATH).
controlplane: controlplane-bins
	$(CARGO) run --quiet -p testbed --bin controlplane -- $(CONTROLPLANE_ARGS)

## demo: the operator end to end on a local control plane, the KMS emulator and the
## OAuth server, with only deploy/'s RBAC; stops everything it started.
demo: deps
	$(CARGO) build --locked --bin okta-token-operator
	$(CARGO) run --locked --quiet -p testbed --bin demo -- \
	  --operator "$${CARGO_TARGET_DIR:-target}/debug/okta-token-operator"

test: deps
	node --test tests/oauth-server/test/
	$(CARGO) test --workspace --all-targets --locked -- --test-threads=4

## crd: regenerate crds/ (and deploy/crd/'s copy, which kustomize needs inside deploy/) from the Rust types.
CRD_FILE := oktaservicetokens.okta-token-operator.dev.yaml
crd:
	$(CARGO) run --locked --quiet --bin okta-token-operator -- crd > crds/$(CRD_FILE)
	cp crds/$(CRD_FILE) deploy/crd/$(CRD_FILE)

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
