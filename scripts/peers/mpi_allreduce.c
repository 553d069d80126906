/*
 * All-reduce benchmark for MPI (Open MPI): MPI_Allreduce, float32, MPI_SUM.
 *
 *   mpicc -O2 -o bin/mpi_allreduce scripts/peers/mpi_allreduce.c
 *   mpirun --allow-run-as-root --oversubscribe -np 4 --mca pml ob1 \
 *       --mca btl tcp,self bin/mpi_allreduce --min-bytes 4K --max-bytes 64M
 *
 * Rank 0 prints one JSON line per size:
 *
 *   {"peer":"openmpi","np":N,"bytes":B,"time_us":t,"algbw_gbps":a,"busbw_gbps":b}
 *
 * time_us follows nccl-tests: every rank times --iters back-to-back
 * all-reduces after --warmup untimed ones and averages them; the reported
 * time is the maximum of those averages over ranks. algbw = bytes/time
 * (1 GB = 1e9 bytes), busbw = algbw * 2(n-1)/n.
 */
#include <mpi.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long long parse_size(const char *s) {
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || v < 0) return -1;
    switch (tolower((unsigned char)*end)) {
    case 'k': v <<= 10; end++; break;
    case 'm': v <<= 20; end++; break;
    case 'g': v <<= 30; end++; break;
    }
    if (*end == 'i') end++;
    if (*end == 'b' || *end == 'B') end++;
    return *end ? -1 : v;
}

static void usage(void) {
    fprintf(stderr, "usage: mpi_allreduce [--min-bytes N] [--max-bytes N] "
                    "[--iters N] [--warmup N] [--peer NAME]\n");
}

int main(int argc, char **argv) {
    long long lo = 4 << 10, hi = 64 << 20;
    int iters = 20, warmup = 5;
    const char *peer = "openmpi";
    int rank, n;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = v != NULL;
        if (ok && !strcmp(a, "--min-bytes")) lo = parse_size(v), ok = lo >= 0;
        else if (ok && !strcmp(a, "--max-bytes")) hi = parse_size(v), ok = hi >= 0;
        else if (ok && !strcmp(a, "--iters")) iters = atoi(v), ok = iters >= 1;
        else if (ok && !strcmp(a, "--warmup")) warmup = atoi(v), ok = warmup >= 0;
        else if (ok && !strcmp(a, "--peer")) peer = v;
        else ok = 0;
        if (!ok) {
            if (rank == 0) usage();
            MPI_Finalize();
            return 2;
        }
        i++;
    }
    if (lo < 4) lo = 4;

    float *x = malloc(hi > 4 ? (size_t)hi : 4);
    if (!x) {
        fprintf(stderr, "mpi_allreduce: cannot allocate %lld bytes\n", hi);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (long long b = lo; b <= hi; b *= 2) {
        int count = (int)(b / 4);
        for (int j = 0; j < count; j++) x[j] = 1.0f;
        /* Correctness check, in place like the timed calls. */
        MPI_Allreduce(MPI_IN_PLACE, x, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        for (int j = 0; j < count; j++) {
            if (x[j] != (float)n) {
                fprintf(stderr, "mpi_allreduce: wrong result at %lld bytes\n", b);
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
        }
        memset(x, 0, (size_t)count * 4); /* steady value, no overflow */
        for (int it = 0; it < warmup; it++)
            MPI_Allreduce(MPI_IN_PLACE, x, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        for (int it = 0; it < iters; it++)
            MPI_Allreduce(MPI_IN_PLACE, x, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        double avg = (MPI_Wtime() - t0) / iters, sec;
        MPI_Reduce(&avg, &sec, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            double algbw = (double)b / sec / 1e9;
            printf("{\"peer\":\"%s\",\"np\":%d,\"bytes\":%lld,\"time_us\":%.2f,"
                   "\"algbw_gbps\":%.4f,\"busbw_gbps\":%.4f}\n",
                   peer, n, b, sec * 1e6, algbw, algbw * 2.0 * (n - 1) / n);
            fflush(stdout);
        }
    }
    free(x);
    MPI_Finalize();
    return 0;
}
