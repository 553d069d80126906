// A stand-in for the CUDA driver library, for tests on machines without a
// GPU. It exports the driver functions package cuda calls, with the same
// C signatures, and backs "device memory" with host memory, so that the
// Go binding's calls, argument passing, result codes and context handling
// run for real. It enforces what the real driver enforces that a binding
// can get wrong: a context must be current on the calling thread, and
// allocations fail with CUDA_ERROR_OUT_OF_MEMORY past the device's size.
// It cannot run kernels: cuLaunchKernel returns CUDA_ERROR_NOT_SUPPORTED.
//
// Environment: FAKECUDA_DEVICES (default 1; 0 makes cuInit fail with
// CUDA_ERROR_NO_DEVICE), FAKECUDA_MEM (bytes per device, default 1 GiB).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>

typedef int CUresult;
typedef uint64_t CUdeviceptr;

enum {
	OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3,
	NO_DEVICE = 100, INVALID_DEVICE = 101, INVALID_CONTEXT = 201,
	INVALID_PTX = 218, NOT_FOUND = 500, NOT_SUPPORTED = 801,
};

static int inited, ndev = 1;
static size_t memsize = (size_t)1 << 30;
static size_t used;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static __thread void *current;

#define NEED_CTX() do { if (!inited) return NOT_INITIALIZED; if (!current) return INVALID_CONTEXT; } while (0)

CUresult cuInit(unsigned flags) {
	const char *d = getenv("FAKECUDA_DEVICES"), *m = getenv("FAKECUDA_MEM");
	ndev = d ? atoi(d) : 1;
	if (m) memsize = strtoull(m, 0, 10);
	if (ndev == 0) return NO_DEVICE;
	inited = 1;
	return OK;
}
CUresult cuDriverGetVersion(int *v) { *v = 12040; return OK; }
CUresult cuDeviceGetCount(int *n) { if (!inited) return NOT_INITIALIZED; *n = ndev; return OK; }
CUresult cuDeviceGet(int *dev, int ordinal) {
	if (!inited) return NOT_INITIALIZED;
	if (ordinal < 0 || ordinal >= ndev) return INVALID_DEVICE;
	*dev = ordinal;
	return OK;
}
CUresult cuDeviceGetName(char *name, int len, int dev) {
	strncpy(name, "Fake CUDA Device", len);
	return OK;
}
CUresult cuDeviceGetUuid(unsigned char *u, int dev) {
	for (int i = 0; i < 16; i++) u[i] = (unsigned char)(0x10 * i + dev);
	return OK;
}
CUresult cuDeviceTotalMem_v2(size_t *b, int dev) { *b = memsize; return OK; }
CUresult cuDeviceGetAttribute(int *v, int attr, int dev) {
	switch (attr) {
	case 16: *v = 4; break;  // multiprocessors
	case 75: *v = 9; break;  // compute capability major
	case 76: *v = 0; break;
	default: return INVALID_VALUE;
	}
	return OK;
}
static char contexts[64];
CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) {
	if (dev < 0 || dev >= ndev || dev >= 64) return INVALID_DEVICE;
	*ctx = &contexts[dev];
	return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(int dev) { return OK; }
CUresult cuCtxSetCurrent(void *ctx) { current = ctx; return OK; }
CUresult cuMemGetInfo_v2(size_t *free, size_t *total) {
	NEED_CTX();
	pthread_mutex_lock(&mu);
	*free = memsize - used;
	pthread_mutex_unlock(&mu);
	*total = memsize;
	return OK;
}
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
	NEED_CTX();
	if (n == 0) return INVALID_VALUE;
	pthread_mutex_lock(&mu);
	if (n > memsize - used) { pthread_mutex_unlock(&mu); return OUT_OF_MEMORY; }
	used += n;
	pthread_mutex_unlock(&mu);
	size_t *b = malloc(n + 16);
	if (!b) return OUT_OF_MEMORY;
	b[0] = n;
	*p = (CUdeviceptr)(uintptr_t)(b + 2);
	return OK;
}
CUresult cuMemFree_v2(CUdeviceptr p) {
	NEED_CTX();
	size_t *b = (size_t *)(uintptr_t)p - 2;
	pthread_mutex_lock(&mu);
	used -= b[0];
	pthread_mutex_unlock(&mu);
	free(b);
	return OK;
}
CUresult cuMemHostAlloc(void **p, size_t n, unsigned flags) {
	NEED_CTX();
	*p = malloc(n);
	return *p ? OK : OUT_OF_MEMORY;
}
CUresult cuMemFreeHost(void *p) { NEED_CTX(); free(p); return OK; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, void *s) {
	NEED_CTX(); memcpy((void *)(uintptr_t)dst, src, n); return OK;
}
CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, void *s) {
	NEED_CTX(); memcpy(dst, (void *)(uintptr_t)src, n); return OK;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void *s) {
	NEED_CTX(); memmove((void *)(uintptr_t)dst, (void *)(uintptr_t)src, n); return OK;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void *s) {
	NEED_CTX(); memset((void *)(uintptr_t)dst, v, n); return OK;
}
CUresult cuStreamCreate(void **s, unsigned flags) { NEED_CTX(); *s = malloc(8); return OK; }
CUresult cuStreamDestroy_v2(void *s) { NEED_CTX(); free(s); return OK; }
CUresult cuStreamSynchronize(void *s) { NEED_CTX(); return OK; }
CUresult cuEventCreate(void **e, unsigned flags) { NEED_CTX(); *e = calloc(1, sizeof(struct timespec)); return OK; }
CUresult cuEventRecord(void *e, void *s) { NEED_CTX(); clock_gettime(CLOCK_MONOTONIC, e); return OK; }
CUresult cuEventSynchronize(void *e) { NEED_CTX(); return OK; }
CUresult cuEventElapsedTime(float *ms, void *a, void *b) {
	NEED_CTX();
	struct timespec *x = a, *y = b;
	*ms = (float)((y->tv_sec - x->tv_sec) * 1e3 + (y->tv_nsec - x->tv_nsec) / 1e6);
	return OK;
}
CUresult cuEventDestroy_v2(void *e) { NEED_CTX(); free(e); return OK; }
CUresult cuModuleLoadDataEx(void **m, const void *image, unsigned n, int *opts, void **vals) {
	NEED_CTX();
	const char *text = image;
	if (strncmp(text, ".version", 8) != 0 && !strstr(text, "\n.version")) {
		for (unsigned i = 0; i < n; i++)
			if (opts[i] == 5) {
				size_t size = 0;
				for (unsigned j = 0; j < n; j++)
					if (opts[j] == 6) size = (size_t)(uintptr_t)vals[j];
				strncpy(vals[i], "ptxas fatal   : no .version directive", size);
			}
		return INVALID_PTX;
	}
	*m = strdup(text);
	return OK;
}
CUresult cuModuleGetFunction(void **f, void *m, const char *name) {
	NEED_CTX();
	char want[256];
	snprintf(want, sizeof want, ".entry %s(", name);
	char *at = strstr(m, want);
	if (!at) return NOT_FOUND;
	*f = at;
	return OK;
}
CUresult cuModuleUnload(void *m) { NEED_CTX(); free(m); return OK; }
CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
	unsigned shared, void *s, void **params, void **extra) {
	NEED_CTX();
	return NOT_SUPPORTED;
}
CUresult cuGetErrorName(CUresult r, const char **s) {
	switch (r) {
	case OK: *s = "CUDA_SUCCESS"; break;
	case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
	case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
	case NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
	case NO_DEVICE: *s = "CUDA_ERROR_NO_DEVICE"; break;
	case INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
	case INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
	case INVALID_PTX: *s = "CUDA_ERROR_INVALID_PTX"; break;
	case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
	case NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
	default: return INVALID_VALUE;
	}
	return OK;
}
CUresult cuGetErrorString(CUresult r, const char **s) {
	switch (r) {
	case OUT_OF_MEMORY: *s = "out of memory"; break;
	case NO_DEVICE: *s = "no CUDA-capable device is detected"; break;
	case INVALID_CONTEXT: *s = "invalid device context"; break;
	case NOT_SUPPORTED: *s = "operation not supported"; break;
	default: *s = "fake driver error"; break;
	}
	return OK;
}
