// voxserve's CUDA kernels: preprocessing (rescale, resampling, windows,
// normalization, slabs, patches) and postprocessing (sliding-window
// aggregation, activation + label map, connected components, per-label
// statistics). Each one matches a Go reference in preprocess/ or
// postprocess/, operation for operation: `make kernels` compiles with
// --fmad=false so that a*b+c rounds twice, as Go does on amd64, and the
// resampling weights come from the same host-side tables. The tests in
// kernels/ compare every kernel with its reference on random data.
//
// Layouts follow the Go side: volumes are z-major (index (k*ny + j)*nx + i),
// channels are planes one after another.
#include "vox.h"

#define GRID_STRIDE(i, n) \
	for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
	     i += (long long)blockDim.x * gridDim.x)

static __device__ __forceinline__ float lerp(float a, float b, float w) { return a + (b - a) * w; }

// sample_tables is the separable trilinear sample of output voxel (i, j,
// k) through per-axis tables (x0, x1, wx: the two source indices and the
// weight of the second for each output index, as preprocess.NewAxisMap
// builds them); with Rescale each source value becomes v*slope + intercept
// first, as the CPU reference does.
template <typename T, bool Rescale>
static __device__ __forceinline__ float sample_tables(
    const T *__restrict__ src, int sx, int sy, float slope, float intercept, int i, int j, int k,
    const int *__restrict__ x0, const int *__restrict__ x1, const float *__restrict__ wx,
    const int *__restrict__ y0, const int *__restrict__ y1, const float *__restrict__ wy,
    const int *__restrict__ z0, const int *__restrict__ z1, const float *__restrict__ wz) {
	int a0 = x0[i], a1 = x1[i];
	float fx = wx[i], fy = wy[j], fz = wz[k];
	long long plane = (long long)sx * sy;
	const T *r00 = src + z0[k] * plane + (long long)y0[j] * sx;
	const T *r01 = src + z0[k] * plane + (long long)y1[j] * sx;
	const T *r10 = src + z1[k] * plane + (long long)y0[j] * sx;
	const T *r11 = src + z1[k] * plane + (long long)y1[j] * sx;
	auto at = [&](const T *r, int a) {
		float v = (float)__ldg(r + a);
		return Rescale ? v * slope + intercept : v;
	};
	float c00 = lerp(at(r00, a0), at(r00, a1), fx);
	float c01 = lerp(at(r01, a0), at(r01, a1), fx);
	float c10 = lerp(at(r10, a0), at(r10, a1), fx);
	float c11 = lerp(at(r11, a0), at(r11, a1), fx);
	return lerp(lerp(c00, c01, fy), lerp(c10, c11, fy), fz);
}

// window_resample is the fused preprocessing pass: it reads stored values
// once, rescales them, resamples them (sample_tables) and writes win.n
// windowed float32 channels once.
// Launch: grid (ceil(ox/block), oy, oz).
template <typename T>
static __device__ __forceinline__ void window_resample(
    const T *__restrict__ src, int sx, int sy, float slope, float intercept,
    const int *__restrict__ x0, const int *__restrict__ x1, const float *__restrict__ wx,
    const int *__restrict__ y0, const int *__restrict__ y1, const float *__restrict__ wy,
    const int *__restrict__ z0, const int *__restrict__ z1, const float *__restrict__ wz, int ox,
    int oy, int oz, const vox_windows &win, float *__restrict__ out) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	int j = blockIdx.y, k = blockIdx.z;
	if (i >= ox) return;
	float v = sample_tables<T, true>(src, sx, sy, slope, intercept, i, j, k, x0, x1, wx, y0, y1, wy, z0, z1, wz);
	long long n = (long long)ox * oy * oz;
	long long o = ((long long)k * oy + j) * ox + i;
	// Constant trip count: win stays in the parameter bank instead of being
	// copied to local memory for run-time indexing (72 bytes per thread).
#pragma unroll
	for (int c = 0; c < VOX_MAX_WINDOWS; c++) {
		if (c >= win.n) break;
		float x = (v - win.low[c]) * win.scale[c];
		out[c * n + o] = fminf(fmaxf(x, 0.f), 1.f);
	}
}

extern "C" {

#define WINDOW_RESAMPLE_KERNEL(name, T)                                                          \
	__global__ void name(const T *__restrict__ src, int sx, int sy, float slope, float intercept,    \
	                     const int *__restrict__ x0, const int *__restrict__ x1,                    \
	                     const float *__restrict__ wx, const int *__restrict__ y0,                  \
	                     const int *__restrict__ y1, const float *__restrict__ wy,                  \
	                     const int *__restrict__ z0, const int *__restrict__ z1,                    \
	                     const float *__restrict__ wz, int ox, int oy, int oz, vox_windows win,     \
	                     float *__restrict__ out) {                                                 \
		window_resample(src, sx, sy, slope, intercept, x0, x1, wx, y0, y1, wy, z0, z1, wz, ox, oy, \
		                oz, win, out);                                                             \
	}

// vox_window_resample_i16 takes stored int16 values: DICOM pixels as they
// arrive, read once.
WINDOW_RESAMPLE_KERNEL(vox_window_resample_i16, short)

// vox_window_resample_f32 takes float32 values (already rescaled: slope 1,
// intercept 0 make the rescale exact).
WINDOW_RESAMPLE_KERNEL(vox_window_resample_f32, float)

// vox_resample_f32 resamples a float32 volume through per-axis tables (the
// tables decide trilinear or nearest). Launch: grid (ceil(ox/block), oy, oz).
__global__ void vox_resample_f32(const float *__restrict__ src, int sx, int sy,
                                 const int *__restrict__ x0, const int *__restrict__ x1,
                                 const float *__restrict__ wx, const int *__restrict__ y0,
                                 const int *__restrict__ y1, const float *__restrict__ wy,
                                 const int *__restrict__ z0, const int *__restrict__ z1,
                                 const float *__restrict__ wz, int ox, int oy,
                                 float *__restrict__ out) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	int j = blockIdx.y, k = blockIdx.z;
	if (i >= ox) return;
	out[((long long)k * oy + j) * ox + i] =
	    sample_tables<float, false>(src, sx, sy, 1.f, 0.f, i, j, k, x0, x1, wx, y0, y1, wy, z0, z1, wz);
}

// vox_to_grid_f32 maps a float32 volume onto another grid through an
// affine index map (preprocess.ToGridInto): trilinear with edge clamping,
// or nearest leaving outside voxels as they are. Launch as vox_resample_f32.
// Source slices are zs values apart (sx*sy when contiguous; more for one
// channel of a [z, C, y, x] batch of slices read where the model left it).
__global__ void vox_to_grid_f32(const float *__restrict__ src, int sx, int sy, int sz,
                                long long zs, vox_affine t, int nearest, int ox, int oy,
                                float *__restrict__ out) {
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	int j = blockIdx.y, k = blockIdx.z;
	if (i >= ox) return;
	int n[3] = {sx, sy, sz};
	int lo[3], hi[3];
	float w[3] = {0.f, 0.f, 0.f};
#pragma unroll
	for (int a = 0; a < 3; a++) {
		double x = t.off[a] + (double)i * t.m[3 * a] + (double)j * t.m[3 * a + 1] +
		           (double)k * t.m[3 * a + 2];
		if (nearest) {
			double r = floor(x + 0.5);
			if (r < 0 || r >= n[a]) return;
			lo[a] = hi[a] = (int)r;
			continue;
		}
		x = fmin(fmax(x, 0.0), (double)(n[a] - 1));
		int f = (int)floor(x);
		if (f >= n[a] - 1) {
			lo[a] = hi[a] = n[a] - 1;
		} else {
			lo[a] = f;
			hi[a] = f + 1;
			w[a] = (float)(x - (double)f);
		}
	}
#define AT(x, y, z) __ldg(src + (long long)(z) * zs + (long long)(y) * sx + (x))
	float c00 = lerp(AT(lo[0], lo[1], lo[2]), AT(hi[0], lo[1], lo[2]), w[0]);
	float c01 = lerp(AT(lo[0], hi[1], lo[2]), AT(hi[0], hi[1], lo[2]), w[0]);
	float c10 = lerp(AT(lo[0], lo[1], hi[2]), AT(hi[0], lo[1], hi[2]), w[0]);
	float c11 = lerp(AT(lo[0], hi[1], hi[2]), AT(hi[0], hi[1], hi[2]), w[0]);
#undef AT
	out[((long long)k * oy + j) * ox + i] = lerp(lerp(c00, c01, w[1]), lerp(c10, c11, w[1]), w[2]);
}

// vox_clip_scale maps [amin, amax] to [bmin, ...] in place, clipping.
__global__ void vox_clip_scale(float *v, long long n, float amin, float amax, float scale,
                               float bmin) {
	GRID_STRIDE(i, n) {
		float x = fminf(fmaxf(v[i], amin), amax);
		v[i] = (x - amin) * scale + bmin;
	}
}

static __device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
	for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
	return x;
}

// block_sum adds x over the block into *acc (blockDim.x a multiple of 32, at
// most 1024), through part, the caller's 32 doubles of shared memory. The
// shared array lives in the kernel, not here: a static function's static
// variable gets a name mangled with a hash of the source path, and the PTX
// must not depend on where the repository is checked out.
static __device__ void block_sum(double x, double *acc, double *part) {
	x = warp_sum(x);
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	if (lane == 0) part[warp] = x;
	__syncthreads();
	if (warp == 0) {
		x = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0;
		x = warp_sum(x);
		if (lane == 0) atomicAdd(acc, x);
	}
}

// vox_sum_f64 adds v's values (as float64) into acc[0]; with mean given,
// it adds the squared deviations instead (the second pass of a z-score).
__global__ void vox_sum_f64(const float *__restrict__ v, long long n, int deviations, double mean,
                            double *acc) {
	__shared__ double part[32];
	double s = 0;
	GRID_STRIDE(i, n) {
		double x = (double)v[i];
		if (deviations) {
			x -= mean;
			x *= x;
		}
		s += x;
	}
	block_sum(s, acc, part);
}

// vox_shift_scale sets v = (v - m) * inv in place.
__global__ void vox_shift_scale(float *v, long long n, float m, float inv) {
	GRID_STRIDE(i, n) { v[i] = (v[i] - m) * inv; }
}

// store writes v at out[at]: float16 (rounded to nearest even, as
// tensor.Float32ToHalf) when half, float32 otherwise.
static __device__ __forceinline__ void store(void *out, long long at, float v, int half) {
	if (half) {
		unsigned short h;
		asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v)); // no cuda_fp16.h needed
		((unsigned short *)out)[at] = h;
	} else {
		((float *)out)[at] = v;
	}
}

// vox_slabs lays channels [C, nz, ny, nx] out as 2.5D slabs
// [nz, C*(2r+1), oy, ox], clamping slice indices at the ends
// (preprocess.SlabsTensor; r = 0 gives 2D slices), cropped or padded
// in-plane on the way: output (i, j) reads channel voxel (i+offx, j+offy),
// pad outside (preprocess.CropOrPad). ox = nx, oy = ny and no offsets give
// the slabs alone. half writes float16 (rounded to nearest even, as
// tensor.Float32ToHalf) for a model that takes it, float32 otherwise.
// Launch: grid (ceil(ox*oy/block), C*(2r+1), nz).
__global__ void vox_slabs(const float *__restrict__ ch, int C, int nx, int ny, int nz, int r,
                          int ox, int oy, int offx, int offy, float pad, int half,
                          void *__restrict__ out) {
	long long plane = (long long)ox * oy;
	long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;
	if (p >= plane) return;
	int depth = 2 * r + 1;
	int cd = blockIdx.y, k = blockIdx.z;
	int c = cd / depth, o = cd % depth - r;
	int s = min(max(k + o, 0), nz - 1);
	int i = (int)(p % ox) + offx, j = (int)(p / ox) + offy;
	float v = pad;
	if (i >= 0 && i < nx && j >= 0 && j < ny)
		v = ch[((long long)c * nz + s) * nx * ny + (long long)j * nx + i];
	store(out, ((long long)k * C * depth + cd) * plane + p, v, half);
}

// vox_extract_patches copies patches ([P][C][pz][py][px]) out of channels
// [C, nz, ny, nx]; starts holds x, y, z per patch; voxels beyond the
// volume take pad (preprocess.ExtractPatch); float16 when half.
// Launch: grid (ceil(px*py*pz/block), C, P).
__global__ void vox_extract_patches(const float *__restrict__ ch, int C, int nx, int ny, int nz,
                                    const int *__restrict__ starts, int px, int py, int pz,
                                    float pad, int half, void *__restrict__ out) {
	long long pv = (long long)px * py * pz;
	long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
	if (e >= pv) return;
	int c = blockIdx.y, p = blockIdx.z;
	int i = (int)(e % px), j = (int)((e / px) % py), k = (int)(e / ((long long)px * py));
	int x = starts[3 * p] + i, y = starts[3 * p + 1] + j, z = starts[3 * p + 2] + k;
	float v = pad;
	if (x < nx && y < ny && z < nz) v = ch[(((long long)c * nz + z) * ny + y) * nx + x];
	store(out, ((long long)p * C + c) * pv + e, v, half);
}

// vox_aggregate_patches stitches patch predictions ([P][C][pz][py][px], P
// in preprocess.Patches order: z outermost) into channels [C, nz, ny, nx]
// as the Gaussian-weighted mean of the patches covering each voxel. It
// gathers rather than scatters, in the reference's patch order, so that
// each voxel's sums are the same float32 additions preprocess.Aggregator
// makes, and no atomics are needed.
// Launch: grid (ceil(nx/block), ny, nz*C).
__global__ void vox_aggregate_patches(const float *__restrict__ pred, int C, int nx, int ny,
                                      int nz, const int *__restrict__ xs, int nxs,
                                      const int *__restrict__ ys, int nys,
                                      const int *__restrict__ zs, int nzs, int px, int py, int pz,
                                      const float *__restrict__ gauss, float *__restrict__ out) {
	int x = blockIdx.x * blockDim.x + threadIdx.x;
	if (x >= nx) return;
	int y = blockIdx.y, z = blockIdx.z % nz, c = blockIdx.z / nz;
	long long pv = (long long)px * py * pz;
	float sum = 0.f, wsum = 0.f;
	for (int kz = 0; kz < nzs; kz++) {
		int lz = z - zs[kz];
		if (lz < 0 || lz >= pz) continue;
		for (int ky = 0; ky < nys; ky++) {
			int ly = y - ys[ky];
			if (ly < 0 || ly >= py) continue;
			for (int kx = 0; kx < nxs; kx++) {
				int lx = x - xs[kx];
				if (lx < 0 || lx >= px) continue;
				long long local = ((long long)lz * py + ly) * px + lx;
				float w = gauss[local];
				long long patch = ((long long)kz * nys + ky) * nxs + kx;
				wsum += w;
				sum += w * pred[(patch * C + c) * pv + local];
			}
		}
	}
	long long n = (long long)nx * ny * nz;
	out[c * n + ((long long)z * ny + y) * nx + x] = wsum > 0.f ? sum / wsum : 0.f;
}

// vox_label_map turns a [B, C, n] output into labels (postprocess
// labelMap): mode 1 sigmoid, 2 softmax over channels, 0 none, computed in
// float64; each voxel gets 1 + its most probable channel (first wins ties)
// if that probability reaches the channel's threshold, else 0.
__global__ void vox_label_map(const float *__restrict__ v, int B, int C, long long n, int mode,
                              vox_thresholds th, unsigned char *__restrict__ out) {
	GRID_STRIDE(e, (long long)B * n) {
		long long b = e / n, i = e % n;
		const float *base = v + b * C * n + i;
		// Two passes over the channels instead of an array of
		// probabilities, which would live in local memory.
		double m = -INFINITY, s = 0;
		for (int c = 0; c < C; c++) m = fmax(m, (double)base[c * n]);
		if (mode == 2)
			for (int c = 0; c < C; c++) s += exp((double)base[c * n] - m);
		double pbest = 0, tbest = 0;
		int best = -1;
#pragma unroll
		for (int c = 0; c < VOX_MAX_LABELS; c++) {
			if (c >= C) break;
			double p = (double)base[c * n];
			if (mode == 1) p = 1.0 / (1.0 + exp(-p));
			else if (mode == 2) p = exp(p - m) / s;
			if (best < 0 || p > pbest) {
				best = c;
				pbest = p;
				tbest = th.t[c];
			}
		}
		out[e] = pbest >= tbest ? (unsigned char)(best + 1) : 0;
	}
}

// vox_label_stats adds, per label value, the voxel count and the sum of
// values (values may be null) into counts[256] and sums[256].
__global__ void vox_label_stats(const unsigned char *__restrict__ lab,
                                const float *__restrict__ values, long long n,
                                unsigned long long *counts, double *sums) {
	__shared__ unsigned int c[256];
	__shared__ double s[256];
	for (int l = threadIdx.x; l < 256; l += blockDim.x) {
		c[l] = 0;
		s[l] = 0;
	}
	__syncthreads();
	GRID_STRIDE(i, n) {
		int l = lab[i];
		atomicAdd(&c[l], 1u);
		if (values) atomicAdd(&s[l], (double)values[i]);
	}
	__syncthreads();
	for (int l = threadIdx.x; l < 256; l += blockDim.x) {
		if (c[l]) {
			atomicAdd(&counts[l], (unsigned long long)c[l]);
			if (values) atomicAdd(&sums[l], s[l]);
		}
	}
}

// Connected components (26-connected, within one label value) by
// union-find with atomicMin on the parent array (Playne and Hawick, IEEE
// TPDS 2018): every root is the smallest index of its component.

static __device__ int ccl_find(const int *p, int x) {
	while (true) {
		int q = ((volatile const int *)p)[x];
		if (q == x) return x;
		x = q;
	}
}

static __device__ void ccl_union(int *p, int a, int b) {
	bool done;
	do {
		a = ccl_find(p, a);
		b = ccl_find(p, b);
		if (b < a) {
			int old = atomicMin(p + a, b);
			done = old == a;
			a = old;
		} else if (a < b) {
			int old = atomicMin(p + b, a);
			done = old == b;
			b = old;
		} else {
			done = true;
		}
	} while (!done);
}

__global__ void vox_ccl_init(int *p, int *size, long long n) {
	GRID_STRIDE(i, n) {
		p[i] = (int)i;
		size[i] = 0;
	}
}

// vox_ccl_merge unites each labelled voxel with its 13 earlier neighbours
// (the other 13 unite with it from their side).
__global__ void vox_ccl_merge(const unsigned char *__restrict__ lab, int nx, int ny, int nz,
                              int *p) {
	GRID_STRIDE(v, (long long)nx * ny * nz) {
		int l = lab[v];
		if (l == 0) continue;
		int x = (int)(v % nx), y = (int)((v / nx) % ny), z = (int)(v / ((long long)nx * ny));
		for (int dz = -1; dz <= 0; dz++)
			for (int dy = -1; dy <= 1; dy++)
				for (int dx = -1; dx <= 1; dx++) {
					if (dz == 0 && (dy > 0 || (dy == 0 && dx >= 0))) continue;
					int xx = x + dx, yy = y + dy, zz = z + dz;
					if (xx < 0 || yy < 0 || zz < 0 || xx >= nx || yy >= ny) continue;
					int w = (zz * ny + yy) * nx + xx;
					if (lab[w] == l) ccl_union(p, (int)v, w);
				}
	}
}

// vox_ccl_count points every labelled voxel at its root and counts the
// root's voxels.
__global__ void vox_ccl_count(const unsigned char *__restrict__ lab, long long n, int *p,
                              int *size) {
	GRID_STRIDE(v, n) {
		if (lab[v] == 0) continue;
		int r = ccl_find(p, (int)v);
		p[v] = r;
		atomicAdd(size + r, 1);
	}
}

// vox_ccl_remove zeroes voxels of components smaller than min and counts
// the components removed into *removed.
__global__ void vox_ccl_remove(unsigned char *lab, long long n, const int *__restrict__ p,
                               const int *__restrict__ size, int min, int *removed) {
	GRID_STRIDE(v, n) {
		if (lab[v] == 0) continue;
		int r = p[v];
		if (size[r] >= min) continue;
		if (r == v) atomicAdd(removed, 1);
		lab[v] = 0;
	}
}

}  // extern "C"
