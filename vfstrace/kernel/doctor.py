"""`vfstrace doctor`: what this kernel allows, and which tier `watch` would use.

Every answer comes from asking the kernel, not from its version number:
bpf() is tried by creating a map, kprobes by opening a real kprobe perf
event on a harmless function, the BPF ring buffer by creating one, fentry
by bpftrace's own load test. The same checks drive :func:`choose_tier`, so
what doctor says is what `watch` does.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from vfstrace.errors import PrivilegeError, TierUnavailable
from vfstrace.kernel import symbols
from vfstrace.kernel.tiers import optional_role_gaps, probe_tier_blockers
from vfstrace.report.terminal import term
from vfstrace.kernel.features import (
    _BPF_MAP_TYPE_ARRAY,
    _BPF_MAP_TYPE_RINGBUF,
    DEBUGFS,
    EXIT_NO_TIER,
    SECURITYFS,
    TRACEFS,
    _bcc_importable,
    _bpf_map_create,
    _bpftrace_info,
    _ensure_mounted,
    _kernel_config,
    _tracepoints_present,
    _try_fentry_attach,
    _try_kprobe_attach,
    find_headers,
)


@dataclass
class Check:
    ok: bool | None
    detail: str


@dataclass
class TierChoice:
    """The tier `watch` will use and everything a tracer needs to set it up."""

    tier: str
    reason: str
    symbols: dict = field(default_factory=dict)
    kfunc: bool = False
    ringbuf: bool = False
    headers: str | None = None
    headers_match: str = "none"
    kernel_release: str = ""


@dataclass
class Report:
    kernel_release: str
    checks: dict[str, Check]
    roles: dict[str, symbols.RoleResolution]
    tiers: dict[str, Check]
    choice: TierChoice | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self):
        return {
            "kernel_release": self.kernel_release,
            "checks": {k: asdict(v) for k, v in self.checks.items()},
            "roles": {k: v.to_dict() for k, v in self.roles.items()},
            "tiers": {k: asdict(v) for k, v in self.tiers.items()},
            "tier": self.choice.tier if self.choice else "none",
            "tier_reason": self.choice.reason if self.choice else self.no_tier_reason(),
            "headers": self.choice.headers if self.choice else None,
            "notes": self.notes,
        }

    def no_tier_reason(self) -> str:
        return "; ".join(f"{t}: {c.detail}" for t, c in self.tiers.items())


def diagnose(kallsyms: symbols.KernelSymbols | None = None, *, bpftrace: bool = True) -> Report:
    """Run every check. Needs root for the BPF, kprobe and tracefs checks.

    ``bpftrace=False`` skips `bpftrace --info` (seconds of BPF loads, a
    minute under emulation): no tier decision depends on it.
    """
    release = os.uname().release
    notes: list[str] = []
    c: dict[str, Check] = {}

    c["root"] = Check(os.geteuid() == 0, "running as root" if os.geteuid() == 0 else "not root")
    ok, why = _bpf_map_create(_BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    c["bpf"] = Check(ok, f"bpf(BPF_MAP_CREATE): {why}")
    ok, why = _bpf_map_create(_BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
    c["ringbuf"] = Check(ok, f"BPF ring buffer map: {why}" + ("" if ok else " (perf buffer will be used)"))
    btf = os.path.exists("/sys/kernel/btf/vmlinux")
    c["btf"] = Check(btf, "/sys/kernel/btf/vmlinux present" if btf else "no kernel BTF")

    _ensure_mounted("securityfs", SECURITYFS, "lockdown", notes)
    try:
        lock = Path(f"{SECURITYFS}/lockdown").read_text().strip()
        mode = re.search(r"\[(\w+)\]", lock)
        mode = mode.group(1) if mode else lock
        c["lockdown"] = Check(mode == "none", f"lockdown: {mode}")
    except OSError:
        c["lockdown"] = Check(None, "lockdown state unknown (no securityfs)")

    tfs = _ensure_mounted("tracefs", TRACEFS, "events", notes)
    c["tracefs"] = Check(tfs, f"tracefs at {TRACEFS}" if tfs else "tracefs not mountable")
    _ensure_mounted("debugfs", DEBUGFS, "tracing", notes)
    ok, why = _tracepoints_present() if tfs else (False, "no tracefs")
    c["tracepoints"] = Check(ok, why)

    ok, why = _try_kprobe_attach()
    cfg = _kernel_config(release)
    if cfg and not ok:
        why += f" (kernel config: CONFIG_KPROBES {cfg.get('CONFIG_KPROBES', 'is not set')})"
    c["kprobes"] = Check(ok, why)

    ok, why = _try_fentry_attach()
    c["fentry"] = Check(ok, why)
    info = _bpftrace_info() if bpftrace else {"version": "(not checked)"}
    c["bpftrace"] = Check(bool(info), f"bpftrace {info['version']}" if "version" in info else "bpftrace not installed")
    ok, why = _bcc_importable()
    c["bcc"] = Check(ok, why)
    hdr, match = find_headers(release)
    c["headers"] = Check(
        {"exact": True, "fallback": None, "none": False}[match],
        {"exact": f"exact match: {hdr}",
         "fallback": f"no headers for {release}; fallback {hdr} (tracepoint programs only: struct layouts not trusted)",
         "none": f"no kernel headers for {release} (tracepoint tier can still use bpftrace)"}[match],
    )

    ks = kallsyms or symbols.running_kernel_symbols(TRACEFS, DEBUGFS)
    if not ks.text:
        notes.append("/proc/kallsyms gave no text symbols (not root?)")
    roles = symbols.resolve(ks)
    tiers = _judge_tiers(c, roles, match)
    choice = _choice_from(tiers, c, roles, hdr, match, release)
    return Report(release, c, roles, tiers, choice, notes)


def _judge_tiers(c, roles, headers_match) -> dict[str, Check]:
    t: dict[str, Check] = {}
    base = [k for k in ("root", "bpf", "bcc") if not c[k].ok]
    found = {r: roles[r].symbol for r in roles}
    refused = {r: roles[r].reason for r in roles if roles[r].attachable is False}
    role_blockers = probe_tier_blockers(found, refused)
    gaps = optional_role_gaps(found, refused)

    def kprobe_like(name, feature):
        why = []
        if base:
            why.append("needs " + ", ".join(c[k].detail for k in base))
        if not c[feature].ok:
            why.append(c[feature].detail)
        if headers_match != "exact":
            why.append("no kernel headers matching this kernel (struct dentry layout unknown)")
        why += role_blockers
        ok = f"{feature} available, roles resolved, exact headers" + "".join(f"; {g}" for g in gaps)
        t[name] = Check(not why, "; ".join(why) if why else ok)

    kprobe_like("fentry", "fentry")
    kprobe_like("kprobe", "kprobes")
    why = []
    if not c["root"].ok:
        why.append("needs root")
    if not c["bpf"].ok:
        why.append(c["bpf"].detail)
    if not c["tracepoints"].ok:
        why.append(c["tracepoints"].detail)
    if not (c["bcc"].ok and headers_match != "none"):
        why.append("needs bcc with kernel headers (exact or fallback)")
    t["tracepoint"] = Check(not why, "; ".join(why) if why else
                            "syscall/kmem/vmscan tracepoints with bcc" + (" (fallback headers)" if headers_match == "fallback" else ""))
    return t


def _choice_from(tiers, c, roles, hdr, match, release, requested="auto") -> TierChoice | None:
    order = ["fentry", "kprobe", "tracepoint"] if requested == "auto" else [requested]
    for name in order:
        if tiers.get(name) and tiers[name].ok:
            syms = {r: roles[r].symbol for r in symbols.ROLES}
            syms["recheck"] = list(roles["recheck"].symbols)
            syms["all"] = {r: list(roles[r].symbols) for r in symbols.ROLES}
            skipped = [f"{t}: {tiers[t].detail}" for t in ["fentry", "kprobe", "tracepoint"][: ["fentry", "kprobe", "tracepoint"].index(name)]]
            reason = tiers[name].detail + (" — better tiers unavailable: " + "; ".join(skipped) if skipped else "")
            return TierChoice(name, reason, syms, bool(c["fentry"].ok), bool(c["ringbuf"].ok), hdr, match, release)
    return None


def choose_tier(requested: str = "auto") -> TierChoice:
    """The tier to trace with; TierUnavailable (one line) if it cannot run."""
    if os.geteuid() != 0:
        raise PrivilegeError("tracing needs root (CAP_BPF and CAP_PERFMON or CAP_SYS_ADMIN): run as root")
    if requested not in ("auto", "fentry", "kprobe", "tracepoint"):
        raise TierUnavailable(f"unknown tier {requested!r} (auto, fentry, kprobe, tracepoint)")
    rep = diagnose(bpftrace=False)
    choice = _choice_from(rep.tiers, rep.checks, rep.roles, *find_headers(rep.kernel_release), rep.kernel_release, requested)
    if choice is None:
        if requested == "auto":
            raise TierUnavailable(f"no tracing tier can run on {rep.kernel_release}: {rep.no_tier_reason()}")
        raise TierUnavailable(f"the {requested} tier cannot run on {rep.kernel_release}: {rep.tiers[requested].detail}")
    return choice


def _mark(ok) -> str:
    return {True: "yes", False: "NO", None: "?"}[ok]


def render_text(rep: Report) -> str:
    from tabulate import tabulate

    out = [term(f"kernel {rep.kernel_release}"), ""]
    out.append(tabulate([(k, _mark(v.ok), term(v.detail)) for k, v in rep.checks.items()], headers=["check", "ok", "detail"]))
    out.append("")
    # Symbol names come from /proc/kallsyms (or a captured copy): escaped like trace text.
    out.append(tabulate(
        [(r.role, term(r.symbol or "-"), _mark(r.attachable), term(r.reason)) for r in rep.roles.values()],
        headers=["role", "symbol", "attachable", "why"],
    ))
    out.append("")
    out.append(tabulate([(k, _mark(v.ok), v.detail) for k, v in rep.tiers.items()], headers=["tier", "can run", "why"]))
    out.append("")
    if rep.choice:
        out.append(f"watch would use: {rep.choice.tier} ({rep.choice.reason})")
    else:
        out.append("watch would use: none — no tier can run here")
    for n in rep.notes:
        out.append(term(f"note: {n}"))
    return "\n".join(out)


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor_cmd(as_json):
    """Say what this kernel allows and which tier `watch` would use, and why.

    Exit status: 0 when a tier can run, 4 when none can, 5 when not root.
    """
    if os.geteuid() != 0:
        raise PrivilegeError("doctor needs root to try bpf(), kprobes and tracefs: run it as root")
    rep = diagnose()
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2))
    else:
        click.echo(render_text(rep))
    if rep.choice is None:
        raise SystemExit(EXIT_NO_TIER)
