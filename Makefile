# The two entry points a fresh machine needs (as root): `make demo`, `make test`.
VENV := .venv
PY := $(VENV)/bin/python
VFSTRACE := $(VENV)/bin/vfstrace
DEMO_SECONDS ?= 30

.PHONY: setup demo test test-fast test-kernels clean

setup:
	bash scripts/setup.sh

# The main job: watch a bundled stress workload on the best tier this kernel allows.
demo: setup
	$(VFSTRACE) doctor
	$(VFSTRACE) watch -d $(DEMO_SECONDS) --workload stress

# The whole suite: unit, recorded-trace, live-kernel and VM tests. The 6.1
# and 6.12 kernels with and without the 2011 race are built by the VM tests
# that boot them (tests/guests.py runs those builds beside the first
# guests), or beforehand by `vfstrace vm build --kernel all`; either way
# they are cached.
test: setup
	$(VFSTRACE) vm fetch --kernel all
	$(PY) -m pytest -v -rs --durations=25 $(PYTEST_ARGS)

# Unit and recorded-trace tests only (no root, no VM).
test-fast: setup
	$(PY) -m pytest -v -rs -m "not live and not vm" $(PYTEST_ARGS)

# The 2011 race on every kernel line vfstrace builds, 5.10 included (the
# suite, and CI, check 6.1): each line's prepatch and control kernels
# built, booted, and the detector checked against the kernel's own record.
test-kernels: setup
	VFSTRACE_VM_KERNEL_LINES=6.1,6.12,5.10 $(PY) -m pytest -v -rs tests/test_prepatch_vm.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
