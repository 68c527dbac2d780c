/* Fused CPU selective scan, forward and backward (cinemamba_backbone.ops.cpu_native).
 *
 * Plain C without torch headers, so it compiles in about a second: built on first use with
 * -O3 -march=native -fno-math-errno -fopenmp and loaded through ctypes. The math is that of
 * the PyTorch path in cpu_scan.py:
 *
 *   a_t = exp(Δ_t A),  h_t = a_t ⊙ h_{t-1} + Δ_t u_t B_t,  y_t = Σ_n h_t C_t.
 *
 * Each (b, d) row is scanned from its first step to its last with its state h[n] in a local
 * array, so memory traffic is the inputs and y only. Every tensor is float32, contiguous:
 *
 *   u, delta, y, gy, gu, gdelta      (b, d, l)
 *   A                                (d, n)
 *   B, C, gB, gC                     (b, g, l, n)   channel d uses group d / (d_total / g)
 *   h0, last, glast, gh0, gA_rows    (b, d, n)
 *   ckpt                             (b, d, ceil(l / block), n): the state before step i·block
 *
 *   D                                (d)   the D skip, fused (see below)
 *   gD_rows                          (b, d)
 *
 * Optional pointers (h0, ckpt, glast, gh0, D, gD_rows) may be NULL.
 *
 * Fused O(b·d·l) parts, so they cost no separate passes over memory: y gets the D skip D·u
 * (and gu its gradient, gD_rows its per-row sum); with `softplus` in the backward, Δ is
 * softplus(x) of the caller's x = raw Δ + bias, and gdelta is dL/dx, its slope made from Δ.
 */
#include "common.h"

int cm_max_state(void) { return MAX_STATE; }

/* Σ p[0..n). A float sum loop does not vectorise without -ffast-math (it may not reorder),
 * so for n a multiple of 8: 8 lanes added vertically, then a fixed tree. A per-step call
 * still costs a horizontal sum, so the callers keep the products of many steps and sum them
 * in one loop over the steps, which the compiler vectorises across steps (measured 20%
 * faster forward than summing each step). */
INLINE float sum_n(const float *restrict p, int n) {
    if (n % 8 == 0) {
        float s[8];
        for (int i = 0; i < 8; i++) s[i] = p[i];
        for (int k = 8; k < n; k += 8)
            for (int i = 0; i < 8; i++) s[i] += p[k + i];
        for (int i = 0; i < 4; i++) s[i] += s[i + 4];
        return (s[0] + s[2]) + (s[1] + s[3]);
    }
    float s = 0.0f;
    for (int k = 0; k < n; k++) s += p[k];
    return s;
}

#define CHUNK 32 /* forward steps whose products h ⊙ C are kept, then summed over n */

/* One row: u, dt, y (l); A (n); B, C (l, n) of the row's group; h0, last (n). With ckpt,
 * the state before steps 0, block, 2·block, ... goes to ckpt (ceil(l / block), n). */
INLINE void forward_row(const float *restrict u, const float *restrict dt,
                        const float *restrict A, const float *restrict B,
                        const float *restrict C, const float *restrict h0, float *restrict y,
                        float *restrict last, float *restrict ckpt, int64_t l,
                        int64_t block, const int n, const float lo, const float hi,
                        const float Dd, const int64_t st) {
    float h[MAX_STATE], p[CHUNK * MAX_STATE];
    for (int k = 0; k < n; k++) h[k] = h0 ? h0[k] : 0.0f;
    int64_t next_ckpt = 0;
    for (int64_t t0 = 0; t0 < l; t0 += CHUNK) {
        const int len = l - t0 < CHUNK ? (int)(l - t0) : CHUNK;
        for (int j = 0; j < len; j++) {
            const int64_t t = t0 + j;
            if (ckpt && t == next_ckpt) {
                memcpy(ckpt, h, n * sizeof(float));
                ckpt += n;
                next_ckpt += block;
            }
            const float d_t = dt[t * st], du = d_t * u[t * st];
            const float *restrict Bt = B + t * st * n, *restrict Ct = C + t * st * n;
            float *restrict pj = p + j * n;
            for (int k = 0; k < n; k++) {
                h[k] = exp_f(d_t * A[k], lo, hi) * h[k] + du * Bt[k];
                pj[k] = h[k] * Ct[k];
            }
        }
        for (int j = 0; j < len; j++)
            y[(t0 + j) * st] = sum_n(p + j * n, n) + Dd * u[(t0 + j) * st];
    }
    memcpy(last, h, n * sizeof(float));
}

/* The adjoint of one row, block by block from the last: recompute the block's decays and
 * states from its checkpoint into `work` (2·block·n floats), then walk it backwards with
 *   G_j = adj + gy_j C_j,  dL/d(ΔA)_j = G_j ⊙ a_j ⊙ h_{j-1},  adj <- G_j ⊙ a_j.
 * Step j's decay and state are dead once step j is done, so their slots take the products
 * whose sums over n give dL/dΔ_t and dL/du_t; as in the forward, those sums run afterwards
 * in one loop over the block's steps. gB and gC (l, n) of the row's group are accumulated
 * into; everything else is written. */
INLINE void backward_row(const float *restrict u, const float *restrict dt,
                         const float *restrict A, const float *restrict B,
                         const float *restrict C, const float *restrict ckpt,
                         const float *restrict gy, const float *restrict glast,
                         float *restrict gu, float *restrict gdt, float *restrict gA,
                         float *restrict gB, float *restrict gC, float *restrict gh0,
                         float *restrict work, int64_t l, int64_t block, const int n,
                         const float lo, const float hi, const int softplus,
                         const float Dd, float *restrict gD, const int64_t st) {
    float adj[MAX_STATE], gA_sum[MAX_STATE], gD_sum = 0.0f;
    float *restrict decays = work, *restrict states = work + block * n;
    for (int k = 0; k < n; k++) {
        adj[k] = glast ? glast[k] : 0.0f;
        gA_sum[k] = 0.0f;
    }
    for (int64_t i = (l - 1) / block; i >= 0; i--) {
        const int64_t s = i * block, len = s + block < l ? block : l - s;
        const float *restrict start = ckpt + i * n;
        const float *prev = start;
        for (int64_t j = 0; j < len; j++) {
            const float d_t = dt[(s + j) * st], du = d_t * u[(s + j) * st];
            const float *restrict Bt = B + (s + j) * st * n;
            float *restrict a = decays + j * n, *restrict h = states + j * n;
            for (int k = 0; k < n; k++) {
                a[k] = exp_f(d_t * A[k], lo, hi);
                h[k] = a[k] * prev[k] + du * Bt[k];
            }
            prev = h;
        }
        for (int64_t j = len - 1; j >= 0; j--) {
            const int64_t t = s + j;
            const float d_t = dt[t * st], du = d_t * u[t * st], g_t = gy[t * st];
            float *restrict a = decays + j * n, *restrict h = states + j * n;
            const float *restrict h_prev = j > 0 ? states + (j - 1) * n : start;
            const float *restrict Bt = B + t * st * n, *restrict Ct = C + t * st * n;
            float *restrict gBt = gB + t * st * n, *restrict gCt = gC + t * st * n;
            for (int k = 0; k < n; k++) {
                const float G = adj[k] + g_t * Ct[k];
                const float Ga = G * a[k];
                const float g_dA = Ga * h_prev[k]; /* dL/d(Δ_t A[k]) */
                adj[k] = Ga;
                gA_sum[k] += g_dA * d_t;
                gBt[k] += G * du;
                gCt[k] += h[k] * g_t;
                a[k] = g_dA * A[k]; /* Σ_n: the decay part of dL/dΔ_t */
                h[k] = G * Bt[k];   /* Σ_n: dL/d(Δ_t u_t) */
            }
        }
        for (int64_t j = 0; j < len; j++) {
            const int64_t t = s + j;
            const float g_du = sum_n(states + j * n, n);
            gdt[t * st] = (sum_n(decays + j * n, n) + g_du * u[t * st]) * (softplus ? softplus_slope(dt[t * st], lo, hi) : 1.0f);
            gu[t * st] = g_du * dt[t * st] + gy[t * st] * Dd;
            gD_sum += gy[t * st] * u[t * st];
        }
    }
    if (gD) *gD = gD_sum;
    memcpy(gA, gA_sum, n * sizeof(float));
    if (gh0) memcpy(gh0, adj, n * sizeof(float));
}

/* Instantiations with a constant n (unrolled and vectorised by the compiler) for the common
 * state sizes, and one generic loop; each in both scan directions (ST = 1 or -1, so the
 * strided indexing is constant-folded). */
#define DISPATCH_N_ST(call, n, rev) \
    if (rev) {                      \
        DISPATCH_N(call, n, -1)     \
    } else {                        \
        DISPATCH_N(call, n, 1)      \
    }
#define DISPATCH_N(call, n, ST)      \
    switch (n) {                     \
    case 16: call(16, ST); break;    \
    case 8: call(8, ST); break;      \
    case 4: call(4, ST); break;      \
    default: call(n, ST); break;     \
    }

/* Rows of the groups g >= rev_from run backwards in time: step i of their scan is time
 * l - 1 - i (their pointers start at the last step and walk with stride -1), so a
 * bidirectional layer scans both directions in one call without flipped copies. The
 * checkpoints are kept in scan order. */

/* Forward over all rows; ckpt NULL for inference (block is then unused). Returns 0, or -1
 * for an unsupported shape. */
int cm_scan_forward(const float *u, const float *delta, const float *A, const float *B,
                    const float *C, const float *h0, const float *D, float *y, float *last,
                    float *ckpt, int64_t batch,
                    int64_t dim, int64_t groups, int64_t l, int64_t n,
                    int64_t block, int64_t rev_from, int threads) {
    if (n < 1 || n > MAX_STATE || groups < 1 || dim % groups || l < 1 || block < 1) return -1;
    const int64_t per_group = dim / groups, blocks = (l + block - 1) / block;
    const float lo = exp_lo, hi = exp_hi;
#pragma omp parallel for collapse(2) num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t bi = 0; bi < batch; bi++) {
        for (int64_t di = 0; di < dim; di++) {
            const int64_t row = bi * dim + di, grp = bi * groups + di / per_group;
            const int rev = di / per_group >= rev_from;
            const int64_t o = rev ? l - 1 : 0; /* offset of the first scanned step */
#define FORWARD(N, ST)                                                                     \
    forward_row(u + row * l + o, delta + row * l + o, A + di * n,                          \
                B + (grp * l + o) * n, C + (grp * l + o) * n, h0 ? h0 + row * n : NULL,    \
                y + row * l + o, last + row * n, ckpt ? ckpt + row * blocks * n : NULL, l, \
                block, N, lo, hi, D ? D[di] : 0.0f, ST)
            DISPATCH_N_ST(FORWARD, (int)n, rev)
#undef FORWARD
        }
    }
    return 0;
}

/* Backward over all rows. Threads split the batch (each thread owns whole b slices), so the
 * group-summed gB, gC are written by one thread only. work: threads · 2 · block · n floats.
 * gA_rows gets each row's dL/dA; the caller sums it over b. Returns 0, or -1. */
int cm_scan_backward(const float *u, const float *delta, const float *A, const float *B,
                     const float *C, const float *ckpt, const float *gy, const float *glast,
                     float *gu, float *gdelta, float *gA_rows, float *gB, float *gC,
                     float *gh0, const float *D, int softplus,
                     float *gD_rows, float *work, int64_t batch, int64_t dim, int64_t groups,
                     int64_t l, int64_t n, int64_t block, int64_t rev_from, int threads) {
    if (n < 1 || n > MAX_STATE || groups < 1 || dim % groups || l < 1 || block < 1) return -1;
    const int64_t per_group = dim / groups, blocks = (l + block - 1) / block;
    const float lo = exp_lo, hi = exp_hi;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t bi = 0; bi < batch; bi++) {
#ifdef _OPENMP
        float *w = work + (int64_t)omp_get_thread_num() * 2 * block * n;
#else
        float *w = work;
#endif
        memset(gB + bi * groups * l * n, 0, groups * l * n * sizeof(float));
        memset(gC + bi * groups * l * n, 0, groups * l * n * sizeof(float));
        for (int64_t di = 0; di < dim; di++) {
            const int64_t row = bi * dim + di, grp = bi * groups + di / per_group;
            const int rev = di / per_group >= rev_from;
            const int64_t o = rev ? l - 1 : 0;
#define BACKWARD(N, ST)                                                                     \
    backward_row(u + row * l + o, delta + row * l + o, A + di * n, B + (grp * l + o) * n,   \
                 C + (grp * l + o) * n, ckpt + row * blocks * n, gy + row * l + o,          \
                 glast ? glast + row * n : NULL, gu + row * l + o, gdelta + row * l + o,    \
                 gA_rows + row * n, gB + (grp * l + o) * n, gC + (grp * l + o) * n,         \
                 gh0 ? gh0 + row * n : NULL, w, l, block, N, lo, hi, softplus,             \
                 D ? D[di] : 0.0f, gD_rows ? gD_rows + row : NULL, ST)
            DISPATCH_N_ST(BACKWARD, (int)n, rev)
#undef BACKWARD
        }
    }
    return 0;
}

/* ---- grouped depthwise conv (BiMamba's two direction convs of one input) ----------------
 *
 * G depthwise convs of one input x (b, d, l), read through strides (it is a channel slice
 * of in_proj's token-major output), written stacked into y (b, G, d, l):
 *
 *   pre[g, c, t] = bias[g, c] + Σ_j w[g, c, j] · x[c, t - s_j]   (causal group)
 *                  bias[g, c] + Σ_j w[g, c, j] · x[c, t + s_j]   (rev[g]: anti-causal)
 *   y = SiLU(pre) (or pre),  s_j = k - 1 - j,  x outside [0, l) is 0.
 *
 * Each (b, c) row of x is gathered once into a buffer with k - 1 zeros on both sides, so
 * every output is one branch-free pass over t (k loads, one store) and the row serves all G
 * groups. The backward recomputes pre from x (nothing but x is saved) and writes gx (b, d, l)
 * contiguous and per-batch partial sums gw_rows (b, G, d, k), gb_rows (b, G, d); the caller
 * sums those over b. */
/* Σ a[t] b[t] (b NULL: Σ a[t]) over n, in 8 independent lanes so that it vectorises
 * (a single float accumulator may not be reordered without -ffast-math). */
INLINE float dot_f(const float *restrict a, const float *restrict b, int64_t n) {
    float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int64_t t = 0;
    for (; t + 8 <= n; t += 8)
        for (int i = 0; i < 8; i++) s[i] += a[t + i] * (b ? b[t + i] : 1.0f);
    float tail = 0.0f;
    for (; t < n; t++) tail += a[t] * (b ? b[t] : 1.0f);
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail;
}

/* Gather row x[0..l) (stride sx) into xp with P = k - 1 zeros before and after. */
INLINE void gather_padded(const float *restrict x, int64_t sx, int64_t l, int P,
                          float *restrict xp) {
    for (int i = 0; i < P; i++) xp[i] = xp[P + l + i] = 0.0f;
    for (int64_t t = 0; t < l; t++) xp[P + t] = x[t * sx];
}

/* pre[t] = bias + Σ_j w[j] xp[t + j] (causal) or xp[t + 2P - j] (anti-causal): xp padded.
 * K is the kernel width, a constant at the common call sites. */
INLINE void conv_row(const float *restrict xp, const float *restrict w, float bias, int rev,
                     int64_t l, const int K, float *restrict pre) {
    const int P = K - 1;
    float wr[MAX_CONV_K];
    for (int j = 0; j < K; j++) wr[j] = w[rev ? P - j : j]; /* anti-causal: mirrored taps */
    /* causal: Σ_j w[j] xp[t + j]; anti-causal: Σ_j w[j] xp[t + 2P - j] = Σ_m w[P - m] xp[P + t + m] */
    const float *restrict base = xp + (rev ? P : 0);
    for (int64_t t = 0; t < l; t++) {
        float acc = bias;
        for (int j = 0; j < K; j++) acc += wr[j] * base[t + j];
        pre[t] = acc;
    }
}

int cm_conv_forward(const float *x, int64_t sxb, int64_t sxd, int64_t sxl, const float *w,
                    const float *bias, const int64_t *rev, float *y, int activation,
                    int64_t batch, int64_t dim, int64_t groups, int64_t l, int64_t k,
                    float *work, int threads) {
    if (k < 1 || k > MAX_CONV_K || l < 1 || groups < 1) return -1;
    const float lo = exp_lo, hi = exp_hi;
    const int P = (int)k - 1;
#pragma omp parallel for collapse(2) num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t bi = 0; bi < batch; bi++) {
        for (int64_t c = 0; c < dim; c++) {
#ifdef _OPENMP
            float *xp = work + (int64_t)omp_get_thread_num() * (l + 2 * P);
#else
            float *xp = work;
#endif
            gather_padded(x + bi * sxb + c * sxd, sxl, l, P, xp);
            for (int64_t g = 0; g < groups; g++) {
                float *restrict out = y + ((bi * groups + g) * dim + c) * l;
                const float *wg = w + (g * dim + c) * k;
                const float bg = bias ? bias[g * dim + c] : 0.0f;
                if (k == 4)
                    conv_row(xp, wg, bg, (int)rev[g], l, 4, out);
                else
                    conv_row(xp, wg, bg, (int)rev[g], l, (int)k, out);
                if (activation)
                    for (int64_t t = 0; t < l; t++) out[t] *= sigmoid_f(out[t], lo, hi);
            }
        }
    }
    return 0;
}

/* One (b, c) row's backward over all G groups: xp is the padded input row, gpp a padded
 * scratch row for dL/dpre; gx (l) is written, gw_rows (G, k) and gb_rows (G) rows are at
 * stride dim·k and dim. K is the kernel width, a constant at the common call site, so the
 * tap loops unroll and the loops over t vectorise. */
INLINE void conv_backward_row(const float *restrict xp, float *restrict gpp,
                              const float *restrict w, const float *restrict bias,
                              const int64_t *restrict rev, const float *restrict gy,
                              int activation, float *restrict gxr, float *restrict gw,
                              float *restrict gb, int64_t dim, int64_t groups, int64_t l,
                              const int K, const float lo, const float hi) {
    const int P = K - 1;
    float *restrict gp = gpp + P;
    for (int i = 0; i < P; i++) gpp[i] = gpp[P + l + i] = 0.0f;
    for (int64_t t = 0; t < l; t++) gxr[t] = 0.0f;
    for (int64_t g = 0; g < groups; g++) {
        const float *wg = w + g * dim * K;
        const float *gyr = gy + g * dim * l;
        const int r = (int)rev[g];
        if (activation) {
            conv_row(xp, wg, bias ? bias[g * dim] : 0.0f, r, l, K, gp);
            for (int64_t t = 0; t < l; t++) {
                const float p = gp[t], s = sigmoid_f(p, lo, hi);
                gp[t] = gyr[t] * s * (1.0f + p * (1.0f - s));
            }
        } else {
            memcpy(gp, gyr, l * sizeof(float));
        }
        /* The adjoint of pre[t] += w_j x[t - s_j] is gx[t] += w_j gp[t + s_j]
         * (anti-causal: gp[t - s_j]): the transposed conv, the other direction. */
        /* causal: Σ_m w[P - m] gpp[P + t + m]; anti-causal: Σ_j w[j] gpp[t + j] */
        float wr[MAX_CONV_K];
        for (int j = 0; j < K; j++) wr[j] = wg[r ? j : P - j];
        const float *restrict gbase = gpp + (r ? 0 : P);
        for (int64_t t = 0; t < l; t++) {
            float acc = 0.0f;
            for (int j = 0; j < K; j++) acc += wr[j] * gbase[t + j];
            gxr[t] += acc;
        }
        float *gwr = gw + g * dim * K;
        for (int j = 0; j < K; j++) /* Σ_t gp[t] x[t ∓ s_j], x padded */
            gwr[j] = dot_f(gp, xp + (r ? 2 * P - j : j), l);
        if (gb) gb[g * dim] = dot_f(gp, NULL, l);
    }
}

int cm_conv_backward(const float *x, int64_t sxb, int64_t sxd, int64_t sxl, const float *w,
                     const float *bias, const int64_t *rev, const float *gy, int activation,
                     float *gx, float *gw_rows, float *gb_rows, int64_t batch, int64_t dim,
                     int64_t groups, int64_t l, int64_t k, float *work, int threads) {
    if (k < 1 || k > MAX_CONV_K || l < 1 || groups < 1) return -1;
    const float lo = exp_lo, hi = exp_hi;
    const int P = (int)k - 1;
    const int64_t lp = l + 2 * P;
#pragma omp parallel for collapse(2) num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t bi = 0; bi < batch; bi++) {
        for (int64_t c = 0; c < dim; c++) {
#ifdef _OPENMP
            float *xp = work + (int64_t)omp_get_thread_num() * 2 * lp;
#else
            float *xp = work;
#endif
            gather_padded(x + bi * sxb + c * sxd, sxl, l, P, xp);
#define CONV_BACKWARD(K)                                                                    \
    conv_backward_row(xp, xp + lp, w + c * k, bias ? bias + c : NULL, rev,                  \
                      gy + (bi * groups * dim + c) * l, activation, gx + (bi * dim + c) * l, \
                      gw_rows + (bi * groups * dim + c) * k,                                \
                      gb_rows ? gb_rows + bi * groups * dim + c : NULL, dim, groups, l, K,  \
                      lo, hi)
            if (k == 4)
                CONV_BACKWARD(4);
            else
                CONV_BACKWARD((int)k);
#undef CONV_BACKWARD
        }
    }
    return 0;
}
