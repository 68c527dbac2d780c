/* Shared by the C kernels of cinemamba_backbone.ops (selective_scan.c, channels_last.c):
 * the state-size limit, the vectorisable exp and the activation slopes. */
#ifndef CINEMAMBA_COMMON_H
#define CINEMAMBA_COMMON_H

#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MAX_STATE 256 /* largest n; cpu_native.py checks it before calling */
#define MAX_CONV_K 16 /* widest depthwise conv; cpu_native.py checks it too */
#define INLINE static inline __attribute__((always_inline))

/* The input range of exp_f, read through volatile once per call: as literal constants the
 * compiler special-cases inputs at the bounds (it folds exp of each bound and blends with
 * masks, measured 20% slower); as opaque values the clamp is one max and one min. */
static volatile float exp_lo = -87.5f, exp_hi = 88.8f;

/* exp(x) = 2^k e^r with k = round(x / ln 2) and |r| <= ln2 / 2; e^r from a degree-6
 * polynomial fitted for relative error (1.9e-9 in exact arithmetic, < 3e-7 measured in
 * float). Branch free, so a loop over it vectorises. Clamping x to [lo, hi] = [-87.5, 88.8]
 * keeps k in [-126, 128], where the bits of 2^(k-1) are valid: k = -126 (x below about -87,
 * true value below 1.7e-38) gives 0, k = 128 gives inf above 88.72 as exp does, and NaN
 * stays NaN (the comparisons are false for NaN). */
INLINE float exp_f(float x, const float lo, const float hi) {
    x = x < lo ? lo : x;
    x = x > hi ? hi : x;
    /* Adding 1.5·2^23 rounds x/ln2 to an integer k held in the low mantissa bits. */
    const float shift = 12582912.0f; /* bit pattern 0x4B400000 */
    float kf = x * 1.44269504f + shift;
    uint32_t kbits;
    memcpy(&kbits, &kf, sizeof kbits);
    kf -= shift;
    /* r = x - k ln2, with ln2 split into a short exact high part and a low part. */
    float r = x - kf * 0.693359375f;
    r = r - kf * -2.12194440e-4f;
    /* 2 e^r (coefficients doubled, exactly), times 2^(k-1) built from exponent bits. */
    float p = 2.767369152e-03f;
    p = p * r + 1.674963161e-02f;
    p = p * r + 8.333645016e-02f;
    p = p * r + 3.333283960e-01f;
    p = p * r + 9.999998212e-01f;
    p = p * r + 2.0f;
    p = p * r + 2.0f;
    const uint32_t sbits = (kbits - 0x4B400000u + 126u) << 23;
    float s;
    memcpy(&s, &sbits, sizeof s);
    return p * s;
}

/* dΔ/dx for Δ = softplus(x), from Δ alone: sigmoid(x) = 1 - e^{-Δ} = -expm1(-Δ). Below
 * Δ = 1/4 the subtraction would cancel (relative error eps/Δ), so there a degree-6 Taylor
 * series of -expm1(-Δ) (truncation below 1.2e-8 relative); above it, 1 - e^{-Δ} loses at
 * most a factor 4.5 of eps. Above x = 20 torch's softplus passes x through (Δ = x, slope
 * 1); 1 - e^{-Δ} is 1 in float there too. */
INLINE float softplus_slope(const float D, const float lo, const float hi) {
    /* Both branches computed and one selected: branch free, so a loop over it vectorises. */
    const float series = D * (1.0f - D * (0.5f - D * (1.0f / 6 - D * (1.0f / 24 - D * (1.0f / 120 - D * (1.0f / 720))))));
    const float direct = 1.0f - exp_f(-D, lo, hi);
    return D < 0.25f ? series : direct;
}

INLINE float sigmoid_f(float p, const float lo, const float hi) {
    return 1.0f / (1.0f + exp_f(-p, lo, hi));
}

/* softplus(x) = log(1 + e^x) = max(x, 0) + log1p(z), z = e^-|x| in (0, 1], with
 * log1p(z) = z·P(z), P of degree 9 fitted to log1p(z)/z on [0, 1] for relative error (4e-9
 * in exact arithmetic, about 3 ulp in float). No division and no branch, so a loop over it
 * vectorises (a log and a division per element would cost several exps). Above x = 20, where torch
 * passes x through, log1p(e^-x) < 2.1e-9 is below half an ulp of x. */
INLINE float softplus_f(const float x, const float lo, const float hi) {
    const float z = exp_f(x < 0.0f ? x : -x, lo, hi);
    float p = -3.338711103e-03f;
    p = p * z + 2.027768269e-02f;
    p = p * z - 5.775897950e-02f;
    p = p * z + 1.068452075e-01f;
    p = p * z - 1.535326838e-01f;
    p = p * z + 1.969245225e-01f;
    p = p * z - 2.495734692e-01f;
    p = p * z + 3.333027661e-01f;
    p = p * z - 4.999991357e-01f;
    p = p * z + 1.0f;
    return (x > 0.0f ? x : 0.0f) + z * p;
}

#endif
