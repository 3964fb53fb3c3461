/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vfstrace tracepoint tier: for kernels that allow BPF on tracepoints but
 * not kprobes or fentry. Tracepoint argument structs come from the
 * tracepoint format files and the one kernel struct read, x86-64 pt_regs
 * (exit-only mode), has the user ABI layout, so it is right whatever
 * headers BCC compiles against.
 *
 * What crosses to user space (everything else is counted per CPU):
 *  - PATH_SYSCALL: path syscalls that returned -ENOENT (all results when
 *    VFS_STREAM_SUCCESS), after the pid / comm / path-prefix filters;
 *  - NS_OP: unlink/rmdir/rename/link/mkdir from every process (the churn
 *    that explains an ENOENT is usually someone else's), prefix-filtered;
 *  - D_FREE / D_ALLOC: kmem_cache_free/alloc on the "dentry" cache, with
 *    the dentry address (prune evidence; VFS_STREAM_DENTRY 0 counts only);
 *  - SHRINK_START / SHRINK_END: vmscan:mm_shrink_slab_start/end.
 *
 * Built by tracers/tracepoint.py with, prepended: the VFS_K_* / VFS_OP_* /
 * VFS_F_* defines from vfstrace.events.c_defines(), and numeric -D options
 * only (VFS_FILTER_PID, VFS_COMM0/1, VFS_HAVE_<syscall>, ring sizes,
 * VFS_EXIT_ONLY for the exit-only mode below). The
 * path prefix arrives through the `prefix` array map, never as C text.
 */
#include "vfstrace.h"

#ifndef VFS_EV_RING_PAGES
#define VFS_EV_RING_PAGES 8192
#endif
#ifndef VFS_PATH_RING_PAGES
#define VFS_PATH_RING_PAGES 4096
#endif
#ifndef VFS_STREAM_SUCCESS
#define VFS_STREAM_SUCCESS 0
#endif
#ifndef VFS_STREAM_DENTRY
#define VFS_STREAM_DENTRY 1
#endif

/* Slots of the per-CPU `counts` array; tracers/tracepoint.py names them. */
#define C_DROP_EV        0  /* vfs_event ring full: record lost */
#define C_DROP_PATH      1  /* vfs_path_event ring full: record lost */
#define C_PATH_SEEN      2  /* path syscalls that returned */
#define C_PATH_OK        3  /* ... that succeeded and were not streamed */
#define C_PATH_OTHERERR  4  /* ... failed with another errno, not streamed */
#define C_FILT_TASK      5  /* path syscalls dropped by the pid/comm filter */
#define C_FILT_PREFIX    6  /* path/ns events dropped by the prefix filter */
#define C_NS_SEEN        7
#define C_DFREE          8  /* dentry frees seen */
#define C_DALLOC         9  /* dentry allocations seen */
#define C_SHRINK        10  /* shrinker runs seen */
#define C_INFLIGHT_MISS 11  /* enter+map mode: exit without a matching enter (attached mid-call) */
#define C_NSLOTS        12

#ifndef VFS_USE_PERF
/* BPF ring buffer (5.8+): one ring per record size, bulk-read by mmap. */
BPF_RINGBUF_OUTPUT(events, VFS_EV_RING_PAGES);
BPF_RINGBUF_OUTPUT(pevents, VFS_PATH_RING_PAGES);
#else
/* Perf buffer fallback: records are built in per-CPU scratch space (a path
 * event is larger than the 512-byte BPF stack) and copied out. */
BPF_PERF_OUTPUT(events);
BPF_PERF_OUTPUT(pevents);
BPF_PERCPU_ARRAY(scratch_ev, struct vfs_event, 1);
BPF_PERCPU_ARRAY(scratch_pev, struct vfs_path_event, 1);
#endif
BPF_PERCPU_ARRAY(counts, u64, C_NSLOTS);

struct prefix_t {
	u32 len;
	char p[VFS_PATH_LEN];
};
BPF_ARRAY(prefix, struct prefix_t, 1);

static __always_inline void count(int slot)
{
	int k = slot;
	u64 *v = counts.lookup(&k);
	if (v)
		(*v)++;
}

static __always_inline struct vfs_path_event *reserve_path(void)
{
#ifndef VFS_USE_PERF
	return pevents.ringbuf_reserve(sizeof(struct vfs_path_event));
#else
	int z = 0;
	return scratch_pev.lookup(&z);
#endif
}

static __always_inline void submit_path(void *ctx, struct vfs_path_event *e)
{
#ifndef VFS_USE_PERF
	pevents.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
#else
	if (pevents.perf_submit(ctx, e, sizeof(*e)) < 0)
		count(C_DROP_PATH);
#endif
}

static __always_inline void discard_path(struct vfs_path_event *e)
{
#ifndef VFS_USE_PERF
	pevents.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
#endif
}

static __always_inline struct vfs_event *reserve_ev(void)
{
#ifndef VFS_USE_PERF
	return events.ringbuf_reserve(sizeof(struct vfs_event));
#else
	int z = 0;
	return scratch_ev.lookup(&z);
#endif
}

static __always_inline void submit_ev(void *ctx, struct vfs_event *e)
{
#ifndef VFS_USE_PERF
	events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
#else
	if (events.perf_submit(ctx, e, sizeof(*e)) < 0)
		count(C_DROP_EV);
#endif
}

static __always_inline int task_wanted(u64 id)
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
	return 1;
}

/* vfstrace's own re-checks and trace writes must not feed back. */
static __always_inline int not_self(u64 id)
{
#ifdef VFS_SELF_PID
	return (u32)(id >> 32) != VFS_SELF_PID;
#else
	return 1;
#endif
}

static __always_inline int prefix_ok(const char *path)
{
#ifdef VFS_FILTER_PREFIX
	int z = 0;
	struct prefix_t *pf = prefix.lookup(&z);
	if (!pf)
		return 1;
	u32 n = pf->len;
#pragma unroll
	for (int i = 0; i < VFS_PATH_LEN; i++) {
		if (i >= n)
			break;
		if (path[i] != pf->p[i])
			return 0;
	}
#endif
	return 1;
}

static __always_inline void fill_hdr(struct vfs_event *e, u64 id, u16 kind, u16 op, s64 ret)
{
	e->ts_ns = bpf_ktime_get_ns();
	e->dentry = 0;
	e->parent = 0;
	e->ino = 0;
	e->ret = ret;
	e->pid = id >> 32;
	e->tid = (u32)id;
	e->cpu = bpf_get_smp_processor_id();
	e->seq = 0;
	e->seq2 = 0;
	e->flags = 0;
	e->kind = kind;
	e->op = op;
	e->_pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->name[0] = 0;
}

/* The pid/comm filter applies to path syscalls (NS_OPs come from every
 * process); counts what it drops. */
static __always_inline int task_passes(u64 id, u16 kind)
{
	if (kind == VFS_K_PATH_SYSCALL && !task_wanted(id)) {
		count(C_FILT_TASK);
		return 0;
	}
	return 1;
}

/*
 * Whether a syscall that returned `ret` needs a record. Decided before any
 * argument fetch, ring reservation or string read, so the common case (a
 * success nobody streams) ends here. Counts what it decides.
 */
static __always_inline int result_wanted(u16 kind, long ret)
{
	if (kind != VFS_K_PATH_SYSCALL) {
		count(C_NS_SEEN);
		return 1;
	}
	count(C_PATH_SEEN);
	if (ret != -2 /* ENOENT */ && (!VFS_STREAM_SUCCESS || ret < 0)) {
		count(ret < 0 ? C_PATH_OTHERERR : C_PATH_OK);
		return 0;
	}
	return 1;
}

/* One PATH_SYSCALL / NS_OP record: p1, p2 are the syscall's user path pointers (p2 may be 0). */
static __always_inline int emit_path(void *ctx, u64 id, u16 kind, u16 op, long ret, u64 p1, u64 p2)
{
	struct vfs_path_event *e = reserve_path();
	if (!e) {
		count(C_DROP_PATH);
		return 0;
	}
	fill_hdr(&e->hdr, id, kind, op, ret);
	long n = bpf_probe_read_user_str(e->path, sizeof(e->path), (const void *)p1);
	if (n < 0)
		e->path[0] = 0;
	else if (n == sizeof(e->path))
		e->hdr.flags |= VFS_F_TRUNCATED;
	e->path2[0] = 0;
	if (p2) {
		n = bpf_probe_read_user_str(e->path2, sizeof(e->path2), (const void *)p2);
		if (n < 0)
			e->path2[0] = 0;
		else if (n == sizeof(e->path2))
			e->hdr.flags |= VFS_F_TRUNCATED;
	}
	if (!prefix_ok(e->path) && !(p2 && prefix_ok(e->path2))) {
		count(C_FILT_PREFIX);
		discard_path(e);
		return 0;
	}
	submit_path(ctx, e);
	return 0;
}

#ifdef VFS_EXIT_ONLY
/*
 * Exit-only mode (tracers/tracepoint.py picks it when the kernel has BTF
 * and this program loads; x86-64 only): one program per syscall, at
 * sys_exit, no enter program and no per-task map. The syscall's arguments
 * are read back from the task's saved user registers:
 * bpf_get_current_task_btf() (5.11, commit 3ca1032ab7ab) and
 * bpf_task_pt_regs() (5.15, commit dd6e10fbd9fb). The x86-64 syscall entry
 * saves the user registers in pt_regs and syscall handlers only read them
 * (syscall args: di, si, dx, r10, r8, r9), so at sys_exit they still hold
 * the arguments. struct pt_regs on x86-64 is the user ABI layout, the same
 * in every header tree BCC may compile against. Compat (ia32) syscalls
 * never reach the syscalls:* tracepoints, so the 64-bit ABI always applies.
 * A successful execve has replaced the registers (and the memory the path
 * was in), as it had the memory in enter+map mode: its path reads empty in
 * both modes.
 */
#include <linux/ptrace.h>

#define VFS_SC_ARG0 di
#define VFS_SC_ARG1 si
#define VFS_SC_ARG2 dx
#define VFS_SC_ARG3 r10
#define SC_ARG(r, n) ((u64)(r)->VFS_SC_ARG##n)

/* a1, a2: the path arguments' 0-based indexes in the syscall, i.e. their
 * order in the sys_enter_<sc> format file (tests/test_tracepoint_live.py
 * checks the table below against this kernel's). */
#define EXIT_PROBE(sc, kind, op, p1, p2) \
TRACEPOINT_PROBE(syscalls, sys_exit_##sc) \
{ \
	u64 id = bpf_get_current_pid_tgid(); \
	long ret = args->ret; \
	if (!not_self(id) || !task_passes(id, kind) || !result_wanted(kind, ret)) \
		return 0; \
	struct pt_regs *r = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf()); \
	return emit_path(args, id, kind, op, ret, p1, p2); \
}
#define PATH1(sc, kind, op, field, a1) EXIT_PROBE(sc, kind, op, SC_ARG(r, a1), 0)
#define PATH2(sc, kind, op, f1, a1, f2, a2) EXIT_PROBE(sc, kind, op, SC_ARG(r, a1), SC_ARG(r, a2))

#else /* enter+map mode */
struct inflight_t {
	u64 p1;   /* user pointer: path */
	u64 p2;   /* user pointer: second path (rename/link) or 0 */
	u16 kind;
	u16 op;
};
/* LRU: a task killed inside a syscall never reaches sys_exit; its entry
 * must not pin a slot forever and make later updates fail. */
BPF_TABLE("lru_hash", u32, struct inflight_t, inflight, 65536);

static __always_inline int on_enter(u16 kind, u16 op, const char *p1, const char *p2)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!not_self(id) || !task_passes(id, kind))
		return 0;
	u32 tid = (u32)id;
	struct inflight_t f = {};
	f.p1 = (u64)p1;
	f.p2 = (u64)p2;
	f.kind = kind;
	f.op = op;
	inflight.update(&tid, &f);
	return 0;
}

static __always_inline int on_exit(void *ctx, long ret)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct inflight_t *f = inflight.lookup(&tid);
	if (!f) {
		if (!not_self(id))
			return 0;
		/* Filtered tasks never stored an entry; only count real misses
		 * (a call in flight when the probes attached). */
		if (task_wanted(id))
			count(C_INFLIGHT_MISS);
		return 0;
	}
	struct inflight_t fl = *f;
	inflight.delete(&tid);
	/* The task filter ran at enter. */
	if (!result_wanted(fl.kind, ret))
		return 0;
	return emit_path(ctx, id, fl.kind, fl.op, ret, fl.p1, fl.p2);
}

/* One enter/exit pair per syscall. */
#define PATH1(sc, kind, op, field, a1) \
TRACEPOINT_PROBE(syscalls, sys_enter_##sc) { return on_enter(kind, op, args->field, 0); } \
TRACEPOINT_PROBE(syscalls, sys_exit_##sc) { return on_exit(args, args->ret); }
#define PATH2(sc, kind, op, f1, a1, f2, a2) \
TRACEPOINT_PROBE(syscalls, sys_enter_##sc) { return on_enter(kind, op, args->f1, args->f2); } \
TRACEPOINT_PROBE(syscalls, sys_exit_##sc) { return on_exit(args, args->ret); }
#endif

/* Each syscall: its path argument(s) by tracepoint field name (enter+map)
 * and by argument index (exit-only); VFS_HAVE_<name> says the tracepoints
 * exist here. */
#ifdef VFS_HAVE_openat
PATH1(openat, VFS_K_PATH_SYSCALL, VFS_OP_OPENAT, filename, 1)
#endif
#ifdef VFS_HAVE_openat2
PATH1(openat2, VFS_K_PATH_SYSCALL, VFS_OP_OPENAT2, filename, 1)
#endif
#ifdef VFS_HAVE_newfstatat
PATH1(newfstatat, VFS_K_PATH_SYSCALL, VFS_OP_NEWFSTATAT, filename, 1)
#endif
#ifdef VFS_HAVE_statx
PATH1(statx, VFS_K_PATH_SYSCALL, VFS_OP_STATX, filename, 1)
#endif
#ifdef VFS_HAVE_faccessat
PATH1(faccessat, VFS_K_PATH_SYSCALL, VFS_OP_FACCESSAT, filename, 1)
#endif
#ifdef VFS_HAVE_faccessat2
PATH1(faccessat2, VFS_K_PATH_SYSCALL, VFS_OP_FACCESSAT2, filename, 1)
#endif
#ifdef VFS_HAVE_execve
PATH1(execve, VFS_K_PATH_SYSCALL, VFS_OP_EXECVE, filename, 0)
#endif
#ifdef VFS_HAVE_readlinkat
PATH1(readlinkat, VFS_K_PATH_SYSCALL, VFS_OP_READLINKAT, pathname, 1)
#endif
#ifdef VFS_HAVE_chdir
PATH1(chdir, VFS_K_PATH_SYSCALL, VFS_OP_CHDIR, filename, 0)
#endif
/* Legacy x86-64 entry points: stat(2) is sys_newstat, lstat(2) sys_newlstat. */
#ifdef VFS_HAVE_open
PATH1(open, VFS_K_PATH_SYSCALL, VFS_OP_OPEN, filename, 0)
#endif
#ifdef VFS_HAVE_newstat
PATH1(newstat, VFS_K_PATH_SYSCALL, VFS_OP_STAT, filename, 0)
#endif
#ifdef VFS_HAVE_newlstat
PATH1(newlstat, VFS_K_PATH_SYSCALL, VFS_OP_LSTAT, filename, 0)
#endif
#ifdef VFS_HAVE_access
PATH1(access, VFS_K_PATH_SYSCALL, VFS_OP_ACCESS, filename, 0)
#endif
#ifdef VFS_HAVE_readlink
PATH1(readlink, VFS_K_PATH_SYSCALL, VFS_OP_READLINK, path, 0)
#endif

#ifdef VFS_HAVE_unlinkat
PATH1(unlinkat, VFS_K_NS_OP, VFS_OP_UNLINK, pathname, 1)
#endif
#ifdef VFS_HAVE_unlink
PATH1(unlink, VFS_K_NS_OP, VFS_OP_UNLINK, pathname, 0)
#endif
#ifdef VFS_HAVE_rmdir
PATH1(rmdir, VFS_K_NS_OP, VFS_OP_RMDIR, pathname, 0)
#endif
#ifdef VFS_HAVE_mkdirat
PATH1(mkdirat, VFS_K_NS_OP, VFS_OP_MKDIR, pathname, 1)
#endif
#ifdef VFS_HAVE_mkdir
PATH1(mkdir, VFS_K_NS_OP, VFS_OP_MKDIR, pathname, 0)
#endif
#ifdef VFS_HAVE_renameat2
PATH2(renameat2, VFS_K_NS_OP, VFS_OP_RENAME, oldname, 1, newname, 3)
#endif
#ifdef VFS_HAVE_renameat
PATH2(renameat, VFS_K_NS_OP, VFS_OP_RENAME, oldname, 1, newname, 3)
#endif
#ifdef VFS_HAVE_rename
PATH2(rename, VFS_K_NS_OP, VFS_OP_RENAME, oldname, 0, newname, 1)
#endif
#ifdef VFS_HAVE_linkat
PATH2(linkat, VFS_K_NS_OP, VFS_OP_LINK, oldname, 1, newname, 3)
#endif
#ifdef VFS_HAVE_link
PATH2(link, VFS_K_NS_OP, VFS_OP_LINK, oldname, 0, newname, 1)
#endif

/*
 * Dentry cache objects. `name` is a __data_loc string on current kernels
 * (low 16 bits: offset in the record, high 16 bits: length incl. NUL); the
 * length test alone rejects almost every other cache before any read.
 * The `name` field is not in every kernel's version of these events
 * (kmem_cache_free gained it around 5.12 with "mm, tracing: record slab
 * name for kmem_cache_free()", kmem_cache_alloc later): tracers/tracepoint.py
 * reads the format file and attaches these probes only when `name` is a
 * __data_loc string, rather than trusting a version number.
 */
#define DENTRY_NAME_LE 0x007972746e6564ULL /* "dentry\0" little-endian */

static __always_inline int is_dentry_cache(void *args, u32 loc)
{
	if ((loc >> 16) != 7)
		return 0;
	u64 s = 0;
	bpf_probe_read_kernel(&s, 7, (char *)args + (loc & 0xFFFF));
	return s == DENTRY_NAME_LE;
}

static __always_inline int emit_dentry(void *ctx, u16 kind, u64 ptr)
{
	struct vfs_event *e = reserve_ev();
	if (!e) {
		count(C_DROP_EV);
		return 0;
	}
	fill_hdr(e, bpf_get_current_pid_tgid(), kind, VFS_OP_NONE, 0);
	e->dentry = ptr;
	submit_ev(ctx, e);
	return 0;
}

#ifdef VFS_HAVE_kmem_cache_free
TRACEPOINT_PROBE(kmem, kmem_cache_free)
{
	if (!is_dentry_cache(args, args->data_loc_name))
		return 0;
	count(C_DFREE);
	if (!VFS_STREAM_DENTRY)
		return 0;
	return emit_dentry(args, VFS_K_D_FREE, (u64)args->ptr);
}
#endif

#ifdef VFS_HAVE_kmem_cache_alloc
TRACEPOINT_PROBE(kmem, kmem_cache_alloc)
{
	if (!is_dentry_cache(args, args->data_loc_name))
		return 0;
	count(C_DALLOC);
	if (!VFS_STREAM_DENTRY)
		return 0;
	return emit_dentry(args, VFS_K_D_ALLOC, (u64)args->ptr);
}
#endif

#ifdef VFS_HAVE_mm_shrink_slab_start
TRACEPOINT_PROBE(vmscan, mm_shrink_slab_start)
{
	count(C_SHRINK);
	struct vfs_event *e = reserve_ev();
	if (!e) {
		count(C_DROP_EV);
		return 0;
	}
	void *ctx = args;
	fill_hdr(e, bpf_get_current_pid_tgid(), VFS_K_SHRINK_START, VFS_OP_NONE, args->nr_objects_to_shrink);
	e->parent = (u64)args->shr; /* the shrinker: pairs START with END */
	submit_ev(ctx, e);
	return 0;
}
#endif

#ifdef VFS_HAVE_mm_shrink_slab_end
TRACEPOINT_PROBE(vmscan, mm_shrink_slab_end)
{
	struct vfs_event *e = reserve_ev();
	if (!e) {
		count(C_DROP_EV);
		return 0;
	}
	/* ret: objects freed = total_scan consumed is not exported; retval is
	 * the shrinker's last return (freed in its last batch). */
	void *ctx = args;
	fill_hdr(e, bpf_get_current_pid_tgid(), VFS_K_SHRINK_END, VFS_OP_NONE, args->retval);
	e->parent = (u64)args->shr;
	submit_ev(ctx, e);
	return 0;
}
#endif
