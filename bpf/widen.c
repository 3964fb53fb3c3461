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
 * BTF describes the site (WIDEN_MODE 2), else as a kretprobe (WIDEN_MODE 1).
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
 *   WIDEN_DELAY_NS    busy-wait per delayed lookup (capped at 1 ms there)
 *   WIDEN_MAX_ITERS   hard bound on loop iterations (verifier-visible)
 *   WIDEN_CGROUP_ID   cgroup v2 id to delay, 0 for none
 *   WIDEN_NEED_RESULT 1: delay only when the probed function returned a
 *                     dentry (not NULL / ERR_PTR)
 *   WIDEN_MODE        1 kretprobe, 2 fexit
 *   WIDEN_FN          fexit only: the site's name (a C identifier)
 *   WIDEN_NARGS       fexit only: the site's parameter count (BTF), so
 *                     ctx[WIDEN_NARGS] is its return value
 *   WIDEN_SAMPLE      hold a lookup with probability WIDEN_SAMPLE / 65536
 *                     (65536: every one). Holding every lookup of a `cp -a`
 *                     stalls it (tens of held lookups per file copied); a
 *                     sampled share keeps it copying, so the files it fails
 *                     on show the race's symptom.
 */
#include <uapi/linux/ptrace.h>

#ifndef WIDEN_DELAY_NS
#define WIDEN_DELAY_NS 200000ULL
#endif
#ifndef WIDEN_MAX_ITERS
#define WIDEN_MAX_ITERS 65536
#endif
#ifndef WIDEN_CGROUP_ID
#define WIDEN_CGROUP_ID 0ULL
#endif
#ifndef WIDEN_NEED_RESULT
#define WIDEN_NEED_RESULT 1
#endif
#ifndef WIDEN_MODE
#define WIDEN_MODE 1
#endif
#ifndef WIDEN_SAMPLE
#define WIDEN_SAMPLE 65536
#endif

/* Per-CPU counters, read and summed by tracers/widen.py. */
enum widen_counter {
	W_SEEN = 0,      /* target task returned from the probed lookup */
	W_DELAYED,       /* ... and was held */
	W_DELAY_NS,      /* total time held, measured */
	W_CAPPED,        /* held until WIDEN_MAX_ITERS ran out, short of the delay */
	W_NO_DENTRY,     /* target lookup found nothing: nothing to widen */
	W_UNARMED,       /* target lookup seen while disarmed: not held */
	W_NOT_SAMPLED,   /* target lookup left out by WIDEN_SAMPLE: not held */
	W_NCOUNTERS,
};

BPF_PERCPU_ARRAY(counters, u64, W_NCOUNTERS);
BPF_HASH(targets, u32, u8, 4096);
BPF_ARRAY(armed, u32, 1);

static __always_inline void bump(int idx, u64 by)
{
	u64 *v = counters.lookup(&idx);
	if (v)
		*v += by;
}

/*
 * Every task that looks a name up runs this, so it is kept to one helper
 * call when the workload has a cgroup (children are born in it); the tgid
 * hash serves only where the cgroup id is not usable (before 5.5).
 */
static __always_inline int is_target(void)
{
#if WIDEN_CGROUP_ID
	return bpf_get_current_cgroup_id() == WIDEN_CGROUP_ID;
#else
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	return targets.lookup(&tgid) != NULL;
#endif
}

static __always_inline int widen(unsigned long rc)
{
	if (!is_target())
		return 0;
	bump(W_SEEN, 1);
	int zero = 0;
	u32 *on = armed.lookup(&zero);
	if (!on || !*on) {
		bump(W_UNARMED, 1);
		return 0;
	}
#if WIDEN_NEED_RESULT
	/* NULL: not in the dcache; ERR_PTR (top 4095 values): -ECHILD etc. */
	if (rc == 0 || rc >= (unsigned long)-4095) {
		bump(W_NO_DENTRY, 1);
		return 0;
	}
#endif
#if WIDEN_SAMPLE < 65536
	if ((bpf_get_prandom_u32() & 0xffff) >= WIDEN_SAMPLE) {
		bump(W_NOT_SAMPLED, 1);
		return 0;
	}
#endif
	u64 t0 = bpf_ktime_get_ns();
	u64 now = t0;
	int done = 0;
	for (int i = 0; i < WIDEN_MAX_ITERS; i++) {
		now = bpf_ktime_get_ns();
		if (now - t0 >= WIDEN_DELAY_NS) {
			done = 1;
			break;
		}
	}
	bump(W_DELAYED, 1);
	bump(W_DELAY_NS, now - t0);
	if (!done)
		bump(W_CAPPED, 1);
	return 0;
}

#if WIDEN_MODE == 2
#define VT_CAT(a, b) a##b
#define VT_XCAT(a, b) VT_CAT(a, b)
/* BCC attaches a function named kretfunc__<symbol> as fexit of <symbol>. */
int VT_XCAT(kretfunc__, WIDEN_FN)(u64 *ctx) { return widen(ctx[WIDEN_NARGS]); }
#else
int widen_ret(struct pt_regs *ctx) { return widen(PT_REGS_RC(ctx)); }
#endif
