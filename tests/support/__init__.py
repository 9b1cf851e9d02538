"""Helpers shared by the tests, and by the benchmarks that drive the service the same way.

- `tests.support.load`: texts and requests, the answer checker, and the open/closed-loop load drivers.
- `tests.support.faults`: model replicas by name, killing one under load and watching the recovery.

Tests import from here, never from `bench/`; `bench/` may import from here.
"""
