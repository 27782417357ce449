"""Workloads and runs: the workload generator, the in-process runner, shared engine flags and the ``run`` CLI."""
