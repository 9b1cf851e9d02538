"""Helpers shared by the tests, and by the benchmarks that drive the service the same way.

- `tests.support.load`: texts and requests, the answer checker, and the open/closed-loop load drivers.
- `tests.support.faults`: model replicas by name, killing one under load and watching the recovery.
- `tests.support.scaling`: replica states over time, and the texts each model replica has encoded
  (`ReplicaTexts`, also what `faults` and the cluster test watch replacements with).
- `tests.support.devices`: `SlowDevice`, a model deployment whose device a test slows, holds and observes.
- `tests.support.reference`: what an independent reference (transformers' tokenizer) answers.
- `tests.support.waiting`: `wait_until` and `wait_until_async`, waiting on state with a deadline.

Tests import from here, never from `bench/`; `bench/` may import from here.
"""
