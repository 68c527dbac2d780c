/* Channels-last CPU kernels of a bidirectional Mamba layer (cinemamba_backbone.ops.cpu_native,
 * issue 20): its two direction convs and its two selective scans, on in_proj's token-major
 * output as it is (channels contiguous), so nothing is transposed on the way in or out.
 *
 * The row kernels of selective_scan.c scan one (b, d) row at a time with its n states as one
 * vector, so every step ends in a horizontal sum over n and a short row pays its set-up for
 * few steps. Here a vector runs over VL = 16 channels instead, with their n states as n
 * vectors: the readout Σ_n h C is n vertical multiply-adds, B_t and C_t are scalars broadcast
 * over the channels, and a row of any length is one pass over its steps.
 *
 * Float32 throughout. G groups (the directions), each with its own parameters; the groups
 * g >= rev_from run from the last step to the first, and their conv is anti-causal:
 *
 *   x                      (b, l, d), strides (sxb, sxl), channels contiguous (in_proj's)
 *   conv w (G, k, d), bias (G, d); gw_rows (b, G, k, d), gb_rows (b, G, d)
 *   u, y, gy, gu           (G, b, l, d)
 *   x_dbl, gx              (G, b, l, R), x_proj's output: Δ columns [0, r), B [r, r + n),
 *                          C [r + n, r + 2n)
 *   W_T (G, r, d), bias (G, d): Δ = softplus(bias + Σ_j x_dbl[j] W_T[j]), made per step
 *                          (Mamba's dt_proj and softplus, fused) and remade in the backward
 *   A_T (G, n, d), D (G, d)
 *   ckpt                   (G, b, d / VL, ceil(l / block), n, VL): the states before scan
 *                          steps 0, block, 2·block, ...
 *
 * d must be a multiple of VL (ops/channels_last.py checks it).
 */
#include "common.h"

#define VL 16 /* channels per vector: one AVX-512 register of floats */
#define FWD_CHUNK 32 /* forward steps whose Δ are made in one pass */

/* VL floats as one value (GCC/Clang vector extension; one AVX-512 register, or two or four
 * narrower ones), loaded and stored unaligned through memcpy. */
typedef float vfloat __attribute__((vector_size(VL * sizeof(float))));
INLINE vfloat vload(const float *p) {
    vfloat v;
    memcpy(&v, p, sizeof v);
    return v;
}
INLINE void vstore(float *p, vfloat v) { memcpy(p, &v, sizeof v); }

/* pre[c] = bias + Σ_j w[j, c] x[t ∓ s_j, c] for one step t of one group, s_j = k - 1 - j
 * (causal: t - s_j; anti-causal: t + s_j); taps outside [0, l) read zeros. */
INLINE void conv_step(const float *restrict x, int64_t sxl, const float *restrict w,
                      const float *restrict bias, int rev, int64_t t, int64_t l, int64_t k,
                      int64_t dim, float *restrict pre) {
    for (int64_t c = 0; c < dim; c++) pre[c] = bias ? bias[c] : 0.0f;
    for (int64_t j = 0; j < k; j++) {
        const int64_t src = rev ? t + (k - 1 - j) : t - (k - 1 - j);
        if (src < 0 || src >= l) continue;
        const float *restrict xr = x + src * sxl, *restrict wj = w + j * dim;
        for (int64_t c = 0; c < dim; c++) pre[c] += wj[c] * xr[c];
    }
}

int cm_cl_conv_forward(const float *x, int64_t sxb, int64_t sxl, const float *w,
                       const float *bias, const int64_t *rev, float *y, int activation,
                       int64_t batch, int64_t dim, int64_t groups, int64_t l, int64_t k,
                       int threads) {
    if (k < 1 || k > MAX_CONV_K || l < 1 || groups < 1 || dim < 1) return -1;
    const float lo = exp_lo, hi = exp_hi;
#pragma omp parallel for collapse(2) num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        for (int64_t bi = 0; bi < batch; bi++) {
            float *yg = y + (g * batch + bi) * l * dim;
            for (int64_t t = 0; t < l; t++) {
                float *restrict out = yg + t * dim;
                conv_step(x + bi * sxb, sxl, w + g * k * dim, bias ? bias + g * dim : NULL,
                          (int)rev[g], t, l, k, dim, out);
                if (activation)
                    for (int64_t c = 0; c < dim; c++) out[c] *= sigmoid_f(out[c], lo, hi);
            }
        }
    }
    return 0;
}

/* Backward of cm_cl_conv_forward, one sequence per thread (so its gx rows and its partial
 * gw_rows, gb_rows have one writer): dL/dpre into `work` (G, l, d) from the recomputed
 * pre-activations, then the transposed conv gx[t ∓ s_j] += w_j dL/dpre[t] and the weight
 * sums. gx (b, l, d) has row strides (sgb, sgl), so it can be a channel slice of in_proj's
 * gradient. work: threads · G · l · d floats. */
int cm_cl_conv_backward(const float *x, int64_t sxb, int64_t sxl, const float *w,
                        const float *bias, const int64_t *rev, const float *gy, int activation,
                        float *gx, int64_t sgb, int64_t sgl, float *gw_rows, float *gb_rows,
                        int64_t batch, int64_t dim, int64_t groups, int64_t l, int64_t k,
                        float *work, int threads) {
    if (k < 1 || k > MAX_CONV_K || l < 1 || groups < 1 || dim < 1) return -1;
    const float lo = exp_lo, hi = exp_hi;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t bi = 0; bi < batch; bi++) {
#ifdef _OPENMP
        float *gp = work + (int64_t)omp_get_thread_num() * groups * l * dim;
#else
        float *gp = work;
#endif
        const float *xb = x + bi * sxb;
        float *gxb = gx + bi * sgb;
        for (int64_t t = 0; t < l; t++) memset(gxb + t * sgl, 0, dim * sizeof(float));
        for (int64_t g = 0; g < groups; g++) {
            const float *wg = w + g * k * dim;
            const int r = (int)rev[g];
            float *gpg = gp + g * l * dim;
            const float *gyg = gy + (g * batch + bi) * l * dim;
            for (int64_t t = 0; t < l; t++) {
                float *restrict p = gpg + t * dim;
                const float *restrict gyt = gyg + t * dim;
                if (activation) {
                    conv_step(xb, sxl, wg, bias ? bias + g * dim : NULL, r, t, l, k, dim, p);
                    for (int64_t c = 0; c < dim; c++) {
                        const float s = sigmoid_f(p[c], lo, hi);
                        p[c] = gyt[c] * s * (1.0f + p[c] * (1.0f - s));
                    }
                } else {
                    memcpy(p, gyt, dim * sizeof(float));
                }
            }
            float *gw = gw_rows + (bi * groups + g) * k * dim;
            memset(gw, 0, k * dim * sizeof(float));
            for (int64_t t = 0; t < l; t++) {
                const float *restrict p = gpg + t * dim;
                for (int64_t j = 0; j < k; j++) {
                    const int64_t src = r ? t + (k - 1 - j) : t - (k - 1 - j);
                    if (src < 0 || src >= l) continue;
                    const float *restrict wj = wg + j * dim, *restrict xr = xb + src * sxl;
                    float *restrict gxr = gxb + src * sgl, *restrict gwj = gw + j * dim;
                    for (int64_t c = 0; c < dim; c++) {
                        gxr[c] += wj[c] * p[c];
                        gwj[c] += p[c] * xr[c];
                    }
                }
            }
            if (gb_rows) {
                float *restrict gb = gb_rows + (bi * groups + g) * dim;
                memset(gb, 0, dim * sizeof(float));
                for (int64_t t = 0; t < l; t++)
                    for (int64_t c = 0; c < dim; c++) gb[c] += gpg[t * dim + c];
            }
        }
    }
    return 0;
}

/* Δ for one step of one tile: softplus(bias + Σ_j x[j] W_T[j]) over the VL channels, x the
 * step's Δ columns of x_proj's output (r of them), W_T (r, dim) at the tile's channel. */
INLINE void delta_step(const float *restrict x, const float *restrict W_T,
                       const float *restrict bias, int64_t r, int64_t dim, float *restrict dv,
                       const float lo, const float hi) {
    vfloat acc = vload(bias); /* explicit vectors: see the gradient loop in cl_backward_tile */
    for (int64_t j = 0; j < r; j++) acc += x[j] * vload(W_T + j * dim);
    float raw[VL];
    vstore(raw, acc);
    for (int i = 0; i < VL; i++) dv[i] = softplus_f(raw[i], lo, hi);
}

/* One tile of VL channels of one (group, sequence): u, y at its step 0 (row stride dim);
 * x at the sequence's row of step 0 of x_proj's output (row stride R: Δ columns [0, r), B
 * [r, r + n), C [r + n, r + 2n)); W_T (r rows, stride dim), bias, AT (n rows, stride dim)
 * and D (NULL: none) at the tile's first channel. `rev` scans from step l - 1 down to 0.
 * ckpt (NULL: none) gets the states before steps 0, block, 2·block, ... */
INLINE void cl_forward_tile(const float *restrict u, const float *restrict x,
                            const float *restrict W_T, const float *restrict bias,
                            const float *restrict AT, const float *restrict D,
                            float *restrict y, float *restrict ckpt, int64_t l, int64_t dim,
                            int64_t R, int64_t r, int64_t block, const int n, int rev,
                            const float lo, const float hi) {
    float h[MAX_STATE * VL], Dv[VL];
    for (int i = 0; i < n * VL; i++) h[i] = 0.0f;
    for (int i = 0; i < VL; i++) Dv[i] = D ? D[i] : 0.0f;
    int64_t next_ckpt = 0;
    float deltas[FWD_CHUNK * VL];
    for (int64_t s = 0; s < l; s++) {
        const int64_t t = rev ? l - 1 - s : s;
        if (s % FWD_CHUNK == 0) /* Δ of the next steps in one pass, apart from the states */
            for (int64_t j = s; j < l && j < s + FWD_CHUNK; j++)
                delta_step(x + (rev ? l - 1 - j : j) * R, W_T, bias, r, dim,
                           deltas + (j - s) * VL, lo, hi);
        if (ckpt && s == next_ckpt) {
            memcpy(ckpt, h, n * VL * sizeof(float));
            ckpt += n * VL;
            next_ckpt += block;
        }
        const float *restrict ut = u + t * dim, *restrict xt = x + t * R;
        const float *restrict Bt = xt + r, *restrict Ct = xt + r + n;
        const float *restrict dv = deltas + (s % FWD_CHUNK) * VL;
        float duv[VL], yv[VL];
        for (int i = 0; i < VL; i++) {
            duv[i] = dv[i] * ut[i];
            yv[i] = Dv[i] * ut[i];
        }
        for (int k = 0; k < n; k++) {
            const float bk = Bt[k], ck = Ct[k];
            const float *restrict Ak = AT + k * dim;
            float *restrict hk = h + k * VL;
            _Pragma("GCC ivdep") for (int i = 0; i < VL; i++) {
                hk[i] = exp_f(dv[i] * Ak[i], lo, hi) * hk[i] + duv[i] * bk;
                yv[i] += hk[i] * ck;
            }
        }
        float *restrict yt = y + t * dim;
        for (int i = 0; i < VL; i++) yt[i] = yv[i];
    }
}

/* Parameter-gradient sums of one thread, over all the sequences it takes (the caller sums
 * the threads): each (G, ·, dim), at the tile's group and first channel. */
typedef struct {
    float *gA;    /* (n, dim) */
    float *gD;    /* (dim), or NULL */
    float *gW;    /* (r, dim): dL/dW_T */
    float *gbias; /* (dim) */
} ParamGrads;

/* Adjoint of one tile (pointers as in cl_forward_tile; gy, gu likewise), block by block from
 * the last: the block's Δ, decays and states are recomputed from its checkpoint into `work`
 * ((1 + 2n) · block · VL floats), then walked backwards with
 *   G_s = adj + gy_s C_s,  dL/d(ΔA)_s = G_s ⊙ a_s ⊙ h_{s-1},  adj <- G_s ⊙ a_s.
 * Gradients of x_proj's output need sums over channels: they accumulate per lane into gXv
 * (l, R, VL), shared by the tiles of the sequence and summed over the lanes by the caller. */
INLINE void cl_backward_tile(const float *restrict u, const float *restrict x,
                             const float *restrict W_T, const float *restrict bias,
                             const float *restrict AT, const float *restrict D,
                             const float *restrict ckpt, const float *restrict gy,
                             float *restrict gu, ParamGrads pg, float *restrict gXv,
                             float *restrict work, int64_t l, int64_t dim, int64_t R,
                             int64_t r, int64_t block, const int n, int rev, const float lo,
                             const float hi) {
    float adj[MAX_STATE * VL], gAs[MAX_STATE * VL], Dv[VL];
    float *restrict deltas = work, *restrict decays = work + block * VL;
    float *restrict states = decays + block * n * VL;
    for (int i = 0; i < n * VL; i++) adj[i] = gAs[i] = 0.0f;
    for (int i = 0; i < VL; i++) Dv[i] = D ? D[i] : 0.0f;
    for (int64_t ib = (l - 1) / block; ib >= 0; ib--) {
        const int64_t s0 = ib * block, len = s0 + block < l ? block : l - s0;
        const float *restrict start = ckpt + ib * n * VL;
        const float *prev = start;
        for (int64_t j = 0; j < len; j++) /* the block's Δ in one pass, apart from the states */
            delta_step(x + (rev ? l - 1 - (s0 + j) : s0 + j) * R, W_T, bias, r, dim,
                       deltas + j * VL, lo, hi);
        for (int64_t j = 0; j < len; j++) {
            const int64_t t = rev ? l - 1 - (s0 + j) : s0 + j;
            const float *restrict ut = u + t * dim, *restrict xt = x + t * R;
            const float *restrict Bt = xt + r;
            const float *restrict dv = deltas + j * VL;
            float *restrict a = decays + j * n * VL, *restrict h = states + j * n * VL;
            for (int k = 0; k < n; k++) {
                const float bk = Bt[k];
                const float *restrict Ak = AT + k * dim;
                _Pragma("GCC ivdep") for (int i = 0; i < VL; i++) {
                    const float ak = exp_f(dv[i] * Ak[i], lo, hi);
                    a[k * VL + i] = ak;
                    h[k * VL + i] = ak * prev[k * VL + i] + dv[i] * ut[i] * bk;
                }
            }
            prev = h;
        }
        for (int64_t j = len - 1; j >= 0; j--) {
            const int64_t t = rev ? l - 1 - (s0 + j) : s0 + j;
            const float *restrict ut = u + t * dim, *restrict gyt = gy + t * dim;
            const float *restrict xt = x + t * R;
            const float *restrict Bt = xt + r, *restrict Ct = xt + r + n;
            const float *restrict dv = deltas + j * VL;
            const float *restrict a = decays + j * n * VL, *restrict h = states + j * n * VL;
            const float *restrict hp = j > 0 ? states + (j - 1) * n * VL : start;
            float *restrict gxt = gXv + t * R * VL;
            float *restrict gBt = gxt + r * VL, *restrict gCt = gxt + (r + n) * VL;
            float gdu[VL], gdd[VL], duv[VL];
            for (int i = 0; i < VL; i++) {
                gdu[i] = gdd[i] = 0.0f;
                duv[i] = dv[i] * ut[i];
            }
            for (int k = 0; k < n; k++) {
                const float bk = Bt[k], ck = Ct[k];
                const float *restrict Ak = AT + k * dim;
                float *restrict gAk = gAs + k * VL;
                _Pragma("GCC ivdep") for (int i = 0; i < VL; i++) {
                    const int e = k * VL + i;
                    const float G = adj[e] + gyt[i] * ck;
                    const float Ga = G * a[e];
                    const float g_dA = Ga * hp[e]; /* dL/d(Δ_t A[k]) */
                    adj[e] = Ga;
                    gAk[i] += g_dA * dv[i];
                    gBt[e] += G * duv[i];
                    gCt[e] += h[e] * gyt[i];
                    gdd[i] += g_dA * Ak[i]; /* the decay part of dL/dΔ_t */
                    gdu[i] += G * bk;       /* dL/d(Δ_t u_t) */
                }
            }
            /* Through Δ = softplus(raw) to raw = bias + Σ_j x_j W_T[j]. */
            float graw[VL];
            float *restrict gut = gu + t * dim;
            for (int i = 0; i < VL; i++) graw[i] = softplus_slope(dv[i], lo, hi);
            for (int i = 0; i < VL; i++) {
                graw[i] *= gdd[i] + gdu[i] * ut[i];
                gut[i] = gdu[i] * dv[i] + gyt[i] * Dv[i];
                pg.gbias[i] += graw[i];
            }
            if (pg.gD)
                for (int i = 0; i < VL; i++) pg.gD[i] += gyt[i] * ut[i];
            /* Explicit vectors: as a plain loop over i, the compiler vectorises the loop over
             * jr instead, in narrow strided pieces, which made this loop a large share of
             * the backward at short lengths. */
            const vfloat gr = vload(graw);
            for (int64_t jr = 0; jr < r; jr++) {
                float *gwj = pg.gW + jr * dim, *gxj = gxt + jr * VL;
                vstore(gwj, vload(gwj) + gr * xt[jr]);
                vstore(gxj, vload(gxj) + gr * vload(W_T + jr * dim));
            }
        }
    }
    for (int k = 0; k < n; k++)
        for (int i = 0; i < VL; i++) pg.gA[k * dim + i] += gAs[k * VL + i];
}

/* Σ p[0..VL) by halving: 8 + 4 + 2 + 1 independent adds in four levels. */
INLINE float lane_sum(const float *restrict p) {
    float s[VL / 2];
    for (int i = 0; i < VL / 2; i++) s[i] = p[i] + p[i + VL / 2];
    for (int i = 0; i < VL / 4; i++) s[i] += s[i + VL / 4];
    for (int i = 0; i < VL / 8; i++) s[i] += s[i + VL / 8];
    return s[0] + s[1];
}

/* Instantiations with a constant n for the common state sizes, and one generic. */
#define CL_DISPATCH_N(call, n)   \
    switch (n) {                 \
    case 16: call(16); break;    \
    case 8: call(8); break;      \
    case 4: call(4); break;      \
    default: call(n); break;     \
    }

#define CL_CHECK                                                                        \
    if (n < 1 || n > MAX_STATE || groups < 1 || dim < VL || dim % VL || l < 1 ||        \
        block < 1 || r < 1 || R < r + 2 * n)                                             \
        return -1;

/* Forward over all (group, sequence, tile); ckpt NULL for inference. Returns 0, or -1. */
int cm_cl_scan_forward(const float *u, const float *x, const float *W_T, const float *bias,
                       const float *AT, const float *D, float *y, float *ckpt, int64_t batch,
                       int64_t dim, int64_t groups, int64_t l, int64_t n, int64_t R, int64_t r,
                       int64_t block, int64_t rev_from, int threads) {
    CL_CHECK
    const int64_t tiles = dim / VL, blocks = (l + block - 1) / block;
    const float lo = exp_lo, hi = exp_hi;
#pragma omp parallel for collapse(3) num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        for (int64_t bi = 0; bi < batch; bi++) {
            for (int64_t ti = 0; ti < tiles; ti++) {
                const int64_t seq = g * batch + bi, off = seq * l * dim + ti * VL;
                const int64_t c = g * dim + ti * VL; /* the tile's first channel in (G, dim) */
                float *ck = ckpt ? ckpt + (seq * tiles + ti) * blocks * n * VL : NULL;
#define CL_FORWARD(N)                                                                    \
    cl_forward_tile(u + off, x + seq * l * R, W_T + g * r * dim + ti * VL, bias + c,      \
                    AT + g * n * dim + ti * VL, D ? D + c : NULL, y + off, ck, l, dim, R, \
                    r, block, N, g >= rev_from, lo, hi)
                CL_DISPATCH_N(CL_FORWARD, (int)n)
#undef CL_FORWARD
            }
        }
    }
    return 0;
}

/* Backward over all (group, sequence), one per thread at a time (it owns that sequence's
 * rows of gx). gx (G, b, l, R) is written whole (Δ, B and C columns; others zero).
 * param_grads: threads · G · (n + r + 2) · dim floats, each thread's sums of gA (n, dim),
 * gW_T (r, dim), g_bias (dim) and gD (dim) per group, zeroed here. work: threads ·
 * (l · R + (1 + 2n) · block) · VL floats. */
int cm_cl_scan_backward(const float *u, const float *x, const float *W_T, const float *bias,
                        const float *AT, const float *D, const float *ckpt, const float *gy,
                        int64_t gy_group_stride, float *gu, float *gx, float *param_grads,
                        float *work, int64_t batch, int64_t dim, int64_t groups, int64_t l,
                        int64_t n, int64_t R, int64_t r, int64_t block, int64_t rev_from,
                        int threads) {
    CL_CHECK
    const int64_t tiles = dim / VL, blocks = (l + block - 1) / block;
    const int64_t per_thread = (l * R + (1 + 2 * n) * block) * VL;
    const int64_t per_group = (n + r + 2) * dim;
    const float lo = exp_lo, hi = exp_hi;
    memset(param_grads, 0, threads * groups * per_group * sizeof(float));
#pragma omp parallel for collapse(2) num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        for (int64_t bi = 0; bi < batch; bi++) {
#ifdef _OPENMP
            const int64_t tid = omp_get_thread_num();
#else
            const int64_t tid = 0;
#endif
            float *w = work + tid * per_thread;
            float *gXv = w, *scratch = w + l * R * VL;
            float *pgg = param_grads + (tid * groups + g) * per_group;
            memset(gXv, 0, l * R * VL * sizeof(float));
            const int64_t seq = g * batch + bi;
            for (int64_t ti = 0; ti < tiles; ti++) {
                const int64_t off = seq * l * dim + ti * VL, c = g * dim + ti * VL;
                ParamGrads pg = {pgg + ti * VL, D ? pgg + (n + r + 1) * dim + ti * VL : NULL,
                                 pgg + n * dim + ti * VL, pgg + (n + r) * dim + ti * VL};
#define CL_BACKWARD(N)                                                                      \
    cl_backward_tile(u + off, x + seq * l * R, W_T + g * r * dim + ti * VL, bias + c,         \
                     AT + g * n * dim + ti * VL, D ? D + c : NULL,                            \
                     ckpt + (seq * tiles + ti) * blocks * n * VL,                             \
                     gy + g * gy_group_stride + bi * l * dim + ti * VL, gu + off, pg, gXv,    \
                     scratch, l, dim, R, r, block, N, g >= rev_from, lo, hi)
                CL_DISPATCH_N(CL_BACKWARD, (int)n)
#undef CL_BACKWARD
            }
            /* Σ over the lanes as a fixed tree (a running sum would be 16 dependent adds per
             * element, and may not be reordered without -ffast-math); columns past r + 2n get
             * zeros. */
            for (int64_t t = 0; t < l; t++) {
                float *restrict gxr = gx + (seq * l + t) * R;
                for (int64_t j = 0; j < R; j++) gxr[j] = lane_sum(gXv + (t * R + j) * VL);
            }
        }
    }
    return 0;
}

/* The layer's output gate on two directions: out = (y_0 + y_1) ⊙ SiLU(z), with y (2, b, l, d)
 * and z (b, l, d) at row strides (szb, szl) (the other half of in_proj's output); ysum =
 * y_0 + y_1 is written for the backward. */
int cm_cl_gate_forward(const float *y, const float *z, int64_t szb, int64_t szl, float *out,
                       float *ysum, int64_t batch, int64_t l, int64_t dim, int threads) {
    const float lo = exp_lo, hi = exp_hi;
    const int64_t plane = batch * l * dim;
#pragma omp parallel for collapse(2) num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t bi = 0; bi < batch; bi++) {
        for (int64_t t = 0; t < l; t++) {
            const int64_t row = (bi * l + t) * dim;
            const float *restrict y0 = y + row, *restrict y1 = y + plane + row;
            const float *restrict zr = z + bi * szb + t * szl;
            float *restrict o = out + row, *restrict ys = ysum + row;
            _Pragma("GCC ivdep") for (int64_t c = 0; c < dim; c++) {
                ys[c] = y0[c] + y1[c];
                o[c] = ys[c] * zr[c] * sigmoid_f(zr[c], lo, hi);
            }
        }
    }
    return 0;
}

/* Its backward from g = dL/dout (b, l, d): gy = g ⊙ SiLU(z) (b, l, d), the gradient of both
 * directions' y, and gz = g ⊙ ysum ⊙ SiLU'(z) at row strides (sgb, sgl). */
int cm_cl_gate_backward(const float *g, const float *z, int64_t szb, int64_t szl,
                        const float *ysum, float *gy, float *gz, int64_t sgb, int64_t sgl,
                        int64_t batch, int64_t l, int64_t dim, int threads) {
    const float lo = exp_lo, hi = exp_hi;
#pragma omp parallel for collapse(2) num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t bi = 0; bi < batch; bi++) {
        for (int64_t t = 0; t < l; t++) {
            const int64_t row = (bi * l + t) * dim;
            const float *restrict gr = g + row, *restrict ys = ysum + row;
            const float *restrict zr = z + bi * szb + t * szl;
            float *restrict gyr = gy + row, *restrict gzr = gz + bi * sgb + t * sgl;
            _Pragma("GCC ivdep") for (int64_t c = 0; c < dim; c++) {
                const float sg = sigmoid_f(zr[c], lo, hi);
                gyr[c] = gr[c] * zr[c] * sg;
                gzr[c] = gr[c] * ys[c] * sg * (1.0f + zr[c] * (1.0f - sg));
            }
        }
    }
    return 0;
}
