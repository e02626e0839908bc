# The MLOps course lab. `make up` runs it, `make test` tests it, `make down` stops it.
.PHONY: up down roster test test-unit test-gpu test-ansible build bench help

help:
	@echo "make up      build what is missing, start the lab, print its URL and how to log in"
	@echo "make down    stop the lab and its student servers (every volume is kept)"
	@echo "make roster FILE=roster.csv [DRY_RUN=1]  import the course roster (no restart); prints what changed"
	@echo "make test    the whole suite: unit, integration and browser tests"
	@echo "make build   rebuild the images (hub, demo identity provider, course)"
	@echo "make test-ansible  the Ansible playbook: lint, converge on a target container, idempotence, restore"
	@echo "make test-gpu  on a GPU host: spawn a GPU server through the hub and train on it"
	@echo "make bench   bench/spawn.py against the running lab"

up:
	bash scripts/up.sh

down:
	bash scripts/down.sh

roster:
	bash scripts/roster.sh "$(FILE)"

test:
	bash scripts/test.sh

test-unit:
	bash scripts/test.sh unit

test-gpu:
	bash scripts/test.sh gpu

test-ansible:
	bash scripts/test.sh ansible

build:
	bash scripts/bootstrap.sh all
	bash scripts/build-images.sh

bench:
	bash scripts/test.sh setup
	.venv/bin/python bench/spawn.py
