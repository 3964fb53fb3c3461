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
 * with bpf_get_current_cgroup_id(), kernel >= 4.18) or whose tgid is in
 * the `targets` hash map. Everything else returns at once.
 *
 * Defines (numbers only, from tracers/widen.py):
 *   WIDEN_DELAY_NS    busy-wait per delayed lookup (capped at 1 ms there)
 *   WIDEN_MAX_ITERS   hard bound on loop iterations (verifier-visible)
 *   WIDEN_CGROUP_ID   cgroup v2 id to delay, 0 for none
 *   WIDEN_NEED_RESULT 1: delay only when the probed function returned a
 *                     dentry (not NULL / ERR_PTR)
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

/* Per-CPU counters, read and summed by tracers/widen.py. */
enum widen_counter {
	W_SEEN = 0,      /* target task returned from the probed lookup */
	W_DELAYED,       /* ... and was held */
	W_DELAY_NS,      /* total time held, measured */
	W_CAPPED,        /* held until WIDEN_MAX_ITERS ran out, short of the delay */
	W_NO_DENTRY,     /* target lookup found nothing: nothing to widen */
	W_NCOUNTERS,
};

BPF_PERCPU_ARRAY(counters, u64, W_NCOUNTERS);
BPF_HASH(targets, u32, u8, 4096);

static __always_inline void bump(int idx, u64 by)
{
	u64 *v = counters.lookup(&idx);
	if (v)
		*v += by;
}

static __always_inline int is_target(void)
{
#if WIDEN_CGROUP_ID
	if (bpf_get_current_cgroup_id() == WIDEN_CGROUP_ID)
		return 1;
#endif
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	return targets.lookup(&tgid) != NULL;
}

int widen_ret(struct pt_regs *ctx)
{
	if (!is_target())
		return 0;
	bump(W_SEEN, 1);
#if WIDEN_NEED_RESULT
	unsigned long rc = PT_REGS_RC(ctx);
	/* NULL: not in the dcache; ERR_PTR (top 4095 values): -ECHILD etc. */
	if (rc == 0 || rc >= (unsigned long)-4095) {
		bump(W_NO_DENTRY, 1);
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
