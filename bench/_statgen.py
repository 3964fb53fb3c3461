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
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    /* statgen PATH COUNT RATE COMM: COUNT stat() calls, RATE per second (0: flat out) */
    const char *path = argv[1]; long n = atol(argv[2]); double rate = atof(argv[3]);
    prctl(PR_SET_NAME, argv[4], 0, 0, 0);
    struct stat st; long fails = 0; double t0 = now();
    for (long i = 0; i < n; i++) {
        if (stat(path, &st)) fails++;
        if (rate > 0 && (i & 1023) == 1023) {
            double due = t0 + (i + 1) / rate, d;
            while ((d = due - now()) > 0) { struct timespec s = {0, (long)(d * 1e9)}; nanosleep(&s, 0); }
        }
    }
    double el = now() - t0;
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

    def start(self, path, count, rate=0, comm="vfs-bench"):
        return subprocess.Popen([self.exe, path, str(count), str(rate), comm], stdout=subprocess.PIPE, text=True)

    @staticmethod
    def result(proc):
        out, _ = proc.communicate()
        n, fails, el, ns = out.split()
        return {"calls": int(n), "fails": int(fails), "seconds": float(el), "ns_per_call": float(ns)}

    def run(self, path, count, rate=0, comm="vfs-bench"):
        return self.result(self.start(path, count, rate, comm))

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)
