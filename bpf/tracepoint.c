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
 *    the alloc probe is compiled only when the tracer asks for it
 *    (VFS_HAVE_kmem_cache_alloc / VFS_RAW_KMEM_CACHE_ALLOC_ARG): it runs on
 *    every slab allocation of the machine for records no verdict of this
 *    tier reads;
 *  - SHRINK_START / SHRINK_END: vmscan:mm_shrink_slab_start/end.
 *
 * Built by tracers/tracepoint.py through bpf.program("tracepoint.c") (the
 * generated kinds, ops, flags and counter slots, and common.h), with
 * numeric -D options only (VFS_FILTER_PID, VFS_COMM0/1, VFS_HAVE_<syscall>,
 * ring sizes, VFS_COALESCE_NS, VFS_EXIT_ONLY for the exit-only mode
 * below). The path prefix arrives through the `prefix` array map, never
 * as C text.
 */
#define VFS_EVENTS
#define VFS_PATH_EVENTS
#include "common.h"

#ifndef VFS_STREAM_SUCCESS
#define VFS_STREAM_SUCCESS 0
#endif
#ifndef VFS_STREAM_DENTRY
#define VFS_STREAM_DENTRY 1
#endif
#ifndef VFS_COALESCE_NS
#define VFS_COALESCE_NS 0
#endif

struct prefix_t {
	u32 len;
	char p[VFS_PATH_LEN];
};
BPF_ARRAY(prefix, struct prefix_t, 1);

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

/* The pid/comm filter applies to path syscalls (NS_OPs come from every
 * process); counts what it drops. */
static __always_inline int task_passes(u64 id, u16 kind)
{
	if (kind == VFS_K_PATH_SYSCALL && !vfs_task_wanted(id)) {
		vfs_count(VFS_C_FILTERED_TASK);
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
		vfs_count(VFS_C_NS_OPS);
		return 1;
	}
	/* One counter update per path syscall: the hit path (a success nobody
	 * streams) is the hottest there is. VFS_C_PATH_SYSCALLS counts the kept
	 * ones; the tracer adds the two not-streamed slots to report all. */
	if (ret != VFS_ENOENT && (!VFS_STREAM_SUCCESS || ret < 0)) {
		vfs_count(ret < 0 ? VFS_C_PATH_OTHER_ERRNO_NOT_STREAMED : VFS_C_PATH_OK_NOT_STREAMED);
		return 0;
	}
	vfs_count(VFS_C_PATH_SYSCALLS);
	return 1;
}

/* One PATH_SYSCALL / NS_OP record: p1, p2 are the syscall's user path pointers (p2 may be 0). */
static __always_inline int emit_path(void *ctx, u64 id, u16 kind, u16 op, long ret, u64 p1, u64 p2)
{
	struct vfs_path_event *e = vfs_pev_reserve();
	if (!e)
		return 0;
	vfs_fill(&e->hdr, id, kind, op);
	e->hdr.ret = ret;
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
		vfs_count(VFS_C_FILTERED_PREFIX);
		vfs_pev_discard(e);
		return 0;
	}
	vfs_pev_submit(ctx, e);
	return 0;
}

#if VFS_COALESCE_NS
/*
 * In-kernel coalescing of a failure storm (VFS_COALESCE_NS > 0, the window).
 * Build systems and interpreters probe include and import paths: the same
 * task fails the same stat() on the same path hundreds of thousands of
 * times a second. The first failure of a run is streamed as usual and
 * opens a window; identical ones after it (same task, syscall, errno and
 * path, within VFS_COALESCE_NS of the window's first record) are only
 * counted here, and later reported as one record whose `count` says how
 * many it stands for (flag COALESCED, ts_ns the last of them), so every
 * failed lookup is still accounted for at the cost of a string read and
 * a compare. The folded repeats are reported when a different failure or
 * an expired window comes on this CPU, and when vfstrace itself makes a
 * traced syscall there (tracers/tracepoint.py does, per CPU, on each
 * drain): its own calls are never recorded, only used to flush.
 * The state is per CPU (a per-CPU array lookup, no hash): a task that
 * migrates mid-storm leaves its count on the old CPU until flushed there.
 */
struct repeat_t {
	u64 key;        /* tid << 32 | op */
	s64 ret;
	u64 id;         /* pid_tgid of the task */
	u64 first_ts;   /* the record that opened the window */
	u64 last_ts;    /* the latest repeat folded */
	u32 n;          /* repeats folded and not yet reported */
	u32 len;        /* path bytes incl. NUL, as bpf_probe_read_user_str returned */
	u32 cur;        /* buf[cur] is the window's path, buf[cur ^ 1] the candidate */
	u32 open;
	u64 comm[2];
	char buf[2][VFS_PATH_LEN];
};
BPF_PERCPU_ARRAY(repeats, struct repeat_t, 1);

/* a and b hold NUL-terminated strings of n bytes each (NUL included): equal? */
static __always_inline int same_path(const char *a, const char *b, u32 n)
{
	const u64 *x = (const u64 *)a, *y = (const u64 *)b;
#pragma unroll
	for (int i = 0; i < VFS_PATH_LEN / 8; i++) {
		u32 at = i * 8;
		if (at >= n)
			break;
		u32 rem = n - at;
		u64 mask = rem >= 8 ? ~0ULL : (1ULL << (rem * 8)) - 1;
		if ((x[i] ^ y[i]) & mask)
			return 0;
	}
	return 1;
}

/* Report the repeats folded so far as one record; the window stays open. */
static __always_inline void flush_repeats(void *ctx, struct repeat_t *r)
{
	u32 n = r->n;
	if (!n)
		return;
	r->n = 0;
	struct vfs_path_event *e = vfs_pev_reserve();
	if (!e) {
		vfs_count_lost(VFS_C_LOST_PATH, n - 1); /* it stood for n results */
		return;
	}
	vfs_fill(&e->hdr, r->id, VFS_K_PATH_SYSCALL, (u16)r->key);
	e->hdr.ts_ns = r->last_ts;
	e->hdr.ret = r->ret;
	e->hdr.count = n;
	e->hdr.flags = VFS_F_COALESCED | (r->len >= VFS_PATH_LEN ? VFS_F_TRUNCATED : 0);
	__builtin_memcpy(e->hdr.comm, r->comm, sizeof(r->comm));
	bpf_probe_read_kernel(e->path, sizeof(e->path), r->buf[r->cur & 1]);
	vfs_pev_submit(ctx, e);
}

static __always_inline int flush_self(void *ctx)
{
	int z = 0;
	struct repeat_t *r = repeats.lookup(&z);
	if (r)
		flush_repeats(ctx, r);
	return 0;
}

static __always_inline int emit_failure(void *ctx, u64 id, u16 op, long ret, u64 p1)
{
	int z = 0;
	struct repeat_t *r = repeats.lookup(&z);
	if (!r)
		return emit_path(ctx, id, VFS_K_PATH_SYSCALL, op, ret, p1, 0);
	u32 nxt = (r->cur ^ 1) & 1;
	long n = bpf_probe_read_user_str(r->buf[nxt], VFS_PATH_LEN, (const void *)p1);
	if (n <= 0)
		return emit_path(ctx, id, VFS_K_PATH_SYSCALL, op, ret, p1, 0);
	if (!prefix_ok(r->buf[nxt])) {
		vfs_count(VFS_C_FILTERED_PREFIX);
		return 0;
	}
	u64 now = bpf_ktime_get_ns();
	u64 key = ((u64)(u32)id << 32) | op;
	if (r->open && r->key == key && r->ret == ret && r->len == (u32)n &&
	    now - r->first_ts < VFS_COALESCE_NS && same_path(r->buf[r->cur & 1], r->buf[nxt], (u32)n)) {
		r->n++;
		r->last_ts = now;
		vfs_count(VFS_C_COALESCED);
		return 0;
	}
	flush_repeats(ctx, r);
	r->open = 0;
	struct vfs_path_event *e = vfs_pev_reserve();
	if (!e)
		return 0;
	vfs_fill(&e->hdr, id, VFS_K_PATH_SYSCALL, op);
	e->hdr.ts_ns = now;
	e->hdr.ret = ret;
	if (n >= VFS_PATH_LEN)
		e->hdr.flags |= VFS_F_TRUNCATED;
	bpf_probe_read_kernel(e->path, sizeof(e->path), r->buf[nxt]);
	e->path2[0] = 0;
	__builtin_memcpy(r->comm, e->hdr.comm, sizeof(r->comm));
	vfs_pev_submit(ctx, e);
	r->cur = nxt;
	r->key = key;
	r->ret = ret;
	r->id = id;
	r->len = (u32)n;
	r->first_ts = now;
	r->last_ts = now;
	r->open = 1;
	return 0;
}
#else
static __always_inline int flush_self(void *ctx)
{
	return 0;
}
#endif

/* The record(s) for a syscall result that result_wanted() kept. */
static __always_inline int emit_result(void *ctx, u64 id, u16 kind, u16 op, long ret, u64 p1, u64 p2)
{
#if VFS_COALESCE_NS
	if (kind == VFS_K_PATH_SYSCALL && ret < 0 && !p2)
		return emit_failure(ctx, id, op, ret, p1);
#endif
	return emit_path(ctx, id, kind, op, ret, p1, p2);
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
	if (!vfs_not_self(id)) \
		return flush_self(args); \
	if (!task_passes(id, kind) || !result_wanted(kind, ret)) \
		return 0; \
	struct pt_regs *r = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf()); \
	return emit_result(args, id, kind, op, ret, p1, p2); \
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
	if (!vfs_not_self(id) || !task_passes(id, kind))
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
		if (!vfs_not_self(id))
			return flush_self(ctx);
		/* Filtered tasks never stored an entry; only count real misses
		 * (a call in flight when the probes attached). */
		if (vfs_task_wanted(id))
			vfs_count(VFS_C_EXIT_WITHOUT_ENTER);
		return 0;
	}
	struct inflight_t fl = *f;
	inflight.delete(&tid);
	/* The task filter ran at enter. */
	if (!result_wanted(fl.kind, ret))
		return 0;
	return emit_result(ctx, id, fl.kind, fl.op, ret, fl.p1, fl.p2);
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

/* One D_FREE / D_ALLOC record for the dentry at `ptr`. */
static __always_inline int emit_dentry(void *ctx, u16 kind, u64 ptr)
{
	struct vfs_event *e = vfs_ev_reserve();
	if (!e)
		return 0;
	vfs_fill(e, bpf_get_current_pid_tgid(), kind, VFS_OP_NONE);
	e->dentry = ptr;
	vfs_ev_submit(ctx, e);
	return 0;
}

/* A kmem_cache_free/alloc: counted and (VFS_STREAM_DENTRY) streamed when
 * it is the dentry cache's (`is_dcache`, decided by the probe's own test). */
static __always_inline int on_dentry_cache(void *ctx, int is_dcache, u16 kind, int slot, u64 ptr)
{
	if (!is_dcache)
		return 0;
	vfs_count(slot);
	if (!VFS_STREAM_DENTRY)
		return 0;
	return emit_dentry(ctx, kind, ptr);
}

#ifdef VFS_RAW_KMEM
/*
 * Raw tracepoints (tracers/tracepoint.py raw_kmem_plan() says where the
 * cache argument is): no record is built, and after the first dentry-cache
 * event the test is one compare with the cache's pointer, learned here by
 * reading its name once (VFS_KMEM_ARG_CACHE: the argument is the struct
 * kmem_cache, whose `name` is at VFS_OFF_KMEM_CACHE_NAME; else it is the
 * name string itself, as constant per cache).
 */
BPF_ARRAY(dentry_cachep, u64, 1);

static __always_inline int is_dentry_cache_arg(u64 c)
{
	int z = 0;
	u64 *known = dentry_cachep.lookup(&z);
	if (!known || !c)
		return 0;
	if (*known)
		return *known == c;
	u64 name = c;
#ifdef VFS_KMEM_ARG_CACHE
	name = 0;
	bpf_probe_read_kernel(&name, sizeof(name), (void *)(c + VFS_OFF_KMEM_CACHE_NAME));
#endif
	u64 s = 0;
	if (!name || bpf_probe_read_kernel(&s, 7, (void *)name))
		return 0;
	if (s != DENTRY_NAME_LE)
		return 0;
	*known = c;
	return 1;
}

#ifdef VFS_RAW_KMEM_CACHE_FREE_ARG
RAW_TRACEPOINT_PROBE(kmem_cache_free)
{
	return on_dentry_cache(ctx, is_dentry_cache_arg(ctx->args[VFS_RAW_KMEM_CACHE_FREE_ARG]), VFS_K_D_FREE,
			       VFS_C_DENTRY_FREES, ctx->args[1]);
}
#endif
#ifdef VFS_RAW_KMEM_CACHE_ALLOC_ARG
RAW_TRACEPOINT_PROBE(kmem_cache_alloc)
{
	return on_dentry_cache(ctx, is_dentry_cache_arg(ctx->args[VFS_RAW_KMEM_CACHE_ALLOC_ARG]), VFS_K_D_ALLOC,
			       VFS_C_DENTRY_ALLOCS, ctx->args[1]);
}
#endif

#else /* classic tracepoints */
#ifdef VFS_HAVE_kmem_cache_free
TRACEPOINT_PROBE(kmem, kmem_cache_free)
{
	return on_dentry_cache(args, is_dentry_cache(args, args->data_loc_name), VFS_K_D_FREE, VFS_C_DENTRY_FREES,
			       (u64)args->ptr);
}
#endif

#ifdef VFS_HAVE_kmem_cache_alloc
TRACEPOINT_PROBE(kmem, kmem_cache_alloc)
{
	return on_dentry_cache(args, is_dentry_cache(args, args->data_loc_name), VFS_K_D_ALLOC, VFS_C_DENTRY_ALLOCS,
			       (u64)args->ptr);
}
#endif
#endif /* VFS_RAW_KMEM */

/* A shrinker run's start or end; `shr` (the shrinker) pairs them. */
static __always_inline int emit_shrink(void *ctx, u16 kind, s64 ret, u64 shr)
{
	struct vfs_event *e = vfs_ev_reserve();
	if (!e)
		return 0;
	vfs_fill(e, bpf_get_current_pid_tgid(), kind, VFS_OP_NONE);
	e->ret = ret;
	e->parent = shr;
	vfs_ev_submit(ctx, e);
	return 0;
}

#ifdef VFS_HAVE_mm_shrink_slab_start
TRACEPOINT_PROBE(vmscan, mm_shrink_slab_start)
{
	vfs_count(VFS_C_SHRINKER_RUNS);
	return emit_shrink(args, VFS_K_SHRINK_START, args->nr_objects_to_shrink, (u64)args->shr);
}
#endif

#ifdef VFS_HAVE_mm_shrink_slab_end
/* ret: objects freed = total_scan consumed is not exported; retval is the
 * shrinker's last return (freed in its last batch). */
TRACEPOINT_PROBE(vmscan, mm_shrink_slab_end)
{
	return emit_shrink(args, VFS_K_SHRINK_END, args->retval, (u64)args->shr);
}
#endif
