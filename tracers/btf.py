"""Struct layouts and function prototypes read from the running kernel's BTF.

``struct nameidata`` is private to fs/namei.c: no header describes it, and
its layout changed between kernels (``next_seq`` appeared in 6.0, fields
moved with it). Headers that do not match the running kernel (this machine:
Debian 6.1 headers for a 6.18 kernel) give wrong ``struct dentry`` offsets
too. /sys/kernel/btf/vmlinux is written by the kernel build itself
(CONFIG_DEBUG_INFO_BTF=y), so offsets taken from it are right by
construction; the kprobe tier passes them to its BPF program as numeric
-D defines instead of trusting any header's idea of the layout.

Pure Python, no bcc: a reader of the BTF format described in
Documentation/bpf/btf.rst (header, type section, string section).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from vfstrace.errors import VfstraceError

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F

# BTF_KIND_* (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)

# Bytes that follow the 12-byte common header, per kind: fixed part and per-vlen part.
_EXTRA = {
    INT: (4, 0), PTR: (0, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12),
    ENUM: (0, 8), FWD: (0, 0), TYPEDEF: (0, 0), VOLATILE: (0, 0), CONST: (0, 0),
    RESTRICT: (0, 0), FUNC: (0, 0), FUNC_PROTO: (0, 8), VAR: (4, 0),
    DATASEC: (0, 12), FLOAT: (0, 0), DECL_TAG: (4, 0), TYPE_TAG: (0, 0), ENUM64: (0, 12),
}
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


class BtfError(VfstraceError):
    """BTF is missing, unreadable, or lacks a type vfstrace needs."""


@dataclass(frozen=True)
class _Type:
    kind: int
    name: str
    size_or_type: int
    kind_flag: bool
    vlen: int
    data_off: int  # offset of the kind-specific data in the raw blob


class Btf:
    """Types of one BTF blob, indexed by name for the lookups vfstrace needs."""

    def __init__(self, blob: bytes, origin: str = "BTF"):
        self.origin = origin
        if len(blob) < 24:
            raise BtfError(f"{origin}: too short to be BTF ({len(blob)} bytes)")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != BTF_MAGIC:
            raise BtfError(f"{origin}: not BTF (magic {magic:#x})")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        self._blob = blob
        t0 = hdr_len + type_off
        s0 = hdr_len + str_off
        if t0 + type_len > len(blob) or s0 + str_len > len(blob):
            raise BtfError(f"{origin}: truncated")
        self._str0, self._str_end = s0, s0 + str_len
        self.types: list[_Type | None] = [None]  # type id 0 is void
        self._by_name: dict[tuple[int, str], int] = {}
        pos, end = t0, t0 + type_len
        unpack = struct.unpack_from
        while pos < end:
            name_off, info, size_or_type = unpack("<III", blob, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            try:
                fixed, per = _EXTRA[kind]
            except KeyError:
                raise BtfError(f"{origin}: unknown BTF kind {kind} at byte {pos}") from None
            name = self._str(name_off) if name_off else ""
            t = _Type(kind, name, size_or_type, bool(info >> 31), vlen, pos + 12)
            if name:
                self._by_name.setdefault((kind, name), len(self.types))
            self.types.append(t)
            pos += 12 + fixed + per * vlen

    @classmethod
    def from_file(cls, path: Path | str = VMLINUX_BTF) -> "Btf":
        p = Path(path)
        try:
            blob = p.read_bytes()
        except OSError as e:
            raise BtfError(
                f"cannot read kernel BTF {p}: {e.strerror} (the kprobe tier needs "
                "CONFIG_DEBUG_INFO_BTF=y to lay out struct nameidata)"
            ) from None
        return cls(blob, str(p))

    def _str(self, off: int) -> str:
        start = self._str0 + off
        stop = self._blob.index(b"\0", start, self._str_end)
        return self._blob[start:stop].decode("utf-8", "replace")

    def _resolve(self, tid: int) -> int:
        while tid and self.types[tid].kind in _MODIFIERS:
            tid = self.types[tid].size_or_type
        return tid

    def _members(self, tid: int):
        t = self.types[tid]
        for i in range(t.vlen):
            name_off, mtype, off = struct.unpack_from("<III", self._blob, t.data_off + 12 * i)
            bits = off & 0xFFFFFF if t.kind_flag else off
            yield (self._str(name_off) if name_off else ""), mtype, bits

    def struct_id(self, name: str) -> int:
        for kind in (STRUCT, UNION):
            tid = self._by_name.get((kind, name))
            if tid is not None:
                return tid
        raise BtfError(f"{self.origin}: no struct {name}")

    def _find_member(self, tid: int, name: str):
        """(byte offset, member type id) of ``name``, looking into anonymous members."""
        for mname, mtype, bits in self._members(tid):
            if mname == name:
                return bits // 8, mtype
            if not mname:
                inner = self._resolve(mtype)
                if self.types[inner].kind in (STRUCT, UNION):
                    found = self._find_member(inner, name)
                    if found is not None:
                        return bits // 8 + found[0], found[1]
        return None

    def offsetof(self, struct_name: str, path: str) -> int:
        """Byte offset of ``path`` (e.g. ``"path.dentry"``) inside ``struct struct_name``."""
        tid = self.struct_id(struct_name)
        total = 0
        for part in path.split("."):
            kind = self.types[tid].kind
            if kind not in (STRUCT, UNION):
                raise BtfError(f"{self.origin}: struct {struct_name}: {path}: {part} is not in a struct")
            found = self._find_member(tid, part)
            if found is None:
                raise BtfError(f"{self.origin}: struct {struct_name} has no member {path}")
            off, mtype = found
            total += off
            tid = self._resolve(mtype)
        return total

    def has_member(self, struct_name: str, path: str) -> bool:
        try:
            self.offsetof(struct_name, path)
        except BtfError:
            return False
        return True

    def func_nargs(self, name: str) -> int | None:
        """Number of parameters of function ``name`` (None if BTF has no such FUNC).

        fentry/fexit programs attach by BTF FUNC; a compiler clone
        (``lookup_fast.constprop.0``) has no BTF FUNC of its own.
        """
        tid = self._by_name.get((FUNC, name))
        if tid is None:
            return None
        proto = self.types[self.types[tid].size_or_type]
        if proto.kind != FUNC_PROTO:
            return None
        return proto.vlen


def tracepoint_arg_pointees(btf: Btf, event: str) -> list[str] | None:
    """What each argument of tracepoint ``event`` points to, as a raw
    tracepoint program sees them (``ctx->args[i]``): "struct NAME", "char",
    "void", or "" for a non-pointer; None when BTF has no such tracepoint.

    From the ``btf_trace_<event>`` typedef the kernel emits for every
    tracepoint (a pointer to a FUNC_PROTO whose first parameter is the
    probe's private ``void *__data``, the rest are the TP_PROTO arguments).
    """
    tid = btf._by_name.get((TYPEDEF, f"btf_trace_{event}"))
    if tid is None:
        return None
    ptr = btf._resolve(btf.types[tid].size_or_type)
    if btf.types[ptr].kind != PTR:
        return None
    proto = btf._resolve(btf.types[ptr].size_or_type)
    p = btf.types[proto]
    if p.kind != FUNC_PROTO:
        return None
    out = []
    for i in range(p.vlen):
        _name_off, ptype = struct.unpack_from("<II", btf._blob, p.data_off + 8 * i)
        t = btf._resolve(ptype)
        if not t or btf.types[t].kind != PTR:
            out.append("")
            continue
        inner = btf._resolve(btf.types[t].size_or_type)
        if not inner:
            out.append("void")
        else:
            it = btf.types[inner]
            out.append(f"struct {it.name}" if it.kind in (STRUCT, UNION) else it.name)
    return out[1:]
