/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vfstrace: the floor under the kprobe/fentry tier. Empty programs on
 * exactly the attach points bpf/kprobe.c uses (tracers/kprobe.py's
 * EmptyKprobeTracer plans them the same way, from the same symbols and the
 * same VFS_MODE_<ROLE> / VFS_FN_<ROLE> defines), so that what vfstrace adds
 * on top of "a BPF program runs at these functions" can be measured as a
 * ratio (bench/probe_cost.py).
 *
 * kprobe mode: a kprobe program does not know where it is attached, so one
 * program, vt_empty, is attached to every kprobe and kretprobe of the plan.
 * fentry mode: an fentry/fexit program is bound to its function when it is
 * loaded (BCC takes the function from the kfunc__/kretfunc__ name), so there
 * is one per probe, present exactly where bpf/kprobe.c has one: fentry and
 * fexit on the walk and step roles, fexit only on the lookup, rcu lookup and re-check
 * sites, fentry only on the prune side and the namespace operations. The
 * tracer checks after the build that the set attached is the set planned.
 *
 * No maps, no helpers: the program returns at once.
 */
#include <linux/ptrace.h>
/* No counter slots: common.h then declares no map. */
#include "common.h"

int vt_empty(struct pt_regs *ctx) { return 0; }

#define EMPTY_FENTRY(fn) int VFS_KFUNC(fn)(u64 *ctx) { return 0; }
#define EMPTY_FEXIT(fn) int VFS_KRETFUNC(fn)(u64 *ctx) { return 0; }

#if VFS_MODE_WALK == 2
EMPTY_FENTRY(VFS_FN_WALK)
EMPTY_FEXIT(VFS_FN_WALK)
#endif
#if VFS_MODE_STEP == 2
EMPTY_FENTRY(VFS_FN_STEP)
EMPTY_FEXIT(VFS_FN_STEP)
#endif
#if VFS_MODE_RCU == 2
EMPTY_FEXIT(VFS_FN_RCU)
#endif
#if VFS_MODE_LOOKUP == 2
EMPTY_FEXIT(VFS_FN_LOOKUP)
#endif
#if VFS_MODE_RC0 == 2
EMPTY_FEXIT(VFS_FN_RC0)
#endif
#if VFS_MODE_RC1 == 2
EMPTY_FEXIT(VFS_FN_RC1)
#endif
#if VFS_MODE_RC2 == 2
EMPTY_FEXIT(VFS_FN_RC2)
#endif
#if VFS_MODE_RC3 == 2
EMPTY_FEXIT(VFS_FN_RC3)
#endif
#if VFS_MODE_PRUNE == 2
EMPTY_FENTRY(VFS_FN_PRUNE)
#endif
#if VFS_MODE_UNHASH == 2
EMPTY_FENTRY(VFS_FN_UNHASH)
#endif
#if VFS_MODE_IPUT == 2
EMPTY_FENTRY(VFS_FN_IPUT)
#endif
#if VFS_MODE_DFREE == 2
EMPTY_FENTRY(VFS_FN_DFREE)
#endif
#if VFS_MODE_DFREE_EXT == 2
EMPTY_FENTRY(VFS_FN_DFREE_EXT)
#endif
#if VFS_MODE_DELETE == 2
EMPTY_FENTRY(VFS_FN_DELETE)
#endif
#if VFS_MODE_MOVE == 2
EMPTY_FENTRY(VFS_FN_MOVE)
#endif
