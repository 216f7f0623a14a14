"""The tests, laid out by side like the package: core/, node/, requestor/, reports/, and e2e/.

A test file is named after the module it tests (tests/node/test_shim.py tests
beacon_golem/node/shim/); a subpackage gets its own folder once it has several test files
(tests/node/runtimes/, tests/requestor/fleets/golem/, tests/requestor/work/). e2e/ holds
the tests that drive the `beacon` command as a user runs it. Shared helpers: support.py,
perf_support.py, fakes/ (imported as `tests.support`, ...), data/ (`tests.support.DATA`).
"""
