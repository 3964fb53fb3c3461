/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vfstrace widen: hold the workload's own RCU path walks for a bounded time
 * between finding a dentry and re-checking its d_seq, so that a concurrent
 * prune of that dentry lands in the window far more often.
 *
 * Where the delay sits: on the return of the RCU dcache lookup
 * (__d_lookup_rcu, attached as a kretprobe). That function only runs in
 * RCU-walk mode; it returns the dentry with its d_seq sampled into the
 * walk, and every re-check of that sample (the d_inode read + d_seq retry
 * the 2011 fix added to do_lookup, today in lookup_fast/step_into) comes
 * after it returns. When that symbol is missing the tracer falls back to the
 * return of the lookup role (lookup_fast), which sits before step_into's
 * re-check on every kernel since the d_seq check moved there.
 *
 * Who is delayed: only tasks in the target cgroup (cgroup v2 id, compared
 * with bpf_get_current_cgroup_id(), kernel >= 4.18) or, without a cgroup
 * id, whose tgid is in the `targets` hash map. Everything else returns at
 * once.
 *
 * How it is attached: as an fexit program where the kernel has fentry and
 * BTF describes the site (VFS_WIDEN_MODE 2), else as a kretprobe (VFS_WIDEN_MODE 1).
 * The probe's own cost is paid by every task that looks a name up, target
 * or not; under emulation a kretprobe's (breakpoint, return trampoline,
 * saved registers) is most of a microsecond, an fexit trampoline's a small
 * part of that.
 *
 * Armed or not: the `armed` array's one slot says whether target lookups
 * are held (1) or only counted (0). The program can so sit attached while
 * a comparison phase runs without the delay, and the two phases differ in
 * the delay alone, not in the probe's cost.
 *
 * Defines (numbers only, from tracers/widen.py):
 *   VFS_WIDEN_DELAY_NS    busy-wait per delayed lookup (capped at 1 ms there)
 *   VFS_WIDEN_MAX_ITERS   hard bound on loop iterations (verifier-visible)
 *   VFS_FILTER_CGROUP cgroup v2 id to delay (common.h); absent: the tgids
 *                     of the `targets` map
 *   VFS_WIDEN_NEED_RESULT 1: delay only when the probed function returned a
 *                     dentry (not NULL / ERR_PTR)
 *   VFS_WIDEN_MODE        1 kretprobe, 2 fexit
 *   VFS_WIDEN_FN          fexit only: the site's name (a C identifier)
 *   VFS_WIDEN_NARGS       fexit only: the site's parameter count (BTF), so
 *                     ctx[VFS_WIDEN_NARGS] is its return value
 *   VFS_WIDEN_SAMPLE      hold a lookup with probability VFS_WIDEN_SAMPLE / 65536
 *                     (65536: every one). Holding every lookup of a `cp -a`
 *                     stalls it (tens of held lookups per file copied); a
 *                     sampled share keeps it copying, so the files it fails
 *                     on show the race's symptom.
 */
#include <uapi/linux/ptrace.h>

#ifndef VFS_WIDEN_DELAY_NS
#define VFS_WIDEN_DELAY_NS 200000ULL
#endif
#ifndef VFS_WIDEN_MAX_ITERS
#define VFS_WIDEN_MAX_ITERS 65536
#endif
#ifndef VFS_WIDEN_NEED_RESULT
#define VFS_WIDEN_NEED_RESULT 1
#endif
#ifndef VFS_WIDEN_MODE
#define VFS_WIDEN_MODE 1
#endif
#ifndef VFS_WIDEN_SAMPLE
#define VFS_WIDEN_SAMPLE 65536
#endif

/* Counter slots VFS_C_* are generated from vfstrace.events.WidenCounter;
 * the per-CPU `counts` array and the cgroup filter come from common.h. */
#include "common.h"

BPF_HASH(targets, u32, u8, 4096);
BPF_ARRAY(armed, u32, 1);

/*
 * Every task that looks a name up runs this, so it is kept to one helper
 * call when the workload has a cgroup (children are born in it); the tgid
 * hash serves only where the cgroup id is not usable (before 5.5).
 */
static __always_inline int is_target(void)
{
#ifdef VFS_FILTER_CGROUP
	return vfs_cgroup_wanted();
#else
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	return targets.lookup(&tgid) != NULL;
#endif
}

static __always_inline int widen(unsigned long rc)
{
	if (!is_target())
		return 0;
	vfs_count(VFS_C_SEEN);
	int zero = 0;
	u32 *on = armed.lookup(&zero);
	if (!on || !*on) {
		vfs_count(VFS_C_UNARMED);
		return 0;
	}
#if VFS_WIDEN_NEED_RESULT
	/* NULL: not in the dcache; ERR_PTR (top 4095 values): -ECHILD etc. */
	if (rc == 0 || rc >= (unsigned long)-4095) {
		vfs_count(VFS_C_NO_DENTRY);
		return 0;
	}
#endif
#if VFS_WIDEN_SAMPLE < 65536
	if ((bpf_get_prandom_u32() & 0xffff) >= VFS_WIDEN_SAMPLE) {
		vfs_count(VFS_C_NOT_SAMPLED);
		return 0;
	}
#endif
	u64 t0 = bpf_ktime_get_ns();
	u64 now = t0;
	int done = 0;
	for (int i = 0; i < VFS_WIDEN_MAX_ITERS; i++) {
		now = bpf_ktime_get_ns();
		if (now - t0 >= VFS_WIDEN_DELAY_NS) {
			done = 1;
			break;
		}
	}
	vfs_count(VFS_C_DELAYED);
	vfs_count_add(VFS_C_DELAY_NS, now - t0);
	if (!done)
		vfs_count(VFS_C_CAPPED);
	return 0;
}

#if VFS_WIDEN_MODE == 2
int VFS_KRETFUNC(VFS_WIDEN_FN)(u64 *ctx) { return widen(ctx[VFS_WIDEN_NARGS]); }
#else
int widen_ret(struct pt_regs *ctx) { return widen(PT_REGS_RC(ctx)); }
#endif
