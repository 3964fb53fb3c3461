/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vfstrace kprobe/fentry tier: the functions of the RCU-walk / prune race.
 *
 * Lookup side (per task, a walk_state keyed by tid):
 *   walk role   (walk_component)  entry: parent dir, component, RCU mode
 *   rcu lookup  (__d_lookup_rcu)  return: the dentry found and the d_seq it
 *               sampled. On 6.x that sample lands in nd->next_seq; on 5.10
 *               it is a local of lookup_fast() (nd->seq is the *parent's*),
 *               so the one place that sees it on every kernel is the
 *               seqp argument of __d_lookup_rcu.
 *   lookup role (lookup_fast / do_lookup) return: the dentry it returns
 *   walk role   return: ret (-ENOENT, -ECHILD, ...), d_seq and d_inode of
 *               the dentry *now*; SEQ_CHANGED / NEGATIVE are judged here, in
 *               the kernel, at the moment the walk returns.
 *   re-check sites (try_to_unlazy, try_to_unlazy_next, unlazy_walk, ...)
 *               return: SEQ_CHECK with ret 0 or -ECHILD.
 *   step role   (step_into) outside walk_component only: the walk role for
 *               lookups that never enter walk_component. open_last_lookups()
 *               (an open()'s last component) calls lookup_fast() and then
 *               step_into() itself, and step_into() is where an RCU walk
 *               answers -ENOENT for a negative dentry. Entry: parent, name,
 *               the dentry and its d_seq sample (VFS_STEP_SEQ: argument 5 on
 *               5.10, nd->next_seq on 6.x); return: a WALK_RETURN with
 *               VFS_F_STEP, judged like walk_component's. Inside
 *               walk_component the walk role's state is there already and
 *               its return reports: step_into does nothing.
 * Prune side: PRUNE (__dentry_kill), UNHASH, IPUT, D_FREE (__d_free and
 *   __d_free_external, the RCU callbacks that free a dentry).
 *
 * Struct layouts never come from headers: every offset below is a -D
 * number computed from the running kernel's BTF (tracers/btf.py), because
 * struct nameidata is private to fs/namei.c and headers may not match.
 *
 * Per probe, VFS_MODE_<ROLE> is 0 (absent, the default), 1 (kprobe/kretprobe)
 * or 2 (fentry/fexit, function VFS_FN_<ROLE> with VFS_NARGS_<ROLE> parameters).
 *
 * Filtering in the kernel: only failed walks (-ENOENT/-ECHILD), lookups
 * that find a dentry whose prune is in flight, failed re-checks, and the
 * prune side cross to user space; everything else is counted in the
 * per-CPU `counts` array. pid/comm filters apply to the lookup side only:
 * pruning runs in whatever task reclaims memory, and the correlator needs
 * all of it.
 */
#include <linux/sched.h>
#include <linux/namei.h>
#define VFS_EVENTS
/* Counter slots VFS_C_* come from vfstrace.events.KprobeCounter. */
#include "common.h"

struct walk_state {
	union {
		struct {
			u32 tid;    /* the task whose walk this is (a task slot is shared) */
			u32 active; /* 1 between the walk's entry and its return */
		};
		u64 owner;  /* both, read in one load: other tasks' probes read a slot */
	};
	u64 nd;
	u64 parent;
	u64 name_ptr;
	u64 dentry;      /* found by lookup_fast (any mode) */
	u64 rcu_dentry;  /* found by __d_lookup_rcu */
	u64 seqp;        /* __d_lookup_rcu's seqp, between its entry and return */
	u32 seq;         /* d_seq sampled by __d_lookup_rcu */
	u32 flags;       /* VFS_F_RCU, VFS_F_PRUNE_INFLIGHT */
	u64 rc_dentry;   /* re-check site argument, between entry and return */
	u32 step;        /* 1: opened by step_into (no walk_component around it) */
	u32 in_slot;     /* 1: kept in the task's slot of task_walks, 0: in walks,
			  * 2: in walks, holding a claim on the slot (below) */
	u32 n_rcu;       /* __d_lookup_rcu returns in this walk } counted at the */
	u32 n_lookup;    /* lookup role returns in this walk    } walk's return  */
	u32 seq_in_nd;   /* 1: seq not read yet, it is nd->next_seq (VFS_SEQ_AT_LOOKUP) */
	u32 pad;
};

/*
 * Walk state, per task. Every probe of a walk looks it up, so the lookup is
 * the hit path's main cost: a hash lookup (jhash, bucket walk, compare)
 * costs several times an empty program under a trampoline. So a walk keeps
 * its state in a direct-mapped array slot, task_walks[tid & mask] (an array
 * lookup is a bounds check and an add, inlined by the verifier), tagged
 * with its tid. Tasks whose tids share a slot can walk at the same time:
 * a walk owns the slot from its entry to its return, claimed by an atomic
 * add on `busy` and a read-back of 1 (the adds are ordered, so at most one
 * claimant reads 1, whatever the CPUs); a walk that does not get it keeps
 * its state in `walks`, an LRU hash (VFS_C_SLOT_BUSY counts those walks),
 * and a task's probes look there when the slot does not hold its walk.
 * Plain adds, not compare-and-swap, so that 5.10 (before BPF_FETCH and
 * BPF_CMPXCHG, 5.12) has the same slots as later kernels.
 * Two claimants that add at once can both read 2 and both give way, the
 * slot then free again: so a walk that goes aside while the slot still
 * carries its own task's tid (its last walk, ended) holds a claim on `busy`
 * until it ends (in_slot 2), or cur_walk() would take that ended walk for
 * the task's latest and never look aside.
 * A walk whose return was never seen (its kretprobe missed, or the probes
 * were attached between its entry and its return) leaves the slot marked
 * active, or its claim held: the same task's next walk takes it over, and
 * until then the tasks sharing that slot keep their walks in `walks`
 * (slower, nothing lost).
 */
#ifndef VFS_TASK_SLOTS
#define VFS_TASK_SLOTS 16384 /* a power of two */
#endif
struct task_slot {
	u32 busy; /* claims: 1 while a walk owns the slot (atomic adds only) */
	u32 pad;
	struct walk_state w;
};
BPF_ARRAY(task_walks, struct task_slot, VFS_TASK_SLOTS);
BPF_TABLE("lru_hash", u32, struct walk_state, walks, 16384);
BPF_TABLE("lru_hash", u64, u64, inflight, 65536);
/*
 * inflight_n[0]: at least the number of entries in `inflight` (below).
 * Every walk asks `inflight` about its dentry twice; most of the time no
 * prune is in flight at all, and one array load then answers for both
 * hash lookups. Added to before an insert and taken from after a delete
 * that removed something, so it never reads less than the entries there
 * are; an entry the LRU evicts leaves it higher, which only costs the
 * lookups it would have saved.
 */
BPF_ARRAY(inflight_n, s64, 1);

static __always_inline void inflight_add(s64 by)
{
	int zero = 0;
	s64 *n = inflight_n.lookup(&zero);
	if (n)
		__sync_fetch_and_add(n, by);
}

static __always_inline int inflight_none(void)
{
	int zero = 0;
	s64 *n = inflight_n.lookup(&zero);
	return n && *n <= 0;
}

static __always_inline void inflight_delete(u64 d)
{
	if (inflight.delete(&d) == 0)
		inflight_add(-1);
}

static __always_inline struct task_slot *task_slot(u32 tid)
{
	u32 k = tid & (VFS_TASK_SLOTS - 1);
	return task_walks.lookup(&k);
}

/* The task's walk in progress, or NULL. */
/* `owner` of tid's walk in progress. */
static __always_inline u64 walk_owner(u32 tid)
{
	union {
		struct {
			u32 tid;
			u32 active;
		};
		u64 owner;
	} k = { .tid = tid, .active = 1 };
	return k.owner;
}

/*
 * Outside a walk (complete_walk()'s try_to_unlazy, the lookup_fast() that
 * open_last_lookups() makes before its step_into()) the slot usually still
 * holds this task's last walk, ended, and no other claim: then this task
 * has no walk kept aside either, and the hash is not asked. A walk that
 * goes aside while its task's tid tags the slot keeps a claim on it (busy
 * != 0) until it ends, and only the task itself tags the slot with its tid,
 * at the start of a later walk.
 */
static __always_inline struct walk_state *cur_walk(u32 tid)
{
	struct task_slot *t = task_slot(tid);
	if (t) {
		u64 o = t->w.owner;
		if (o == walk_owner(tid))
			return &t->w;
		if ((u32)o == tid && t->busy == 0)
			return 0;
	}
	struct walk_state *s = walks.lookup(&tid); /* a walk kept aside, if any */
	if (s && s->active)
		return s;
	return 0;
}

/* Claim a slot for a walk: 1 if this walk now owns it. */
static __always_inline int slot_claimed(struct task_slot *t)
{
	__sync_fetch_and_add(&t->busy, 1);
	if (t->busy == 1)
		return 1;
	__sync_fetch_and_add(&t->busy, -1);
	return 0;
}

/* The walk ends: the slot it owned (or held a claim on) is free again. */
static __always_inline void walk_end(struct walk_state *s)
{
	s->active = 0;
	if (!s->in_slot)
		return;
	struct task_slot *t = task_slot(s->tid);
	if (t)
		__sync_fetch_and_add(&t->busy, -1);
}

static __always_inline u64 rd64(u64 addr)
{
	u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
	return v;
}

static __always_inline u32 rd32(u64 addr)
{
	u32 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
	return v;
}

/*
 * Reads through a traced function's pointer argument on the hit path.
 * btf (a constant after inlining): the pointer came from an fentry/fexit
 * context, so the verifier knows its BTF type and checks a plain load
 * against it, JITed as a BPF_PROBE_MEM load that reads 0 on a fault, as
 * bpf_probe_read_kernel would (x86 JIT since 5.5, 3dec541b2e63 "bpf: Add
 * support for BTF pointers to x86 JIT"): no helper call. From a kprobe the
 * argument is a bare number, and only the helper may read through it.
 */
#define BTF_LD64(p, off) (*(u64 *)((p) + (off)))
#define BTF_LD32(p, off) (*(u32 *)((p) + (off)))
#define ARG_LD32(btf, p, off) ((btf) ? BTF_LD32(p, off) : rd32((p) + (off)))

/*
 * The nameidata fields a walk starts from: nd->path.dentry, nd->last.name,
 * nd->flags. From a kprobe, in one bpf_probe_read_kernel of the span they
 * cover (52 bytes on 5.10 to 6.12) rather than three calls; where the
 * layout is not path, last, ..., flags within 128 bytes, one read each.
 */
struct nd_start {
	u64 parent;
	u64 name_ptr;
	u32 flags;
};

#if VFS_OFF_ND_PATH_DENTRY < VFS_OFF_ND_LAST_NAME && VFS_OFF_ND_LAST_NAME < VFS_OFF_ND_FLAGS && \
	VFS_OFF_ND_FLAGS + 4 - VFS_OFF_ND_PATH_DENTRY <= 128 && VFS_OFF_ND_PATH_DENTRY % 8 == 0 && \
	VFS_OFF_ND_LAST_NAME % 8 == 0 && VFS_OFF_ND_FLAGS % 4 == 0
#define ND_SPAN (VFS_OFF_ND_FLAGS + 4 - VFS_OFF_ND_PATH_DENTRY)
static __always_inline void nd_start_read(struct nd_start *o, u64 nd)
{
	u64 buf[(ND_SPAN + 7) / 8] = {};
	bpf_probe_read_kernel(buf, ND_SPAN, (void *)(nd + VFS_OFF_ND_PATH_DENTRY));
	o->parent = buf[0];
	o->name_ptr = buf[(VFS_OFF_ND_LAST_NAME - VFS_OFF_ND_PATH_DENTRY) / 8];
	o->flags = ((u32 *)buf)[(VFS_OFF_ND_FLAGS - VFS_OFF_ND_PATH_DENTRY) / 4];
}
#else
static __always_inline void nd_start_read(struct nd_start *o, u64 nd)
{
	o->parent = rd64(nd + VFS_OFF_ND_PATH_DENTRY);
	o->name_ptr = rd64(nd + VFS_OFF_ND_LAST_NAME);
	o->flags = rd32(nd + VFS_OFF_ND_FLAGS);
}
#endif

static __always_inline void nd_start(struct nd_start *o, u64 nd, int btf)
{
	if (btf) {
		o->parent = BTF_LD64(nd, VFS_OFF_ND_PATH_DENTRY);
		o->name_ptr = BTF_LD64(nd, VFS_OFF_ND_LAST_NAME);
		o->flags = BTF_LD32(nd, VFS_OFF_ND_FLAGS);
	} else {
		nd_start_read(o, nd);
	}
}

/* Name, inode number, d_seq now; NEGATIVE if d_inode is NULL now. */
static __always_inline void fill_dentry(struct vfs_event *e, u64 d, int with_parent)
{
	e->dentry = d;
	if (!d)
		return;
	if (with_parent)
		e->parent = rd64(d + VFS_OFF_D_PARENT);
	u64 inode = rd64(d + VFS_OFF_D_INODE);
	if (inode)
		e->ino = rd64(inode + VFS_OFF_I_INO);
	else
		e->flags |= VFS_F_NEGATIVE;
	e->seq2 = rd32(d + VFS_OFF_D_SEQ);
	u64 name = rd64(d + VFS_OFF_D_NAME_NAME);
	if (name)
		bpf_probe_read_kernel_str(e->name, sizeof(e->name), (void *)name);
	if (rd32(d + VFS_OFF_D_NAME_LEN) >= VFS_NAME_LEN)
		e->flags |= VFS_F_TRUNCATED;
}

static __always_inline int is_err(u64 p)
{
	return p >= (u64)-4095;
}

/*
 * inflight: dentry -> PRUNE timestamp; bit 0 set once a lookup found the
 * dentry while its prune was in flight, bit 1 set when the dentry was
 * positive (had an inode) as its prune began. Set at PRUNE, cleared at
 * D_FREE. Only the prune of a *positive* dentry can make a lookup see a
 * false negative, so only that sets PRUNE_INFLIGHT on a walk: a negative
 * dentry being pruned answers -ENOENT truthfully.
 * A D_FREE can be missed (a kprobe that fires in softirq while another BPF
 * kprobe program runs on the same CPU is skipped by the kernel), and the
 * address may then be a new dentry: so an entry only counts while the
 * dentry is really dead (__dentry_kill() starts with lockref_mark_dead(),
 * count < 0); a live dentry under a stale entry drops the entry.
 */
static __always_inline int prune_inflight(u64 d, int mark)
{
	if (inflight_none())
		return 0;
	u64 *ts = inflight.lookup(&d);
	if (!ts)
		return 0;
	int count = (int)rd32(d + VFS_OFF_D_LOCKREF_COUNT);
	if (count >= 0) {
		inflight_delete(d);
		vfs_count(VFS_C_INFLIGHT_STALE);
		return 0;
	}
	if (mark)
		*ts |= 1;
	return (*ts & 2) != 0;
}

/*
 * From a BTF-typed pointer to dentry d (fentry/fexit): d is alive, so no
 * prune of it is in flight (prune_inflight() answers 0 for a dentry whose
 * d_lockref.count is >= 0, __dentry_kill()'s lockref_mark_dead() not yet
 * run). One typed load instead of a hash lookup: on a busy system
 * `inflight` is seldom empty (every dentry pruned stays there until its
 * RCU-delayed __d_free), so inflight_n alone seldom spares the lookup.
 * typed == d is compared after the load, and the loaded count kept opaque,
 * so the compiler cannot rewrite the load through d (a scalar read from a
 * map, which the verifier would refuse to dereference).
 */
static __always_inline int alive_btf(u64 typed, u64 d)
{
	int c = (int)BTF_LD32(typed, VFS_OFF_D_LOCKREF_COUNT);
	asm volatile("" : "+r"(c));
	return typed == d && c >= 0;
}

/* ---- lookup side -------------------------------------------------------- */

/*
 * VFS_SEQ_AT_LOOKUP: where __d_lookup_rcu()'s d_seq sample is read. Since
 * "namei: stash the sampled ->d_seq into nameidata" (03fa86e9f79d, v6.0)
 * lookup_fast() passes it &nd->next_seq, and lookup_fast()'s fexit has nd
 * as a BTF-typed pointer: the sample is read there by one typed load,
 * where __d_lookup_rcu()'s fexit needs bpf_probe_read_kernel (its seqp is
 * an int pointer, which an fentry program reads as a plain number since
 * 5.17, and bpf_rdonly_cast() is 6.2). Nothing in lookup_fast() writes
 * nd->next_seq after the lookup; later in the walk a mount crossing does
 * (__follow_mount_rcu), so the read cannot wait for the walk's return.
 * Other callers of __d_lookup_rcu (d_alloc_parallel, its own local) are
 * read at once, as before.
 */
#if VFS_MODE_RCU == 2 && VFS_MODE_LOOKUP == 2 && defined(VFS_OFF_ND_NEXT_SEQ)
#define VFS_SEQ_AT_LOOKUP 1
#else
#define VFS_SEQ_AT_LOOKUP 0
#endif

/* The walk's d_seq sample, off the hit path (an event is being built). */
static __always_inline u32 walk_seq(struct walk_state *s)
{
#if VFS_SEQ_AT_LOOKUP
	if (s->seq_in_nd)
		return rd32(s->nd + VFS_OFF_ND_NEXT_SEQ);
#endif
	return s->seq;
}

/*
 * A walk state for this task: walk_component entry (dentry 0: lookup_fast
 * and __d_lookup_rcu fill it in), or step_into entry (step 1: the dentry
 * and its d_seq sample are step_into's arguments). Nothing is counted
 * here: a walk's counters are added at its return, in one update.
 */
static __always_inline void walk_fill(struct walk_state *w, u64 nd, struct nd_start *n, u64 dentry, u32 seq,
				      u32 step, u32 in_slot)
{
	w->nd = nd;
	w->parent = n->parent;
	w->name_ptr = n->name_ptr;
	w->dentry = dentry;
	w->seqp = 0;
	w->rc_dentry = 0;
	w->step = step;
	w->in_slot = in_slot;
	w->n_rcu = 0;
	w->n_lookup = 0;
	w->flags = 0;
	w->rcu_dentry = 0;
	w->seq = 0;
	w->seq_in_nd = 0;
	if (n->flags & LOOKUP_RCU) {
		/* A barrier, so that the stores stay two and a branch: merged,
		 * the compiler makes rcu_dentry = dentry & -(flags >> 6 & 1),
		 * and the verifier refuses bitwise operations on a pointer
		 * (dentry is BTF-typed in fentry mode). */
		asm volatile("" ::: "memory");
		w->flags = VFS_F_RCU;
		w->rcu_dentry = dentry;
		w->seq = seq;
	}
}

static __always_inline int walk_begin(u64 id, u64 nd, u64 dentry, u32 seq, u32 step, int btf)
{
	if (!vfs_task_wanted(id)) {
		vfs_count(VFS_C_FILTERED);
		return 0;
	}
	u32 tid = (u32)id;
	struct nd_start n;
	nd_start(&n, nd, btf);
	struct task_slot *t = task_slot(tid);
	if (t && (t->w.owner == walk_owner(tid) /* its own earlier walk, whose return was not seen */
		  || slot_claimed(t))) {
		/* Written in place, field by field (no copy through the stack),
		 * then owner in one 8-byte store: until then another task reading
		 * the slot finds a finished walk or this task's own, never its own
		 * walk half written. */
		walk_fill(&t->w, nd, &n, dentry, seq, step, 1);
		t->w.owner = walk_owner(tid);
		return 0;
	}
	vfs_count(VFS_C_SLOT_BUSY);
	struct walk_state *old = walks.lookup(&tid);
	/* Its earlier walk aside, whose return was not seen, may hold a claim
	 * already; otherwise a claim is held if the slot carries this tid. */
	u32 in_slot = old && old->active && old->in_slot == 2 ? 2 : 0;
	if (!in_slot && t && (u32)t->w.owner == tid) {
		__sync_fetch_and_add(&t->busy, 1);
		in_slot = 2;
	}
	struct walk_state s = {};
	walk_fill(&s, nd, &n, dentry, seq, step, in_slot);
	s.tid = tid;
	s.active = 1;
	if (old)
		*old = s;
	else if (walks.update(&tid, &s)) {
		vfs_count(VFS_C_STATE_FULL);
		if (in_slot && t)
			__sync_fetch_and_add(&t->busy, -1); /* no walk holds it */
	}
	return 0;
}

static __always_inline int walk_enter(u64 nd, int btf)
{
	return walk_begin(bpf_get_current_pid_tgid(), nd, 0, 0, 0, btf);
}

/* What the walk saw, added to this CPU's counters in one map lookup. */
static __always_inline void walk_counted(struct walk_state *s, long ret)
{
	u64 *c = vfs_counters();
	if (!c)
		return;
	if (s->step) {
		c[VFS_C_STEP]++;
	} else {
		c[VFS_C_WALK]++;
		if (s->flags & VFS_F_RCU)
			c[VFS_C_WALK_RCU]++;
	}
	c[VFS_C_RCU_LOOKUP] += s->n_rcu;
	c[VFS_C_LOOKUP] += s->n_lookup;
	if (ret == VFS_ENOENT)
		c[VFS_C_WALK_ENOENT]++;
	else if (ret == VFS_ECHILD)
		c[VFS_C_WALK_ECHILD]++;
}

/*
 * nd: the walk's nameidata, BTF-typed when btf (fexit of walk_component or
 * step_into). After a successful step nd->path.dentry is the dentry the
 * walk found; when it is d, its liveness comes from a typed load.
 */
static __always_inline int walk_exit(void *ctx, long ret, u64 nd, int btf)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct walk_state *s = cur_walk(tid);
	if (!s)
		return 0;
	walk_counted(s, ret);
	u64 d = s->dentry ? s->dentry : s->rcu_dentry;
	u32 flags = s->flags;
	if (d && !(btf && alive_btf(BTF_LD64(nd, VFS_OFF_ND_PATH_DENTRY), d)) && prune_inflight(d, 1))
		flags |= VFS_F_PRUNE_INFLIGHT;
	if (ret == VFS_ENOENT || ret == VFS_ECHILD || (flags & VFS_F_PRUNE_INFLIGHT)) {
		struct vfs_event e;
		vfs_fill(&e, bpf_get_current_pid_tgid(), VFS_K_WALK_RETURN, VFS_OP_NONE);
		fill_dentry(&e, d, 0);
		e.parent = s->parent;
		e.ret = ret;
		e.seq = walk_seq(s);
		e.flags |= flags;
		if (s->step)
			e.flags |= VFS_F_STEP;
		if (d && s->rcu_dentry == d && (flags & VFS_F_RCU) && e.seq != e.seq2) {
			e.flags |= VFS_F_SEQ_CHANGED;
			vfs_count(VFS_C_SEQ_CHANGED);
		}
		if (!d && s->name_ptr)
			bpf_probe_read_kernel_str(e.name, sizeof(e.name), (void *)s->name_ptr);
		vfs_ev_output(ctx, &e);
	}
	walk_end(s);
	return 0;
}

/* VFS_STEP_SEQ: which argument carries the d_seq sample (5 on 5.10), or 0:
 * nd->next_seq (6.x); tracers/kprobe.py STEP_SEQ_ARG cites the change. */
#ifndef VFS_STEP_SEQ
#define VFS_STEP_SEQ 0
#endif

/*
 * step_into(nd, flags, dentry, ...) entry. seq_arg: step_into's own seq
 * argument where it has one (5.10); the d_seq the caller sampled for
 * dentry (what step_into's re-check compares against) is read only once
 * the call is known to open a walk: inside walk_component it is not needed.
 */
static __always_inline int step_enter(u64 nd, u64 dentry, u32 seq_arg, int btf)
{
	u64 id = bpf_get_current_pid_tgid();
	struct walk_state *s = cur_walk((u32)id);
	if (s && !s->step)
		return 0; /* inside walk_component: the walk role reports */
	/* A task the filters leave out has no walk state inside walk_component
	 * either: its step_into calls are neither counted nor filtered here
	 * (its walk_component entries count it as filtered). */
	if (!vfs_task_wanted(id))
		return 0;
	u32 seq = seq_arg;
#if VFS_STEP_SEQ == 0 && defined(VFS_OFF_ND_NEXT_SEQ)
	seq = ARG_LD32(btf, nd, VFS_OFF_ND_NEXT_SEQ);
#endif
	return walk_begin(id, nd, dentry, seq, 1, btf);
}

static __always_inline int step_exit(void *ctx, long ret, u64 nd, int btf)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct walk_state *s = cur_walk(tid);
	if (!s || !s->step)
		return 0; /* inside walk_component, or not wanted */
	return walk_exit(ctx, ret, nd, btf);
}

static __always_inline int rcu_lookup_enter(u64 seqp)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct walk_state *s = cur_walk(tid);
	if (s)
		s->seqp = seqp;
	return 0;
}

static __always_inline int rcu_lookup_exit(u64 seqp, u64 ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct walk_state *s = cur_walk(tid);
	if (!s)
		return 0;
	s->n_rcu++;
	if (!seqp)
		seqp = s->seqp;
	s->seqp = 0;
	if (!ret || is_err(ret))
		return 0;
	s->rcu_dentry = ret;
#if VFS_SEQ_AT_LOOKUP
	s->seq_in_nd = seqp == s->nd + VFS_OFF_ND_NEXT_SEQ;
	if (s->seq_in_nd)
		return 0; /* read at lookup_fast's fexit */
#endif
	s->seq = rd32(seqp);
	return 0;
}

/*
 * ret: BTF-typed (struct dentry *) when btf, from lookup_fast's fexit;
 * nd: lookup_fast's nameidata, BTF-typed when btf (0 otherwise).
 */
static __always_inline int lookup_exit(void *ctx, u64 ret, u64 nd, int btf)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct walk_state *s = cur_walk(tid);
	if (!s)
		return 0;
	s->n_lookup++;
#if VFS_SEQ_AT_LOOKUP
	if (s->seq_in_nd) {
		s->seq = BTF_LD32(nd, VFS_OFF_ND_NEXT_SEQ);
		s->seq_in_nd = 0;
	}
#endif
	if (!ret || is_err(ret))
		return 0;
	s->dentry = ret;
	if ((btf && alive_btf(ret, ret)) || !prune_inflight(ret, 1))
		return 0;
	/* The walk's return reports it (WALK_RETURN with PRUNE_INFLIGHT). */
	vfs_count(VFS_C_INFLIGHT_HIT);
	s->flags |= VFS_F_PRUNE_INFLIGHT;
	return 0;
}

/* A d_seq re-check site returned. ok: 1 the sample held, 0 it did not. */
static __always_inline int recheck_exit(void *ctx, u16 op, u64 dentry, int ok)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct walk_state *s = cur_walk(tid);
	vfs_count(VFS_C_SEQ_CHECK);
	if (!ok)
		vfs_count(VFS_C_SEQ_FAIL);
	if (ok && !(s && (s->flags & VFS_F_PRUNE_INFLIGHT)))
		return 0;
	if (!s && !vfs_task_wanted(bpf_get_current_pid_tgid()))
		return 0;
	struct vfs_event e;
	vfs_fill(&e, bpf_get_current_pid_tgid(), VFS_K_SEQ_CHECK, op);
	if (!dentry && s)
		dentry = s->dentry ? s->dentry : s->rcu_dentry;
	fill_dentry(&e, dentry, 1);
	e.ret = ok ? 0 : VFS_ECHILD;
	if (s) {
		e.flags |= s->flags | VFS_F_IN_WALK; /* the walk whose WALK_RETURN follows */
		if (dentry && dentry == s->rcu_dentry)
			e.seq = walk_seq(s);
	}
	vfs_ev_output(ctx, &e);
	return 0;
}

static __always_inline int recheck_enter(u64 dentry)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct walk_state *s = cur_walk(tid);
	if (s)
		s->rc_dentry = dentry;
	return 0;
}

/* ---- prune side ---------------------------------------------------------- */

/*
 * Every PRUNE is emitted. UNHASH and IPUT inside a prune (the dentry is dead)
 * and D_FREE are emitted only when a lookup found that dentry while its prune
 * was in flight; otherwise they are counted (VFS_C_PRUNE_SIDE_QUIET). UNHASH and
 * IPUT outside a prune (d_delete, d_invalidate, rename) are always emitted.
 * A drop_caches burst kills tens of thousands of dentries in well under a
 * second: four events each overflowed the ring under emulation, one does not.
 */
static __always_inline int prune_event(void *ctx, u16 kind, int ctr, u64 d)
{
	vfs_count(ctr);
	u64 *ent = inflight_none() ? 0 : inflight.lookup(&d);
	int dead = ent && (int)rd32(d + VFS_OFF_D_LOCKREF_COUNT) < 0;
	int hit = ent && (*ent & 1);
	if (kind != VFS_K_PRUNE) {
		if (kind == VFS_K_D_FREE && ent)
			inflight_delete(d);
		if ((kind == VFS_K_D_FREE ? ent != 0 : dead) && !hit) {
			vfs_count(VFS_C_PRUNE_SIDE_QUIET);
			return 0;
		}
	}
	struct vfs_event e;
	vfs_fill(&e, bpf_get_current_pid_tgid(), kind, VFS_OP_NONE);
	fill_dentry(&e, d, 1);
	e.seq = e.seq2;
	if (kind == VFS_K_PRUNE) {
		u64 ts = (e.ts_ns & ~3ULL) | (e.ino ? 2 : 0);
		inflight_add(1);
		if (inflight.insert(&d, &ts)) { /* there already: a prune seen before its D_FREE was */
			inflight.update(&d, &ts);
			inflight_add(-1);
		}
	} else if (dead) {
		e.flags |= VFS_F_PRUNE_INFLIGHT;
	}
	if (kind == VFS_K_D_FREE) {
		/* Memory is going back to the slab: name and inode are stale. */
		e.ino = 0;
		e.name[0] = 0;
		e.flags &= ~(VFS_F_NEGATIVE | VFS_F_TRUNCATED);
		if (ent)
			e.flags |= VFS_F_PRUNE_INFLIGHT;
	}
	vfs_ev_output(ctx, &e);
	return 0;
}

/*
 * Namespace operations as the dcache sees them: d_delete() (unlink, rmdir:
 * the name goes negative or is unhashed) and d_move() (rename: the source
 * name goes away). NS_OP with the dentry, its parent and the old name lets
 * the correlator explain an -ENOENT the workload caused itself.
 */
static __always_inline int ns_event(void *ctx, u16 op, u64 d)
{
	vfs_count(VFS_C_NS_OP);
	struct vfs_event e;
	vfs_fill(&e, bpf_get_current_pid_tgid(), VFS_K_NS_OP, op);
	fill_dentry(&e, d, 1);
	e.seq = e.seq2;
	vfs_ev_output(ctx, &e);
	return 0;
}

/* ---- attach points ------------------------------------------------------- */
/* kprobe-mode functions are attached by name from tracers/kprobe.py (so
 * compiler clones such as lookup_fast.constprop.0 work); fentry-mode ones
 * are attached by BCC from their kfunc__/kretfunc__ names. */

#if VFS_MODE_WALK == 1
int vt_walk_enter(struct pt_regs *ctx) { return walk_enter(PT_REGS_PARM1(ctx), 0); }
int vt_walk_return(struct pt_regs *ctx) { return walk_exit(ctx, PT_REGS_RC(ctx), 0, 0); }
#elif VFS_MODE_WALK == 2
int VFS_KFUNC(VFS_FN_WALK)(u64 *ctx) { return walk_enter(ctx[0], 1); }
int VFS_KRETFUNC(VFS_FN_WALK)(u64 *ctx) { return walk_exit(ctx, (long)ctx[VFS_NARGS_WALK], ctx[0], 1); }
#endif

#if VFS_STEP_SEQ == 5
#define STEP_SEQ_KPROBE(ctx) ((u32)PT_REGS_PARM5(ctx))
#define STEP_SEQ_FENTRY(ctx) ((u32)ctx[4])
#else
#define STEP_SEQ_KPROBE(ctx) 0
#define STEP_SEQ_FENTRY(ctx) 0
#endif
#if VFS_MODE_STEP == 1
int vt_step_enter(struct pt_regs *ctx) { return step_enter(PT_REGS_PARM1(ctx), PT_REGS_PARM3(ctx), STEP_SEQ_KPROBE(ctx), 0); }
int vt_step_return(struct pt_regs *ctx) { return step_exit(ctx, PT_REGS_RC(ctx), 0, 0); }
#elif VFS_MODE_STEP == 2
int VFS_KFUNC(VFS_FN_STEP)(u64 *ctx) { return step_enter(ctx[0], ctx[2], STEP_SEQ_FENTRY(ctx), 1); }
int VFS_KRETFUNC(VFS_FN_STEP)(u64 *ctx) { return step_exit(ctx, (long)ctx[VFS_NARGS_STEP], ctx[0], 1); }
#endif

#if VFS_MODE_RCU == 1
int vt_rcu_enter(struct pt_regs *ctx) { return rcu_lookup_enter(PT_REGS_PARM3(ctx)); }
int vt_rcu_return(struct pt_regs *ctx) { return rcu_lookup_exit(0, PT_REGS_RC(ctx)); }
#elif VFS_MODE_RCU == 2
int VFS_KRETFUNC(VFS_FN_RCU)(u64 *ctx) { return rcu_lookup_exit(ctx[2], ctx[VFS_NARGS_RCU]); }
#endif

#if VFS_MODE_LOOKUP == 1
int vt_lookup_return(struct pt_regs *ctx) { return lookup_exit(ctx, PT_REGS_RC(ctx), 0, 0); }
#elif VFS_MODE_LOOKUP == 2
int VFS_KRETFUNC(VFS_FN_LOOKUP)(u64 *ctx) { return lookup_exit(ctx, ctx[VFS_NARGS_LOOKUP], ctx[0], 1); }
#endif

/* Re-check sites: RC<i>_BOOL says the function returns bool (true = the
 * sample held: try_to_unlazy*) rather than 0/-errno (unlazy_walk,
 * complete_walk); RC<i>_DENTRY says its second argument is the dentry. */
#define RC_OK(is_bool, r) ((is_bool) ? ((r) & 0xff) != 0 : (long)(r) == 0)

static __always_inline int recheck_return_kprobe(struct pt_regs *ctx, u16 op, int ok)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct walk_state *s = cur_walk(tid);
	u64 d = s ? s->rc_dentry : 0;
	if (s)
		s->rc_dentry = 0;
	return recheck_exit(ctx, op, d, ok);
}

#define RC_KPROBE(i)                                                          \
int vt_rc##i##_enter(struct pt_regs *ctx)                                     \
{ return recheck_enter(VFS_RC##i##_DENTRY ? PT_REGS_PARM2(ctx) : 0); }           \
int vt_rc##i##_return(struct pt_regs *ctx)                                    \
{ return recheck_return_kprobe(ctx, VFS_RC##i##_OP, RC_OK(VFS_RC##i##_BOOL, PT_REGS_RC(ctx))); }

#define RC_FEXIT(i)                                                           \
int VFS_KRETFUNC(VFS_FN_RC##i)(u64 *ctx)                                         \
{                                                                             \
	return recheck_exit(ctx, VFS_RC##i##_OP, VFS_RC##i##_DENTRY ? ctx[1] : 0,     \
			    RC_OK(VFS_RC##i##_BOOL, ctx[VFS_NARGS_RC##i]));                      \
}

#if VFS_MODE_RC0 == 1
RC_KPROBE(0)
#elif VFS_MODE_RC0 == 2
RC_FEXIT(0)
#endif
#if VFS_MODE_RC1 == 1
RC_KPROBE(1)
#elif VFS_MODE_RC1 == 2
RC_FEXIT(1)
#endif
#if VFS_MODE_RC2 == 1
RC_KPROBE(2)
#elif VFS_MODE_RC2 == 2
RC_FEXIT(2)
#endif
#if VFS_MODE_RC3 == 1
RC_KPROBE(3)
#elif VFS_MODE_RC3 == 2
RC_FEXIT(3)
#endif

#if VFS_MODE_PRUNE == 1
int vt_prune(struct pt_regs *ctx) { return prune_event(ctx, VFS_K_PRUNE, VFS_C_PRUNE, PT_REGS_PARM1(ctx)); }
#elif VFS_MODE_PRUNE == 2
int VFS_KFUNC(VFS_FN_PRUNE)(u64 *ctx) { return prune_event(ctx, VFS_K_PRUNE, VFS_C_PRUNE, ctx[0]); }
#endif

#if VFS_MODE_UNHASH == 1
int vt_unhash(struct pt_regs *ctx) { return prune_event(ctx, VFS_K_UNHASH, VFS_C_UNHASH, PT_REGS_PARM1(ctx)); }
#elif VFS_MODE_UNHASH == 2
int VFS_KFUNC(VFS_FN_UNHASH)(u64 *ctx) { return prune_event(ctx, VFS_K_UNHASH, VFS_C_UNHASH, ctx[0]); }
#endif

#if VFS_MODE_IPUT == 1
int vt_iput(struct pt_regs *ctx) { return prune_event(ctx, VFS_K_IPUT, VFS_C_IPUT, PT_REGS_PARM1(ctx)); }
#elif VFS_MODE_IPUT == 2
int VFS_KFUNC(VFS_FN_IPUT)(u64 *ctx) { return prune_event(ctx, VFS_K_IPUT, VFS_C_IPUT, ctx[0]); }
#endif

/* __d_free(struct rcu_head *head): head is &dentry->d_u.d_rcu. */
#if VFS_MODE_DFREE == 1
int vt_dfree(struct pt_regs *ctx) { return prune_event(ctx, VFS_K_D_FREE, VFS_C_D_FREE, PT_REGS_PARM1(ctx) - VFS_OFF_D_RCU); }
#elif VFS_MODE_DFREE == 2
int VFS_KFUNC(VFS_FN_DFREE)(u64 *ctx) { return prune_event(ctx, VFS_K_D_FREE, VFS_C_D_FREE, ctx[0] - VFS_OFF_D_RCU); }
#endif
#if VFS_MODE_DFREE_EXT == 1
int vt_dfree_ext(struct pt_regs *ctx) { return prune_event(ctx, VFS_K_D_FREE, VFS_C_D_FREE, PT_REGS_PARM1(ctx) - VFS_OFF_D_RCU); }
#elif VFS_MODE_DFREE_EXT == 2
int VFS_KFUNC(VFS_FN_DFREE_EXT)(u64 *ctx) { return prune_event(ctx, VFS_K_D_FREE, VFS_C_D_FREE, ctx[0] - VFS_OFF_D_RCU); }
#endif

#if VFS_MODE_DELETE == 1
int vt_delete(struct pt_regs *ctx) { return ns_event(ctx, VFS_OP_UNLINK, PT_REGS_PARM1(ctx)); }
#elif VFS_MODE_DELETE == 2
int VFS_KFUNC(VFS_FN_DELETE)(u64 *ctx) { return ns_event(ctx, VFS_OP_UNLINK, ctx[0]); }
#endif
#if VFS_MODE_MOVE == 1
int vt_move(struct pt_regs *ctx) { return ns_event(ctx, VFS_OP_RENAME, PT_REGS_PARM1(ctx)); }
#elif VFS_MODE_MOVE == 2
int VFS_KFUNC(VFS_FN_MOVE)(u64 *ctx) { return ns_event(ctx, VFS_OP_RENAME, ctx[0]); }
#endif
