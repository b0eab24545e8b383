/* Group norm, leaky ReLU (slope 0: ReLU) and 2x2 average pooling (floor mode) in one pass.
 *
 * float32, contiguous NCHW, one thread. Loaded by nas_proxy/kernels.py through ctypes.
 * A group is `c / groups` consecutive channels, so one contiguous block of memory: its statistics,
 * its normalization, the activation and the pooling all happen while it sits in cache, where
 * PyTorch's separate kernels stream the whole tensor through memory once per operation.
 * The backward recomputes the activation from x and the saved statistics instead of storing it.
 * Sums use LANES independent accumulators, so the compiler vectorizes them without -ffast-math
 * (which would let it assume no NaNs: a diverging model must stay NaN, not turn into garbage).
 */
#include <math.h>
#include <stddef.h>

#define LANES 16
#define MAX_WIDTH 4096

static float sum_of(const float *p, size_t m) {
    float acc[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= m; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += p[i + l];
    float s = 0;
    for (int l = 0; l < LANES; l++) s += acc[l];
    for (; i < m; i++) s += p[i];
    return s;
}

static float squared_deviations(const float *p, size_t m, float mean) {
    float acc[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= m; i += LANES)
        for (int l = 0; l < LANES; l++) {
            float d = p[i + l] - mean;
            acc[l] += d * d;
        }
    float s = 0;
    for (int l = 0; l < LANES; l++) s += acc[l];
    for (; i < m; i++) {
        float d = p[i] - mean;
        s += d * d;
    }
    return s;
}

/* out (n, c, h/2, w/2); mean, rstd (n, groups): what the backward needs besides x. */
void norm_act_pool_forward(const float *x, const float *weight, const float *bias, long n, long c, long h,
                           long w, long groups, float eps, float slope, float *out, float *mean, float *rstd) {
    long cpg = c / groups, hw = h * w, ho = h / 2, wo = w / 2;
    float row0[MAX_WIDTH], row1[MAX_WIDTH];
    for (long ni = 0; ni < n; ni++)
        for (long g = 0; g < groups; g++) {
            const float *block = x + (ni * c + g * cpg) * hw;
            size_t m = (size_t)(cpg * hw);
            float mu = sum_of(block, m) / (float)m;
            float rs = 1.0f / sqrtf(squared_deviations(block, m, mu) / (float)m + eps);
            mean[ni * groups + g] = mu;
            rstd[ni * groups + g] = rs;
            for (long k = 0; k < cpg; k++) {
                long ch = g * cpg + k;
                float a = weight[ch] * rs, b = bias[ch] - mu * a;
                const float *plane = block + k * hw;
                float *o = out + (ni * c + ch) * ho * wo;
                for (long i = 0; i < ho; i++) {
                    const float *r0 = plane + 2 * i * w, *r1 = r0 + w;
                    for (long j = 0; j < 2 * wo; j++) {
                        float z0 = a * r0[j] + b, z1 = a * r1[j] + b;
                        row0[j] = z0 > 0 ? z0 : slope * z0;
                        row1[j] = z1 > 0 ? z1 : slope * z1;
                    }
                    /* the order of PyTorch's pooling kernel: ((x00 + x01) + x10) + x11, then / 4 */
                    for (long j = 0; j < wo; j++)
                        o[i * wo + j] = (((row0[2 * j] + row0[2 * j + 1]) + row1[2 * j]) + row1[2 * j + 1]) / 4;
                }
            }
        }
}

/* dx (n, c, h, w); dweight, dbias (c,) are accumulated into (the caller zeroes them). */
void norm_act_pool_backward(const float *x, const float *weight, const float *bias, const float *mean,
                            const float *rstd, const float *dout, long n, long c, long h, long w, long groups,
                            float slope, float *dx, float *dweight, float *dbias) {
    long cpg = c / groups, hw = h * w, ho = h / 2, wo = w / 2;
    float spread[MAX_WIDTH];
    for (long ni = 0; ni < n; ni++)
        for (long g = 0; g < groups; g++) {
            float mu = mean[ni * groups + g], rs = rstd[ni * groups + g];
            const float *block = x + (ni * c + g * cpg) * hw;
            float *dblock = dx + (ni * c + g * cpg) * hw;
            float sum_dxhat = 0, sum_dxhat_xhat = 0;
            /* First pass: the gradient at the norm's output (pooling spread back, masked by the
             * activation), kept in dx, and its two sums per channel. */
            for (long k = 0; k < cpg; k++) {
                long ch = g * cpg + k;
                float a = weight[ch] * rs, b = bias[ch] - mu * a;
                const float *plane = block + k * hw;
                const float *d = dout + (ni * c + ch) * ho * wo;
                float *dz = dblock + k * hw;
                float acc1[LANES] = {0}, acc2[LANES] = {0};
                for (long i = 0; i < h; i++) {
                    const float *xr = plane + i * w;
                    float *dr = dz + i * w;
                    if (i >= 2 * ho) { /* floor mode: a last odd row gets no gradient */
                        for (long j = 0; j < w; j++) dr[j] = 0;
                        continue;
                    }
                    const float *drow = d + (i / 2) * wo;
                    for (long j = 0; j < wo; j++) spread[2 * j] = spread[2 * j + 1] = drow[j] / 4;
                    for (long j = 2 * wo; j < w; j++) spread[j] = 0;
                    long j = 0;
                    for (; j + LANES <= w; j += LANES)
                        for (int l = 0; l < LANES; l++) {
                            float xv = xr[j + l], z = a * xv + b, v = spread[j + l];
                            v = z > 0 ? v : slope * v;
                            dr[j + l] = v;
                            acc1[l] += v;
                            acc2[l] += v * ((xv - mu) * rs);
                        }
                    for (; j < w; j++) {
                        float xv = xr[j], z = a * xv + b, v = spread[j];
                        v = z > 0 ? v : slope * v;
                        dr[j] = v;
                        acc1[0] += v;
                        acc2[0] += v * ((xv - mu) * rs);
                    }
                }
                float s1 = 0, s2 = 0;
                for (int l = 0; l < LANES; l++) {
                    s1 += acc1[l];
                    s2 += acc2[l];
                }
                dbias[ch] += s1;
                dweight[ch] += s2;
                sum_dxhat += weight[ch] * s1;
                sum_dxhat_xhat += weight[ch] * s2;
            }
            /* Second pass: group norm's input gradient, over the first pass's values in place. */
            float inv_m = 1.0f / (float)(cpg * hw);
            float m1 = sum_dxhat * inv_m, m2 = sum_dxhat_xhat * inv_m;
            for (long k = 0; k < cpg; k++) {
                float gk = weight[g * cpg + k];
                const float *plane = block + k * hw;
                float *o = dblock + k * hw;
                for (long e = 0; e < hw; e++) o[e] = rs * (gk * o[e] - m1 - ((plane[e] - mu) * rs) * m2);
            }
        }
}
