# The MLOps course lab. `make up` runs it, `make test` tests it, `make down` stops it.
.PHONY: up down roster release collect autograde feedback grades test test-unit test-gpu test-ansible test-swarm build bench bench-autograde bench-burst bench-burst-mini bench-burst-swarm help

help:
	@echo "make up      build what is missing, start the lab, print its URL and how to log in"
	@echo "make down    stop the lab and its student servers (every volume is kept)"
	@echo "make roster FILE=roster.csv [DRY_RUN=1]  import the course roster (no restart); prints what changed"
	@echo "make release A=04-project-cli [FORCE=1]  release an assignment now (the calendar does it on time)"
	@echo "make collect A=...  collect the latest submissions;  make feedback A=...  generate and release feedback"
	@echo "make autograde A=... [WORKERS=n] [FORCE=1]  collect and autograde in sandboxes, with a progress bar (resumable)"
	@echo "make grades [OUT=grades.csv]  the grades export: every student, every assignment, passed / not passed"
	@echo "make test    the whole suite: unit, integration and browser tests"
	@echo "make build   rebuild the images (hub, demo identity provider, course)"
	@echo "make test-ansible  the Ansible playbook: lint, converge on a target container, idempotence, restore"
	@echo "make test-swarm  the lab on a three-node Docker Swarm of engine containers on this machine (part of make test)"
	@echo "make test-gpu  on a GPU host: spawn a GPU server through the hub and train on it"
	@echo "make bench   bench/spawn.py against the running lab"
	@echo "make bench-autograde [M=40]  bench/autograde.py: our sandboxed parallel grader vs nbgrader's serial autograde"
	@echo "make bench-burst [N=100] [WINDOW=120] [WARM=1]  bench/burst.py: N students log in and start servers within WINDOW seconds"
	@echo "make bench-burst-mini [N=300] [WINDOW=300] [WARM=1]  the same with minimal servers: the hub, proxy and spawner under load"
	@echo "   (WARM=1: the warm service starts their servers first, as before a session; needs warm.enabled)"
	@echo "make bench-burst-swarm [N=300] [WINDOW=300] [WARM=1]  bench/burst_swarm.py: the mini burst against the lab on a three-node swarm"

up:
	bash scripts/up.sh

down:
	bash scripts/down.sh

roster:
	bash scripts/roster.sh "$(FILE)"

release:
	bash scripts/course.sh release "$(A)" $(if $(FORCE),--force)

collect:
	bash scripts/course.sh collect "$(A)"

autograde:
	bash scripts/course.sh autograde "$(A)" --collect $(if $(WORKERS),--workers $(WORKERS)) $(if $(FORCE),--force)

feedback:
	bash scripts/course.sh feedback "$(A)"

grades:
	bash scripts/course.sh grades $(OUT)

test:
	bash scripts/test.sh

test-unit:
	bash scripts/test.sh unit

test-gpu:
	bash scripts/test.sh gpu

test-ansible:
	bash scripts/test.sh ansible

test-swarm:
	bash scripts/test.sh swarm

build:
	bash scripts/bootstrap.sh all
	bash scripts/build-images.sh

bench:
	bash scripts/test.sh setup
	.venv/bin/python bench/spawn.py

bench-autograde:
	bash scripts/test.sh setup
	.venv/bin/python bench/autograde.py -m $(or $(M),40)

bench-burst:
	bash scripts/test.sh setup
	.venv/bin/python bench/burst.py -n $(or $(N),100) --window $(or $(WINDOW),120) $(if $(WARM),--warm)

bench-burst-mini:
	bash scripts/test.sh setup
	bash scripts/bench-burst-mini.sh $(or $(N),300) $(or $(WINDOW),300) $(if $(WARM),--warm)

bench-burst-swarm:
	bash scripts/test.sh setup
	.venv/bin/python bench/burst_swarm.py -n $(or $(N),300) --window $(or $(WINDOW),300) $(if $(WARM),--warm)
