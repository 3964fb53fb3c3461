"""Workloads that make the race likely: stress, the stat loop, selftest's workers, the simulator."""
