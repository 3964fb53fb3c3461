/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vfstrace: the synthetic producer of bench/stream.py. It measures the
 * consumer (tracers/stream.py -> vfstrace.recorder -> the trace writer),
 * so it writes what the tracepoint tier writes, into the same rings, at a
 * rate the bench sets: no real syscall could reach millions of records
 * per second on one core, a program that emits VFS_BENCH_K of them per
 * trigger can.
 *
 * One trigger: a getppid() of the bench's generator (VFS_FILTER_PID, the
 * common task filter); each emits VFS_BENCH_K records of the real struct
 * vfs_path_event (bpf/vfstrace.h), kind PATH_SYSCALL, op NEWFSTATAT,
 * ret -ENOENT, as a stat() storm over absent names produces. Every record
 * names a different path, ".../absent-<hex number>", its number counted
 * per CPU, so nothing that helps only one repeated name (the consumer's
 * per-distinct-value decoding, a dictionary) makes the bench look faster
 * than a storm of distinct names. With VFS_BENCH_DENTRY_EVERY N, every
 * Nth record is a struct vfs_event D_FREE on the other ring instead (the
 * dentry frees of a cache shrink), 0 for none.
 *
 * Full rings drop, counted in the per-CPU slots the consumer reads as
 * losses (bpf/common.h), exactly as in the tiers.
 */
#define VFS_EVENTS 1
#define VFS_PATH_EVENTS 1
#include "common.h"

#ifndef VFS_BENCH_K
#define VFS_BENCH_K 64
#endif
#ifndef VFS_BENCH_DENTRY_EVERY
#define VFS_BENCH_DENTRY_EVERY 0
#endif

/* ".../absent-" then the record's number in hex, lowest nibble last. */
#define VFS_BENCH_PREFIX "/var/tmp/vfstrace-stream-bench/absent-"
#define VFS_BENCH_PREFIX_LEN (sizeof(VFS_BENCH_PREFIX) - 1)
#define VFS_BENCH_NAME_PREFIX "absent-"
#define VFS_BENCH_NAME_PREFIX_LEN (sizeof(VFS_BENCH_NAME_PREFIX) - 1)

BPF_PERCPU_ARRAY(serial, u64, 1);

static __always_inline void vfs_bench_hex(char *out, u64 v)
{
#pragma unroll
	for (int i = 0; i < 16; i++) {
		u8 d = (v >> ((15 - i) * 4)) & 15;
		out[i] = d < 10 ? '0' + d : 'a' + d - 10;
	}
}

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
	u64 id = bpf_get_current_pid_tgid();
	if (!vfs_task_wanted(id))
		return 0;
	int zero = 0;
	u64 *ser = serial.lookup(&zero);
	if (!ser)
		return 0;
	u64 base = ((u64)bpf_get_smp_processor_id() << 56) | *ser;
	*ser += VFS_BENCH_K;
	vfs_count(VFS_C_TRIGGERS);
	for (u32 i = 0; i < VFS_BENCH_K; i++) {
		u64 n = base + i;
#if VFS_BENCH_DENTRY_EVERY > 0
		if (i % VFS_BENCH_DENTRY_EVERY == VFS_BENCH_DENTRY_EVERY - 1) {
			struct vfs_event *d = vfs_ev_reserve();
			if (!d)
				continue;
			vfs_fill(d, id, VFS_K_D_FREE, VFS_OP_NONE);
			d->dentry = 0xffff888000000000ULL + n * 192;
			vfs_ev_submit(args, d);
			continue;
		}
#endif
		struct vfs_path_event *e = vfs_pev_reserve();
		if (!e)
			continue;
		vfs_fill(&e->hdr, id, VFS_K_PATH_SYSCALL, VFS_OP_NEWFSTATAT);
		e->hdr.ret = VFS_ENOENT;
		__builtin_memset(e->path, 0, sizeof(e->path));
		__builtin_memset(e->path2, 0, sizeof(e->path2));
		__builtin_memcpy(e->path, VFS_BENCH_PREFIX, VFS_BENCH_PREFIX_LEN);
		vfs_bench_hex(e->path + VFS_BENCH_PREFIX_LEN, n);
		__builtin_memcpy(e->hdr.name, VFS_BENCH_NAME_PREFIX, VFS_BENCH_NAME_PREFIX_LEN);
		vfs_bench_hex(e->hdr.name + VFS_BENCH_NAME_PREFIX_LEN, n);
		vfs_pev_submit(args, e);
	}
	return 0;
}
