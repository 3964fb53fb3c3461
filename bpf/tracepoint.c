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
 *    that explains an ENOENT is usually someone else's), prefix-filtered
 *    (one on a relative path is kept: paths_pass);
 *    and every operation that can create a name, on success: an open with
 *    O_CREAT (NS_OP CREATE, decided here from the open's flags, so an open
 *    without it ends where it did; from every process too, whatever the
 *    pid/comm filter), creat, mknod*, symlink*, mount and
 *    move_mount (the mount point), rename with RENAME_EXCHANGE (flag
 *    EXCHANGE), and io_uring submissions whose opcode can create a name
 *    (NS_OP URING: their paths are in user memory no tracepoint shows);
 *  - on PATH_SYSCALL and NS_OP records: the dirfd the (created) path is
 *    relative to (`seq`, flag DIRFD) and the inode number of the directory
 *    it starts from, read in the kernel (`ino`, flag BASE: VFS_BASE, with
 *    offsets the tracer reads from the kernel's BTF), so user space can
 *    place a relative or dirfd-relative creator without resolving it;
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
		/* A creating open that failed created nothing: only the
		 * namespace operations of old are streamed whatever their result. */
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

/*
 * The directory a path starts from, as an inode number (0: not read): the
 * task's root for an absolute path, its cwd for AT_FDCWD, else the dirfd's
 * file. VFS_BASE and the VFS_OFF_* offsets come from the kernel's BTF
 * (tracers/tracepoint.py base_plan()); every read is a probe read of kernel
 * memory, so nothing depends on the headers BCC compiles against. Run only
 * for records streamed, never on a result nobody streams.
 */
#ifdef VFS_BASE
static __always_inline u64 vfs_kread(u64 at)
{
	u64 v = 0;
	if (at)
		bpf_probe_read_kernel(&v, sizeof(v), (void *)at);
	return v;
}

static __always_inline u64 base_ino(s32 dfd, char first)
{
	u64 task = (u64)bpf_get_current_task();
	u64 dentry = 0;
	if (first == '/' || dfd == VFS_AT_FDCWD) {
		u64 fs = vfs_kread(task + VFS_OFF_TASK_FS);
		if (!fs)
			return 0;
		dentry = vfs_kread(fs + (first == '/' ? VFS_OFF_FS_ROOT_DENTRY : VFS_OFF_FS_PWD_DENTRY));
	} else {
		if (dfd < 0)
			return 0;
		u64 fdt = vfs_kread(vfs_kread(task + VFS_OFF_TASK_FILES) + VFS_OFF_FILES_FDT);
		if (!fdt)
			return 0;
		u32 max = 0;
		bpf_probe_read_kernel(&max, sizeof(max), (void *)(fdt + VFS_OFF_FDT_MAX_FDS));
		if ((u32)dfd >= max)
			return 0;
		u64 arr = vfs_kread(fdt + VFS_OFF_FDT_FD);
		u64 file = arr ? vfs_kread(arr + 8 * (u64)(u32)dfd) : 0;
		dentry = file ? vfs_kread(file + VFS_OFF_FILE_PATH_DENTRY) : 0;
	}
	u64 inode = dentry ? vfs_kread(dentry + VFS_OFF_DENTRY_INODE) : 0;
	return inode ? vfs_kread(inode + VFS_OFF_INODE_INO) : 0;
}
#endif

/* The dirfd and base directory of a record whose (created) path is `path`. */
static __always_inline void set_base(struct vfs_event *h, s32 dfd, const char *path)
{
	h->seq = (u32)dfd;
	h->flags |= VFS_F_DIRFD;
#ifdef VFS_BASE
	u64 ino = base_ino(dfd, path[0]);
	if (ino) {
		h->ino = ino;
		h->flags |= VFS_F_BASE;
		return;
	}
#endif
	vfs_count(VFS_C_BASE_UNREAD);
}

/*
 * The path-prefix filter of a record: its path, or a rename's/link's second
 * path, under the prefix. A namespace operation on a relative path (to its
 * cwd or a dirfd) can be under it too, and only user space can tell (its
 * BASE directory): it is kept, or a creator or a removal by dirfd would be
 * dropped and the failure it explains judged without it.
 */
static __always_inline int paths_pass(u16 kind, const char *p1, const char *p2, int two)
{
#ifdef VFS_FILTER_PREFIX
	if (kind == VFS_K_NS_OP && (p1[0] != '/' || (two && p2[0] != '/')))
		return 1;
	return prefix_ok(p1) || (two && prefix_ok(p2));
#else
	return 1;
#endif
}

/* One PATH_SYSCALL / NS_OP record: p1, p2 are the syscall's user path pointers (p2 may be 0);
 * dfd the dirfd of the path the record is about (p2's when there are two: the name created);
 * xflags flags the caller decided (EXCHANGE). */
static __always_inline int emit_path(void *ctx, u64 id, u16 kind, u16 op, long ret, u64 p1, u64 p2, s32 dfd,
				     u32 xflags)
{
	struct vfs_path_event *e = vfs_pev_reserve();
	if (!e)
		return 0;
	vfs_fill(&e->hdr, id, kind, op);
	e->hdr.ret = ret;
	e->hdr.flags |= xflags;
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
	if (!paths_pass(kind, e->path, e->path2, p2 != 0)) {
		vfs_count(VFS_C_FILTERED_PREFIX);
		vfs_pev_discard(e);
		return 0;
	}
	set_base(&e->hdr, dfd, p2 ? e->path2 : e->path);
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
	s32 dfd;        /* the window's dirfd: part of what makes a repeat identical */
	u32 base_flags; /* DIRFD | BASE as the window's first record had them */
	u64 base_ino;
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
	e->hdr.flags = VFS_F_COALESCED | (r->len >= VFS_PATH_LEN ? VFS_F_TRUNCATED : 0) | r->base_flags;
	e->hdr.seq = (u32)r->dfd;
	e->hdr.ino = r->base_ino;
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

static __always_inline int emit_failure(void *ctx, u64 id, u16 op, long ret, u64 p1, s32 dfd)
{
	int z = 0;
	struct repeat_t *r = repeats.lookup(&z);
	if (!r)
		return emit_path(ctx, id, VFS_K_PATH_SYSCALL, op, ret, p1, 0, dfd, 0);
	u32 nxt = (r->cur ^ 1) & 1;
	long n = bpf_probe_read_user_str(r->buf[nxt], VFS_PATH_LEN, (const void *)p1);
	if (n <= 0)
		return emit_path(ctx, id, VFS_K_PATH_SYSCALL, op, ret, p1, 0, dfd, 0);
	if (!prefix_ok(r->buf[nxt])) {
		vfs_count(VFS_C_FILTERED_PREFIX);
		return 0;
	}
	u64 now = bpf_ktime_get_ns();
	u64 key = ((u64)(u32)id << 32) | op;
	if (r->open && r->key == key && r->ret == ret && r->len == (u32)n && r->dfd == dfd &&
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
	set_base(&e->hdr, dfd, e->path);
	__builtin_memcpy(r->comm, e->hdr.comm, sizeof(r->comm));
	r->dfd = dfd;
	r->base_flags = e->hdr.flags & (VFS_F_DIRFD | VFS_F_BASE);
	r->base_ino = e->hdr.ino;
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

/*
 * How a probe reads the flags that decide what its result means (FL_*,
 * compile-time per syscall, so a probe without any has no test at all):
 * an open's O_CREAT (its flags argument; openat2's struct open_how, read
 * from user memory) and renameat2's RENAME_EXCHANGE.
 */
#define FL_NONE 0
#define FL_OPEN 1     /* the argument is the open flags */
#define FL_HOW 2      /* the argument points to struct open_how, whose first member is the u64 flags */
#define FL_RENAME 3   /* the argument is renameat2's flags */

/* An open that made or may have made a name: O_CREAT, and it succeeded. */
static __always_inline int creates(int flk, u64 fl, long ret)
{
#ifdef VFS_NO_CREATORS
	return 0; /* tracers/tracepoint.py creators False: a benchmark's baseline */
#endif
	return (flk == FL_OPEN || flk == FL_HOW) && ret >= 0 && (fl & VFS_O_CREAT);
}

/* The flags value of a FL_HOW argument: how->flags (user memory). */
static __always_inline u64 how_flags(u64 how)
{
	u64 f = 0;
	if (how)
		bpf_probe_read_user(&f, sizeof(f), (const void *)how);
	return f;
}

/*
 * The record(s) for a syscall result. `pre_kept`: the probe already asked
 * result_wanted() (the probes with no flags to test do, before they fetch
 * any argument: the hit path of stat() ends there). An open that
 * succeeded with O_CREAT is a creator: streamed as NS_OP CREATE, every one
 * (a hit path that opens without O_CREAT pays the flag test, nothing more).
 */
static __always_inline int on_result(void *ctx, u64 id, u16 kind, u16 op, long ret, u64 p1, u64 p2, s32 dfd,
				     int flk, u64 fl, int pre_kept)
{
	u32 xflags = 0;
	if (kind == VFS_K_PATH_SYSCALL && creates(flk, fl, ret)) {
		vfs_count(VFS_C_CREATES);
		kind = VFS_K_NS_OP;
		op = VFS_OP_CREATE;
	}
	if (flk == FL_RENAME && (fl & VFS_RENAME_EXCHANGE))
		xflags |= VFS_F_EXCHANGE;
	if (!pre_kept && !result_wanted(kind, ret))
		return 0;
#if VFS_COALESCE_NS
	if (kind == VFS_K_PATH_SYSCALL && ret < 0 && !p2)
		return emit_failure(ctx, id, op, ret, p1, dfd);
#endif
	return emit_path(ctx, id, kind, op, ret, p1, p2, dfd, xflags);
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
#define VFS_SC_ARG4 r8
#define SC_ARG(r, n) ((u64)(r)->VFS_SC_ARG##n)
/* An argument by its sys_enter_<sc> field name (enter+map mode) and its
 * 0-based index in the syscall (exit-only mode): tests/test_tracepoint_live.py
 * checks every pair against this kernel's format files. */
#define ARG(field, n) SC_ARG(r, n)
#define NOARG 0
#define CWD VFS_AT_FDCWD

#define SC_PROBE(sc, kind, op, P1, P2, DFD, FLK, FL) \
TRACEPOINT_PROBE(syscalls, sys_exit_##sc) \
{ \
	u64 id = bpf_get_current_pid_tgid(); \
	long ret = args->ret; \
	if (!vfs_not_self(id)) \
		return flush_self(args); \
	if ((FLK) == FL_NONE && (!task_passes(id, kind) || !result_wanted(kind, ret))) \
		return 0; \
	struct pt_regs *r = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf()); \
	u64 fl_ = (FLK) == FL_HOW ? how_flags((u64)(FL)) : (u64)(FL); \
	if ((FLK) != FL_NONE && !creates(FLK, fl_, ret) && !task_passes(id, kind)) \
		return 0; \
	return on_result(args, id, kind, op, ret, P1, P2, (s32)(DFD), FLK, fl_, (FLK) == FL_NONE); \
}

#else /* enter+map mode */
struct inflight_t {
	u64 p1;   /* user pointer: path */
	u64 p2;   /* user pointer: second path (rename/link) or 0 */
	u64 fl;   /* the flags FL_* says how to read, as read at enter */
	s32 dfd;
	u16 kind;
	u16 op;
	u32 unwanted; /* an O_CREAT open of a task the filter drops: kept only if it made a name */
};
/* LRU: a task killed inside a syscall never reaches sys_exit; its entry
 * must not pin a slot forever and make later updates fail. */
BPF_TABLE("lru_hash", u32, struct inflight_t, inflight, 65536);

static __always_inline int on_enter(u16 kind, u16 op, u64 p1, u64 p2, s32 dfd, u64 fl, int flk)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!vfs_not_self(id))
		return 0;
	/* An open with O_CREAT may make a name whatever task runs it: its filter waits for the result. */
	u32 unwanted = 0;
	if ((flk == FL_OPEN || flk == FL_HOW) && (fl & VFS_O_CREAT))
		unwanted = kind == VFS_K_PATH_SYSCALL && !vfs_task_wanted(id);
	else if (!task_passes(id, kind))
		return 0;
	u32 tid = (u32)id;
	struct inflight_t f = {};
	f.p1 = p1;
	f.p2 = p2;
	f.fl = fl;
	f.dfd = dfd;
	f.kind = kind;
	f.op = op;
	f.unwanted = unwanted;
	inflight.update(&tid, &f);
	return 0;
}

static __always_inline int on_exit(void *ctx, long ret, int flk)
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
	/* The task filter ran at enter, but for an O_CREAT open: a creator if it made a name, else filtered. */
	if (fl.unwanted && !creates(flk, fl.fl, ret)) {
		vfs_count(VFS_C_FILTERED_TASK);
		return 0;
	}
	return on_result(ctx, id, fl.kind, fl.op, ret, fl.p1, fl.p2, fl.dfd, flk, fl.fl, 0);
}

#define ARG(field, n) ((u64)args->field)
#define NOARG 0
#define CWD VFS_AT_FDCWD

/* One enter/exit pair per syscall. openat2's open_how is read at enter. */
#define SC_PROBE(sc, kind, op, P1, P2, DFD, FLK, FL) \
TRACEPOINT_PROBE(syscalls, sys_enter_##sc) \
{ \
	u64 fl_ = (FLK) == FL_HOW ? how_flags((u64)(FL)) : (u64)(FL); \
	return on_enter(kind, op, P1, P2, (s32)(DFD), fl_, FLK); \
} \
TRACEPOINT_PROBE(syscalls, sys_exit_##sc) { return on_exit(args, args->ret, FLK); }
#endif

/* Each syscall: its path argument(s), the dirfd of the path the record is
 * about (CWD where the syscall has none) and the flags that decide what
 * its result means, each as ARG(sys_enter_<sc> field, index);
 * VFS_HAVE_<name> says the tracepoints exist here. */
#define PATH1(sc, op, P, D) SC_PROBE(sc, VFS_K_PATH_SYSCALL, op, P, NOARG, D, FL_NONE, 0)
#define OPEN1(sc, op, P, D, FL, FLK) SC_PROBE(sc, VFS_K_PATH_SYSCALL, op, P, NOARG, D, FLK, FL)
#define NS1(sc, op, P, D) SC_PROBE(sc, VFS_K_NS_OP, op, P, NOARG, D, FL_NONE, 0)
#define NS2(sc, op, P1, P2, D2, FLK, FL) SC_PROBE(sc, VFS_K_NS_OP, op, P1, P2, D2, FLK, FL)

#ifdef VFS_HAVE_openat
OPEN1(openat, VFS_OP_OPENAT, ARG(filename, 1), ARG(dfd, 0), ARG(flags, 2), FL_OPEN)
#endif
#ifdef VFS_HAVE_openat2
OPEN1(openat2, VFS_OP_OPENAT2, ARG(filename, 1), ARG(dfd, 0), ARG(how, 2), FL_HOW)
#endif
#ifdef VFS_HAVE_newfstatat
PATH1(newfstatat, VFS_OP_NEWFSTATAT, ARG(filename, 1), ARG(dfd, 0))
#endif
#ifdef VFS_HAVE_statx
PATH1(statx, VFS_OP_STATX, ARG(filename, 1), ARG(dfd, 0))
#endif
#ifdef VFS_HAVE_faccessat
PATH1(faccessat, VFS_OP_FACCESSAT, ARG(filename, 1), ARG(dfd, 0))
#endif
#ifdef VFS_HAVE_faccessat2
PATH1(faccessat2, VFS_OP_FACCESSAT2, ARG(filename, 1), ARG(dfd, 0))
#endif
#ifdef VFS_HAVE_execve
PATH1(execve, VFS_OP_EXECVE, ARG(filename, 0), CWD)
#endif
#ifdef VFS_HAVE_readlinkat
PATH1(readlinkat, VFS_OP_READLINKAT, ARG(pathname, 1), ARG(dfd, 0))
#endif
#ifdef VFS_HAVE_chdir
PATH1(chdir, VFS_OP_CHDIR, ARG(filename, 0), CWD)
#endif
/* Legacy x86-64 entry points: stat(2) is sys_newstat, lstat(2) sys_newlstat. */
#ifdef VFS_HAVE_open
OPEN1(open, VFS_OP_OPEN, ARG(filename, 0), CWD, ARG(flags, 1), FL_OPEN)
#endif
#ifdef VFS_HAVE_newstat
PATH1(newstat, VFS_OP_STAT, ARG(filename, 0), CWD)
#endif
#ifdef VFS_HAVE_newlstat
PATH1(newlstat, VFS_OP_LSTAT, ARG(filename, 0), CWD)
#endif
#ifdef VFS_HAVE_access
PATH1(access, VFS_OP_ACCESS, ARG(filename, 0), CWD)
#endif
#ifdef VFS_HAVE_readlink
PATH1(readlink, VFS_OP_READLINK, ARG(path, 0), CWD)
#endif

#ifdef VFS_HAVE_unlinkat
NS1(unlinkat, VFS_OP_UNLINK, ARG(pathname, 1), ARG(dfd, 0))
#endif
#ifdef VFS_HAVE_unlink
NS1(unlink, VFS_OP_UNLINK, ARG(pathname, 0), CWD)
#endif
#ifdef VFS_HAVE_rmdir
NS1(rmdir, VFS_OP_RMDIR, ARG(pathname, 0), CWD)
#endif
#ifdef VFS_HAVE_mkdirat
NS1(mkdirat, VFS_OP_MKDIR, ARG(pathname, 1), ARG(dfd, 0))
#endif
#ifdef VFS_HAVE_mkdir
NS1(mkdir, VFS_OP_MKDIR, ARG(pathname, 0), CWD)
#endif
#ifdef VFS_HAVE_renameat2
NS2(renameat2, VFS_OP_RENAME, ARG(oldname, 1), ARG(newname, 3), ARG(newdfd, 2), FL_RENAME, ARG(flags, 4))
#endif
#ifdef VFS_HAVE_renameat
NS2(renameat, VFS_OP_RENAME, ARG(oldname, 1), ARG(newname, 3), ARG(newdfd, 2), FL_NONE, 0)
#endif
#ifdef VFS_HAVE_rename
NS2(rename, VFS_OP_RENAME, ARG(oldname, 0), ARG(newname, 1), CWD, FL_NONE, 0)
#endif
#ifdef VFS_HAVE_linkat
NS2(linkat, VFS_OP_LINK, ARG(oldname, 1), ARG(newname, 3), ARG(newdfd, 2), FL_NONE, 0)
#endif
#ifdef VFS_HAVE_link
NS2(link, VFS_OP_LINK, ARG(oldname, 0), ARG(newname, 1), CWD, FL_NONE, 0)
#endif
/* The other creators (streamed whatever their result, as every NS_OP; the
 * correlator reads the successes). symlink: path is the target text,
 * path2 the link made; mount/move_mount: the mount point. */
#ifdef VFS_HAVE_creat
NS1(creat, VFS_OP_CREATE, ARG(pathname, 0), CWD)
#endif
#ifdef VFS_HAVE_mknodat
NS1(mknodat, VFS_OP_MKNOD, ARG(filename, 1), ARG(dfd, 0))
#endif
#ifdef VFS_HAVE_mknod
NS1(mknod, VFS_OP_MKNOD, ARG(filename, 0), CWD)
#endif
#ifdef VFS_HAVE_symlinkat
NS2(symlinkat, VFS_OP_SYMLINK, ARG(oldname, 0), ARG(newname, 2), ARG(newdfd, 1), FL_NONE, 0)
#endif
#ifdef VFS_HAVE_symlink
NS2(symlink, VFS_OP_SYMLINK, ARG(oldname, 0), ARG(newname, 1), CWD, FL_NONE, 0)
#endif
#ifdef VFS_HAVE_mount
NS1(mount, VFS_OP_MOUNT, ARG(dir_name, 1), CWD)
#endif
/* move_mount(2): 5.2, commit 2db154b3ea8e ("vfs: syscall: Add move_mount(2) to move mounts around"). */
#ifdef VFS_HAVE_move_mount
NS1(move_mount, VFS_OP_MOUNT, ARG(to_pathname, 3), ARG(to_dfd, 2))
#endif

/*
 * io_uring submissions that can create a name: the tier sees the opcode,
 * not the path (it is in the submission queue entry's user memory). One
 * small record each (NS_OP URING, `seq` the opcode): the correlator takes
 * any around a failure as a creator it could not see. The tracepoint is
 * io_uring_submit_req since 5.19 (Stefan Roesch's "io-uring: Make
 * tracepoints consistent" series renamed io_uring_submit_sqe); both carry
 * `opcode`, and the tracer compiles the one this kernel has.
 */
static __always_inline int on_uring(void *ctx, u8 opc)
{
	if (opc != VFS_IORING_OP_OPENAT && opc != VFS_IORING_OP_OPENAT2 && opc != VFS_IORING_OP_RENAMEAT &&
	    opc != VFS_IORING_OP_MKDIRAT && opc != VFS_IORING_OP_SYMLINKAT && opc != VFS_IORING_OP_LINKAT)
		return 0;
	vfs_count(VFS_C_URING_CREATES);
	struct vfs_event *e = vfs_ev_reserve();
	if (!e)
		return 0;
	vfs_fill(e, bpf_get_current_pid_tgid(), VFS_K_NS_OP, VFS_OP_URING);
	e->seq = opc;
	vfs_ev_submit(ctx, e);
	return 0;
}
#ifdef VFS_HAVE_io_uring_submit_req
TRACEPOINT_PROBE(io_uring, io_uring_submit_req) { return on_uring(args, args->opcode); }
#endif
#ifdef VFS_HAVE_io_uring_submit_sqe
TRACEPOINT_PROBE(io_uring, io_uring_submit_sqe) { return on_uring(args, args->opcode); }
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
