/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vfstrace statloop: the selftest's stat() loop, in C.
 *
 *   statloop DIR NFILES RATE [stat|access|open|stat+open]
 *
 * Picks the first NFILES regular files of DIR (sorted by name), prints
 * "ready", then fstatat()s them round-robin, one path component per call
 * (dirfd + name: the walk's RCU lookup holds the file's own dentry, which
 * pruning can kill; a full path would spend its time on directories, pinned
 * by their cached children). RATE > 0 paces the loop at RATE stats per
 * second on an absolute schedule, so a phase with race-window widening and
 * one without offer the same lookups and only the window differs; RATE 0
 * runs flat out. On SIGTERM it prints one JSON line of what it did.
 *
 * "access" looks each name up with faccessat(F_OK) instead of fstatat():
 * the same path walk (same RCU lookup, same d_seq re-check), without the
 * ->getattr that follows it. On 9p without caching (the VM harness's root)
 * every getattr is a round trip to the host, which caps a stat() loop at
 * ~2k calls/s under emulation; the walk alone runs several times faster.
 *
 * "open" opens each name read-only (and closes it): an open()'s last
 * component is looked up by open_last_lookups(), which calls lookup_fast()
 * and step_into() itself rather than through walk_component(), so this is
 * the loop that exercises that site. "stat+open" takes turns: one pass over
 * the names with fstatat(), the next with open(), so one process (one
 * CPU's worth of load) keeps both sites busy.
 *
 * A Python loop manages only ~100 stat()/s under qemu TCG, too few for a
 * prune to ever meet an unwidened lookup; this one does tens of thousands.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_FILES 4096
#define BATCH 16 /* stats between clock reads */

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static int cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* JSON string body for a path: escape what JSON requires, pass the rest. */
static void put_json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: statloop DIR NFILES RATE [stat|access|open|stat+open]\n");
		return 2;
	}
	const char *op = argc == 5 ? argv[4] : "stat";
	int use_access = strcmp(op, "access") == 0, use_open = strcmp(op, "open") == 0;
	int take_turns = strcmp(op, "stat+open") == 0;
	if (!use_access && !use_open && !take_turns && strcmp(op, "stat") != 0) {
		fprintf(stderr, "statloop: the operation is stat, access, open or stat+open\n");
		return 2;
	}
	const char *dir = argv[1];
	long want = strtol(argv[2], NULL, 10);
	double rate = strtod(argv[3], NULL);
	if (want < 1 || want > MAX_FILES || rate < 0) {
		fprintf(stderr, "statloop: NFILES must be 1..%d and RATE >= 0\n", MAX_FILES);
		return 2;
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	if (dfd < 0) {
		fprintf(stderr, "statloop: %s: %s\n", dir, strerror(errno));
		return 1;
	}
	DIR *d = fdopendir(dup(dfd));
	if (!d) {
		fprintf(stderr, "statloop: %s: %s\n", dir, strerror(errno));
		return 1;
	}
	static char *all[MAX_FILES * 4];
	size_t n_all = 0;
	struct dirent *e;
	while ((e = readdir(d)) && n_all < sizeof(all) / sizeof(all[0])) {
		struct stat st;
		if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
			all[n_all++] = strdup(e->d_name);
	}
	closedir(d);
	if (n_all == 0) {
		fprintf(stderr, "statloop: no regular files in %s\n", dir);
		return 1;
	}
	qsort(all, n_all, sizeof(all[0]), cmp);
	size_t n = (size_t)want < n_all ? (size_t)want : n_all;

	printf("ready\n");
	fflush(stdout);

	unsigned long long stats = 0, enoent = 0, sleeps = 0;
	double t0 = now_s();
	struct stat st;
	while (!stop) {
		for (int b = 0; b < BATCH; b++) {
			const char *nm = all[stats % n];
			int rc;
			if (use_open || (take_turns && (stats / n) % 2)) {
				int fd = openat(dfd, nm, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
				rc = fd < 0 ? -1 : close(fd);
			} else if (use_access) {
				rc = faccessat(dfd, nm, F_OK, 0);
			} else {
				rc = fstatat(dfd, nm, &st, AT_SYMLINK_NOFOLLOW);
			}
			if (rc != 0 && errno == ENOENT)
				enoent++;
			stats++;
		}
		if (rate > 0) {
			double due = t0 + stats / rate, t = now_s();
			if (due > t) {
				struct timespec ts;
				double dt = due - t;
				ts.tv_sec = (time_t)dt;
				ts.tv_nsec = (long)((dt - ts.tv_sec) * 1e9);
				nanosleep(&ts, NULL);
				sleeps++;
			}
		}
	}
	double secs = now_s() - t0;
	printf("{\"worker\": \"stat\", \"impl\": \"c\", \"op\": \"%s\", \"dir\": ", op);
	put_json_str(dir);
	printf(", \"files\": %zu, \"stats\": %llu, \"enoent\": %llu, \"rate\": %.1f, \"seconds\": %.3f, "
	       "\"stats_per_s\": %.1f, \"sleeps\": %llu}\n",
	       n, stats, enoent, rate, secs, secs > 0 ? stats / secs : 0.0, sleeps);
	fflush(stdout);
	return 0;
}
