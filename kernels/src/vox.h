/* Parameter blocks shared by the CUDA kernels (voxkernels.cu) and their Go
 * callers (kernels/gpu.go, through cgo): one definition, so that a struct
 * passed by value to cuLaunchKernel has the layout the kernel expects. */
#ifndef VOX_H
#define VOX_H

#define VOX_MAX_WINDOWS 8
#define VOX_MAX_LABELS 16

/* Windows: channel c is clamp((v - low[c]) * scale[c], 0, 1). */
typedef struct {
	int n;
	float low[VOX_MAX_WINDOWS];
	float scale[VOX_MAX_WINDOWS];
} vox_windows;

/* Source continuous index a of target voxel (i, j, k):
 * off[a] + i*m[3a] + j*m[3a+1] + k*m[3a+2]. */
typedef struct {
	double off[3];
	double m[9];
} vox_affine;

/* Per-label thresholds for the label map, in label order. */
typedef struct {
	int n;
	double t[VOX_MAX_LABELS];
} vox_thresholds;

#endif
