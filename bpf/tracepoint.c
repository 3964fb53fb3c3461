/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vfstrace tracepoint tier: for kernels that allow BPF on tracepoints but
 * not kprobes or fentry. Tracepoint argument structs come from the
 * tracepoint format files, so nothing here depends on kernel struct layouts
 * and it is right whatever headers BCC compiles against.
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
 * only (VFS_FILTER_PID, VFS_COMM0/1, VFS_HAVE_<syscall>, ring sizes). The
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
#define C_INFLIGHT_MISS 11  /* exit without a matching enter (attached mid-call) */
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

struct inflight_t {
	u64 p1;   /* user pointer: path */
	u64 p2;   /* user pointer: second path (rename/link) or 0 */
	u16 kind;
	u16 op;
};
/* LRU: a task killed inside a syscall never reaches sys_exit; its entry
 * must not pin a slot forever and make later updates fail. */
BPF_TABLE("lru_hash", u32, struct inflight_t, inflight, 65536);

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

static __always_inline int on_enter(u16 kind, u16 op, const char *p1, const char *p2)
{
	u64 id = bpf_get_current_pid_tgid();
#ifdef VFS_SELF_PID
	/* vfstrace's own re-checks and trace writes must not feed back. */
	if ((u32)(id >> 32) == VFS_SELF_PID)
		return 0;
#endif
	if (kind == VFS_K_PATH_SYSCALL && !task_wanted(id)) {
		count(C_FILT_TASK);
		return 0;
	}
	u32 tid = (u32)id;
	struct inflight_t f = {};
	f.p1 = (u64)p1;
	f.p2 = (u64)p2;
	f.kind = kind;
	f.op = op;
	inflight.update(&tid, &f);
	return 0;
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

static __always_inline int on_exit(void *ctx, long ret)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id;
	struct inflight_t *f = inflight.lookup(&tid);
	if (!f) {
#ifdef VFS_SELF_PID
		if ((u32)(id >> 32) == VFS_SELF_PID)
			return 0;
#endif
		/* Filtered tasks never stored an entry; only count real misses
		 * (a call in flight when the probes attached). */
		if (task_wanted(id))
			count(C_INFLIGHT_MISS);
		return 0;
	}
	struct inflight_t fl = *f;
	inflight.delete(&tid);

	if (fl.kind == VFS_K_PATH_SYSCALL) {
		count(C_PATH_SEEN);
		if (ret != -2 /* ENOENT */) {
			if (!VFS_STREAM_SUCCESS || ret < 0) {
				count(ret < 0 ? C_PATH_OTHERERR : C_PATH_OK);
				return 0;
			}
		}
	} else {
		count(C_NS_SEEN);
	}

	struct vfs_path_event *e = reserve_path();
	if (!e) {
		count(C_DROP_PATH);
		return 0;
	}
	fill_hdr(&e->hdr, id, fl.kind, fl.op, ret);
	long n = bpf_probe_read_user_str(e->path, sizeof(e->path), (const void *)fl.p1);
	if (n < 0)
		e->path[0] = 0;
	else if (n == sizeof(e->path))
		e->hdr.flags |= VFS_F_TRUNCATED;
	e->path2[0] = 0;
	if (fl.p2) {
		n = bpf_probe_read_user_str(e->path2, sizeof(e->path2), (const void *)fl.p2);
		if (n < 0)
			e->path2[0] = 0;
		else if (n == sizeof(e->path2))
			e->hdr.flags |= VFS_F_TRUNCATED;
	}
	if (!prefix_ok(e->path) && !(fl.p2 && prefix_ok(e->path2))) {
		count(C_FILT_PREFIX);
		discard_path(e);
		return 0;
	}
	submit_path(ctx, e);
	return 0;
}

/* One enter/exit pair per syscall; VFS_HAVE_<name> says the tracepoint exists here. */
#define PATH1(sc, kind, op, field) \
TRACEPOINT_PROBE(syscalls, sys_enter_##sc) { return on_enter(kind, op, args->field, 0); } \
TRACEPOINT_PROBE(syscalls, sys_exit_##sc) { return on_exit(args, args->ret); }
#define PATH2(sc, kind, op, f1, f2) \
TRACEPOINT_PROBE(syscalls, sys_enter_##sc) { return on_enter(kind, op, args->f1, args->f2); } \
TRACEPOINT_PROBE(syscalls, sys_exit_##sc) { return on_exit(args, args->ret); }

#ifdef VFS_HAVE_openat
PATH1(openat, VFS_K_PATH_SYSCALL, VFS_OP_OPENAT, filename)
#endif
#ifdef VFS_HAVE_openat2
PATH1(openat2, VFS_K_PATH_SYSCALL, VFS_OP_OPENAT2, filename)
#endif
#ifdef VFS_HAVE_newfstatat
PATH1(newfstatat, VFS_K_PATH_SYSCALL, VFS_OP_NEWFSTATAT, filename)
#endif
#ifdef VFS_HAVE_statx
PATH1(statx, VFS_K_PATH_SYSCALL, VFS_OP_STATX, filename)
#endif
#ifdef VFS_HAVE_faccessat
PATH1(faccessat, VFS_K_PATH_SYSCALL, VFS_OP_FACCESSAT, filename)
#endif
#ifdef VFS_HAVE_faccessat2
PATH1(faccessat2, VFS_K_PATH_SYSCALL, VFS_OP_FACCESSAT2, filename)
#endif
#ifdef VFS_HAVE_execve
PATH1(execve, VFS_K_PATH_SYSCALL, VFS_OP_EXECVE, filename)
#endif
#ifdef VFS_HAVE_readlinkat
PATH1(readlinkat, VFS_K_PATH_SYSCALL, VFS_OP_READLINKAT, pathname)
#endif
#ifdef VFS_HAVE_chdir
PATH1(chdir, VFS_K_PATH_SYSCALL, VFS_OP_CHDIR, filename)
#endif
/* Legacy x86-64 entry points: stat(2) is sys_newstat, lstat(2) sys_newlstat. */
#ifdef VFS_HAVE_open
PATH1(open, VFS_K_PATH_SYSCALL, VFS_OP_OPEN, filename)
#endif
#ifdef VFS_HAVE_newstat
PATH1(newstat, VFS_K_PATH_SYSCALL, VFS_OP_STAT, filename)
#endif
#ifdef VFS_HAVE_newlstat
PATH1(newlstat, VFS_K_PATH_SYSCALL, VFS_OP_LSTAT, filename)
#endif
#ifdef VFS_HAVE_access
PATH1(access, VFS_K_PATH_SYSCALL, VFS_OP_ACCESS, filename)
#endif
#ifdef VFS_HAVE_readlink
PATH1(readlink, VFS_K_PATH_SYSCALL, VFS_OP_READLINK, path)
#endif

#ifdef VFS_HAVE_unlinkat
PATH1(unlinkat, VFS_K_NS_OP, VFS_OP_UNLINK, pathname)
#endif
#ifdef VFS_HAVE_unlink
PATH1(unlink, VFS_K_NS_OP, VFS_OP_UNLINK, pathname)
#endif
#ifdef VFS_HAVE_rmdir
PATH1(rmdir, VFS_K_NS_OP, VFS_OP_RMDIR, pathname)
#endif
#ifdef VFS_HAVE_mkdirat
PATH1(mkdirat, VFS_K_NS_OP, VFS_OP_MKDIR, pathname)
#endif
#ifdef VFS_HAVE_mkdir
PATH1(mkdir, VFS_K_NS_OP, VFS_OP_MKDIR, pathname)
#endif
#ifdef VFS_HAVE_renameat2
PATH2(renameat2, VFS_K_NS_OP, VFS_OP_RENAME, oldname, newname)
#endif
#ifdef VFS_HAVE_renameat
PATH2(renameat, VFS_K_NS_OP, VFS_OP_RENAME, oldname, newname)
#endif
#ifdef VFS_HAVE_rename
PATH2(rename, VFS_K_NS_OP, VFS_OP_RENAME, oldname, newname)
#endif
#ifdef VFS_HAVE_linkat
PATH2(linkat, VFS_K_NS_OP, VFS_OP_LINK, oldname, newname)
#endif
#ifdef VFS_HAVE_link
PATH2(link, VFS_K_NS_OP, VFS_OP_LINK, oldname, newname)
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
