"""The running kernel, as vfstrace needs to know it: symbols, features, doctor.

Pure Python (no bcc): /proc/kallsyms, BTF, tracefs, kernel config and the
bpf() and perf_event_open() syscalls asked directly.
"""
