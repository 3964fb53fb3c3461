/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vfstrace: the event records every kernel-side program emits.
 *
 * The Python side reads these with numpy dtypes defined in
 * vfstrace/events.py (BPF_EVENT_DTYPE, BPF_PATH_EVENT_DTYPE);
 * tests/test_events.py compiles this header with the host compiler and
 * checks every field offset and the struct sizes against them.
 * Event kinds, ops and flags are emitted as #defines from the Python
 * enums (vfstrace/events.py), so they are defined once. This header is
 * plain C (the host compiler reads it in that test); what the BPF
 * programs share beyond the records is in common.h.
 */
#ifndef VFSTRACE_H
#define VFSTRACE_H

#include <linux/types.h>

#define VFS_COMM_LEN 16
#define VFS_NAME_LEN 64
#define VFS_PATH_LEN 256

struct vfs_event {
	__u64 ts_ns;    /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 dentry;   /* struct dentry * (address) */
	__u64 parent;   /* d_parent or the walk's directory */
	__u64 ino;      /* inode number, 0 if negative */
	__s64 ret;      /* return value / count, kind-specific */
	__u32 pid;      /* tgid */
	__u32 tid;
	__u32 cpu;
	__u32 seq;      /* d_seq as first seen */
	__u32 seq2;     /* d_seq re-read later */
	__u32 flags;    /* VFS_F_* */
	__u16 kind;     /* VFS_K_* */
	__u16 op;       /* VFS_OP_* */
	__u32 count;    /* occurrences this record stands for (1; more when coalesced) */
	char comm[VFS_COMM_LEN];
	char name[VFS_NAME_LEN];
};

/* Path system calls and namespace operations carry their paths. */
struct vfs_path_event {
	struct vfs_event hdr;
	char path[VFS_PATH_LEN];
	char path2[VFS_PATH_LEN];
};

#endif /* VFSTRACE_H */
