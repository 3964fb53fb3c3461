"""A C stat() loop for the benches: precise ns per call, optional fixed event rate.

Python's own per-call overhead (~1 µs) would hide what tracing adds, so the
loop is C, compiled once into a temp dir with the host compiler.
"""

import os
import shutil
import subprocess
import tempfile

SRC = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
static double clk(clockid_t c) { struct timespec t; clock_gettime(c, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static double now(void) { return clk(CLOCK_MONOTONIC); }
int main(int argc, char **argv) {
    /* statgen PATH COUNT RATE COMM [cpu] [names=N]: COUNT stat() calls, RATE per second (0: flat out);
       "cpu": the time reported is the process's CPU time (user + kernel, where the
       BPF programs run), which other load on the machine disturbs far less than wall time;
       "names=N": the calls cycle over N distinct names PATH-0 .. PATH-(N-1), built before
       the clock starts, so no in-kernel folding of identical repeats applies */
    const char *path = argv[1]; long n = atol(argv[2]); double rate = atof(argv[3]);
    clockid_t mc = CLOCK_MONOTONIC; long names = 0;
    for (int a = 5; a < argc; a++) {
        if (!strcmp(argv[a], "cpu")) mc = CLOCK_PROCESS_CPUTIME_ID;
        else if (!strncmp(argv[a], "names=", 6)) names = atol(argv[a] + 6);
    }
    char **paths = 0;
    if (names > 0) {
        size_t len = strlen(path) + 24;
        paths = malloc(names * sizeof(*paths));
        for (long k = 0; k < names; k++) { paths[k] = malloc(len); snprintf(paths[k], len, "%s-%ld", path, k); }
    }
    prctl(PR_SET_NAME, argv[4], 0, 0, 0);
    struct stat st; long fails = 0; double t0 = now(), m0 = clk(mc);
    for (long i = 0; i < n; i++) {
        if (stat(paths ? paths[i % names] : path, &st)) fails++;
        if (rate > 0 && (i & 1023) == 1023) {
            double due = t0 + (i + 1) / rate, d;
            while ((d = due - now()) > 0) { struct timespec s = {0, (long)(d * 1e9)}; nanosleep(&s, 0); }
        }
    }
    double el = clk(mc) - m0;
    printf("%ld %ld %.6f %.1f\n", n, fails, el, el * 1e9 / n);
    return 0;
}
"""


class StatGen:
    def __init__(self):
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if not cc:
            raise SystemExit("bench: needs a C compiler (cc/gcc/clang)")
        self.dir = tempfile.mkdtemp(prefix="vfstrace-bench-")
        src = os.path.join(self.dir, "statgen.c")
        self.exe = os.path.join(self.dir, "statgen")
        with open(src, "w") as f:
            f.write(SRC)
        subprocess.run([cc, "-O2", "-o", self.exe, src], check=True)

    def start(self, path, count, rate=0, comm="vfs-bench", cpu_time=False, names=0):
        """``cpu_time``: the loop reports its own CPU time per call, not wall time;
        ``names``: cycle over that many distinct names ``path-K`` instead of ``path``."""
        argv = [self.exe, path, str(count), str(rate), comm] + (["cpu"] if cpu_time else []) + (
            [f"names={int(names)}"] if names else [])
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    @staticmethod
    def result(proc):
        out, _ = proc.communicate()
        n, fails, el, ns = out.split()
        return {"calls": int(n), "fails": int(fails), "seconds": float(el), "ns_per_call": float(ns)}

    def run(self, path, count, rate=0, comm="vfs-bench", cpu_time=False, names=0):
        return self.result(self.start(path, count, rate, comm, cpu_time, names))

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)
