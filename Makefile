# Taskbot: the two commands a newcomer needs are `make run` and `make test`.
.PHONY: run test services build lint fmt bench clean

# Bring up the whole pipeline locally and feed it real sample bus messages.
run:
	bash scripts/run-local.sh

# Everything the tests need (system packages, RabbitMQ, PostgreSQL), then every test.
test: services
	cargo build --bins
	cargo test --workspace --no-fail-fast
	# Tests that restart the shared RabbitMQ and PostgreSQL run alone, after the others.
	cargo test -p taskbot-tests --test restarts -- --ignored --test-threads=1

# Install (if absent) and start RabbitMQ and PostgreSQL, and the build dependencies.
services:
	bash scripts/ensure-services.sh

build:
	cargo build --bins

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

# Events per second the rules engine evaluates on one core, parsing included, with the shipped
# rules and with 1,000 rules; the runner's own cost per job against cloning and running a task by
# hand (against the real RabbitMQ); a disposable VM's boot, command and destroy times (QEMU, TCG);
# events/s through the fedora-messaging bridge against a raw consume+republish loop.
# Optimised builds; figures and method: docs/benchmarks.md.
bench: services
	cargo bench -p rules --bench rules
	cargo bench -p runner --bench overhead
	cargo bench -p provisioner --bench vm
	cargo build --bins
	cargo bench -p taskbot-tests --bench vm_request
	cargo bench -p taskbot-tests --bench fedora_messaging_bridge

clean:
	rm -rf .run
