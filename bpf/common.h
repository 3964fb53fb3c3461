/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vfstrace: what every kernel-side program shares (tracepoint.c, kprobe.c,
 * widen.c, empty.c), in the manner of libbpf-tools' compat.bpf.h: one place for the
 * output streams (BPF ring buffer or perf buffer behind one
 * reserve/submit/output), the task filters, the per-CPU counters and the
 * name macros, so no program writes them again.
 *
 * Conventions:
 *  - Options reach a program as numeric -D defines named VFS_<X>; each has
 *    its default here or in the program, under #ifndef. No user text ever
 *    becomes C: strings (a path prefix) travel in maps.
 *  - Generated, never written by hand (vfstrace.events.c_defines(program)
 *    prepends them): VFS_K_* kinds, VFS_OP_* ops, VFS_F_* flags,
 *    VFS_ENOENT / VFS_ECHILD, and the program's counter slots VFS_C_<NAME>
 *    with VFS_NCOUNTERS; VFS_C_LOST_EV / VFS_C_LOST_PATH name the slots that
 *    count records a full stream dropped.
 *  - A program that streams defines VFS_EVENTS (struct vfs_event records:
 *    stream `events`) and/or VFS_PATH_EVENTS (struct vfs_path_event:
 *    stream `pevents`) before including this header.
 *
 * BCC refuses map method calls inside macros ("cannot use map function
 * inside a macro"), so each stream has its own small functions below
 * rather than one generated per stream.
 */
#ifndef VFSTRACE_COMMON_H
#define VFSTRACE_COMMON_H

#include "vfstrace.h"

#ifndef VFS_NCOUNTERS
#error "VFS_NCOUNTERS missing: build with vfstrace.events.c_defines(program) prepended"
#endif

/* ---- names ---------------------------------------------------------------- */
#define VFS_CAT(a, b) a##b
#define VFS_XCAT(a, b) VFS_CAT(a, b)
/* BCC attaches kfunc__<fn> as fentry and kretfunc__<fn> as fexit of <fn>. */
#define VFS_KFUNC(fn) VFS_XCAT(kfunc__, fn)
#define VFS_KRETFUNC(fn) VFS_XCAT(kretfunc__, fn)

/* ---- counters --------------------------------------------------------------- */
/* Per-CPU, summed by the tracer (tracers/stream.py percpu_counts); slot names
 * come from vfstrace/events.py. All slots sit in one per-CPU element, so a
 * probe that updates several pays for one map lookup (vfs_counters()), not
 * one per slot: before 6.10 ("bpf: inline bpf_map_lookup_elem() for
 * PERCPU_ARRAY maps") each lookup is a helper call.
 * A program with no slots (bpf/empty.c, the floor the benches measure
 * against) has no map at all: an array of 0 entries is refused at creation. */
#if VFS_NCOUNTERS > 0
struct vfs_counts {
	u64 c[VFS_NCOUNTERS];
};
BPF_PERCPU_ARRAY(counts, struct vfs_counts, 1);

/* This CPU's slots, or NULL (never, for a one-element array). */
static __always_inline u64 *vfs_counters(void)
{
	int zero = 0;
	struct vfs_counts *v = counts.lookup(&zero);
	return v ? v->c : 0;
}

static __always_inline void vfs_count_add(int slot, u64 by)
{
	u64 *c = vfs_counters();
	if (c && (unsigned)slot < VFS_NCOUNTERS)
		c[slot] += by;
}

static __always_inline void vfs_count(int slot)
{
	vfs_count_add(slot, 1);
}

/*
 * A loss: an atomic add, where the statistics above make do with a plain
 * one. A per-CPU slot is written by one CPU only, but not by one program
 * at a time: a tracepoint program runs with migration, not interrupts,
 * disabled, and an interrupt on its CPU (the RCU callback that frees
 * dentries runs in softirq) can run another of our programs between its
 * load and its store. A lost statistic is noise; a lost loss would hide
 * lost events, and the stream being full is exactly when programs nest.
 */
static __always_inline void vfs_count_lost(int slot, u64 by)
{
	u64 *c = vfs_counters();
	if (c && (unsigned)slot < VFS_NCOUNTERS)
		__sync_fetch_and_add(&c[slot], by);
}
#endif /* VFS_NCOUNTERS > 0 */

/* ---- task filters ------------------------------------------------------------ */
/*
 * VFS_FILTER_PID: only this tgid. VFS_FILTER_COMM with VFS_COMM0/VFS_COMM1:
 * only this comm, compared as two little-endian words (Python packs them).
 * VFS_FILTER_CGROUP: only tasks of this cgroup v2 id
 * (bpf_get_current_cgroup_id(), 4.18). `id` is bpf_get_current_pid_tgid().
 */
#ifdef VFS_FILTER_CGROUP
static __always_inline int vfs_cgroup_wanted(void)
{
	return bpf_get_current_cgroup_id() == VFS_FILTER_CGROUP;
}
#endif

static __always_inline int vfs_task_wanted(u64 id)
{
#ifdef VFS_FILTER_PID
	if ((u32)(id >> 32) != VFS_FILTER_PID)
		return 0;
#endif
#ifdef VFS_FILTER_COMM
	{
		u64 c[2] = {};
		bpf_get_current_comm(c, sizeof(c));
		if (c[0] != VFS_COMM0 || c[1] != VFS_COMM1)
			return 0;
	}
#endif
#ifdef VFS_FILTER_CGROUP
	if (!vfs_cgroup_wanted())
		return 0;
#endif
	return 1;
}

/* VFS_SELF_PID: vfstrace's own re-checks and trace writes must not feed back. */
static __always_inline int vfs_not_self(u64 id)
{
#ifdef VFS_SELF_PID
	return (u32)(id >> 32) != VFS_SELF_PID;
#else
	return 1;
#endif
}

/* The header fields every record carries; the rest zero. */
static __always_inline void vfs_fill(struct vfs_event *e, u64 id, u16 kind, u16 op)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = id >> 32;
	e->tid = (u32)id;
	e->cpu = bpf_get_smp_processor_id();
	e->kind = kind;
	e->op = op;
	e->count = 1;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}

/* ---- streams ------------------------------------------------------------------ */
/*
 * Ring buffer (5.8, commit 457f44363a88) unless VFS_USE_PERF. Records are
 * submitted with BPF_RB_NO_WAKEUP: the consumer (tracers/stream.py) polls
 * on a timer and again at once while the ring has records, so the producer
 * never pays for a wake-up. VFS_EV_RING_PAGES / VFS_PATH_RING_PAGES size
 * the rings (tracers size them to the drain interval). On the perf buffer
 * a record larger than the 512-byte BPF stack is built in per-CPU scratch
 * space and copied out.
 */
#ifndef VFS_EV_RING_PAGES
#define VFS_EV_RING_PAGES 8192
#endif
#ifndef VFS_PATH_RING_PAGES
#define VFS_PATH_RING_PAGES 4096
#endif

#ifdef VFS_EVENTS
#ifndef VFS_USE_PERF
BPF_RINGBUF_OUTPUT(events, VFS_EV_RING_PAGES);
#else
BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(events_scratch, struct vfs_event, 1);
#endif

static __always_inline struct vfs_event *vfs_ev_reserve(void)
{
#ifndef VFS_USE_PERF
	struct vfs_event *e = events.ringbuf_reserve(sizeof(struct vfs_event));
#else
	int z = 0;
	struct vfs_event *e = events_scratch.lookup(&z);
#endif
	if (!e)
		vfs_count_lost(VFS_C_LOST_EV, 1);
	return e;
}

static __always_inline void vfs_ev_submit(void *ctx, struct vfs_event *e)
{
#ifndef VFS_USE_PERF
	events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
#else
	if (events.perf_submit(ctx, e, sizeof(*e)) < 0) {
		vfs_count_lost(VFS_C_LOST_EV, 1);
		return;
	}
#endif
#ifdef VFS_C_EMITTED
	vfs_count(VFS_C_EMITTED);
#endif
}

/* A record built elsewhere (on the stack), copied into the stream. */
static __always_inline void vfs_ev_output(void *ctx, struct vfs_event *e)
{
#ifndef VFS_USE_PERF
	int err = events.ringbuf_output(e, sizeof(*e), BPF_RB_NO_WAKEUP);
#else
	int err = events.perf_submit(ctx, e, sizeof(*e));
#endif
	if (err) {
		vfs_count_lost(VFS_C_LOST_EV, 1);
		return;
	}
#ifdef VFS_C_EMITTED
	vfs_count(VFS_C_EMITTED);
#endif
}
#endif /* VFS_EVENTS */

#ifdef VFS_PATH_EVENTS
#ifndef VFS_USE_PERF
BPF_RINGBUF_OUTPUT(pevents, VFS_PATH_RING_PAGES);
#else
BPF_PERF_OUTPUT(pevents);
BPF_PERCPU_ARRAY(pevents_scratch, struct vfs_path_event, 1);
#endif

static __always_inline struct vfs_path_event *vfs_pev_reserve(void)
{
#ifndef VFS_USE_PERF
	struct vfs_path_event *e = pevents.ringbuf_reserve(sizeof(struct vfs_path_event));
#else
	int z = 0;
	struct vfs_path_event *e = pevents_scratch.lookup(&z);
#endif
	if (!e)
		vfs_count_lost(VFS_C_LOST_PATH, 1);
	return e;
}

static __always_inline void vfs_pev_submit(void *ctx, struct vfs_path_event *e)
{
#ifndef VFS_USE_PERF
	pevents.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
#else
	if (pevents.perf_submit(ctx, e, sizeof(*e)) < 0)
		vfs_count_lost(VFS_C_LOST_PATH, 1);
#endif
}

static __always_inline void vfs_pev_discard(struct vfs_path_event *e)
{
#ifndef VFS_USE_PERF
	pevents.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
#endif
}
#endif /* VFS_PATH_EVENTS */

#endif /* VFSTRACE_COMMON_H */
