#!/usr/bin/env bash
# scripts/bench/syscall-cost.sh — what one system call costs on this machine before it does
# anything: a C loop of `syscall(SYS_getppid)`, timed with CLOCK_MONOTONIC. The figure behind the
# io_uring batches of WebSocket fan-outs (BENCHMARKS.md, notes, "io_uring"; src/util/uring.rs).
#
# Usage: scripts/bench/syscall-cost.sh [CALLS] [RUNS]   (default 5000000 calls, 2 runs)
# Needs gcc. Prints one line per run: nanoseconds per call.
set -euo pipefail
CALLS=${1:-5000000}
RUNS=${2:-2}
command -v gcc >/dev/null || { echo "error: gcc is needed (apt-get install gcc)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/sc.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f ns per system call (%ld calls)\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n, n);
    return 0;
}
C
gcc -O2 "$dir/sc.c" -o "$dir/sc"
for _ in $(seq 1 "$RUNS"); do "$dir/sc" "$CALLS"; done
