/*
 * dropkit's native CPU dropout kernel: y = keep ? x * scale : +0.0 in one pass,
 * with the keep mask generated on the fly from Philox4x32-10, never stored.
 *
 * It is the C twin of dropkit/kernels/reference.py and must match it bit for
 * bit (tests/kernels/ prove it). The contract (dropkit/random.py):
 *   element i reads 16-bit lane i % 8 of Philox block i / 8, where lane j is
 *   bits 16*(j%2)..16*(j%2)+15 of word j/2 of
 *   philox4x32_10(counter = (block lo, block hi, offset lo, offset hi),
 *                 key = (seed lo, seed hi));
 *   keep iff lane < threshold (threshold in [0, 65536]);
 *   survivors: x * scale computed in float32 (float16/bfloat16/float32 inputs,
 *   scale rounded once to float32) or float64 (float64 inputs), rounded
 *   to nearest-even back to the storage type; dropped elements are +0.0.
 *
 * Deliberately independent of torch's headers: it receives raw data pointers,
 * an element count and the Philox key/offset, so one build serves every torch
 * version. It is a CPython extension only for packaging; the GIL is released
 * while it runs.
 *
 * Speed comes from three things: the AVX-512 path runs sixteen Philox blocks
 * per vector (the AVX2 path eight) and fuses the mask with the
 * load/scale/store (the best path is chosen at run time with
 * __builtin_cpu_supports, in the order avx512 > avx2 > portable, so the build
 * never uses -march=native); large
 * tensors are split into chunks claimed dynamically by a small pthread pool of
 * torch.get_num_threads() threads (no OpenMP: a second OpenMP runtime next to
 * torch's is what we must avoid, and libgomp hangs a forked child that enters
 * it after the parent did); and all-keep / all-drop thresholds skip Philox.
 *
 * Pitfall met by an earlier prototype: reading the Philox words through a
 * uint16_t* was miscompiled at -O3 under strict aliasing. Lanes here are
 * always extracted with shifts and masks, and float bits go through memcpy.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#define DK_HAVE_PTHREADS 0
#else
#define DK_HAVE_PTHREADS 1
#include <pthread.h>
#include <signal.h>
#include <time.h>
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define DK_HAVE_AVX2 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define DK_HAVE_AVX2 0
#endif

enum { DK_F32 = 0, DK_F64 = 1, DK_F16 = 2, DK_BF16 = 3 };
static const size_t dk_elem_size[4] = {4, 8, 2, 2};

#define DK_KEEP_ONE 65536u
/* Elements per AVX2 group: 8 Philox blocks of 8 lanes. */
#define DK_GROUP 64
/* Below this many elements one thread does the whole call. Alone on warm
 * caches two threads halve a 1 MB call (45 against 61 microseconds), but inside
 * a training step, where the tensor was just written by another op and torch's
 * own threads have just finished a matrix product, waking the pool costs more
 * than it saves: the MLP of benchmarks/bench_mlp.py on 2 cores lost 1-5 points
 * of step time with the pool at 64K, 256K and 1M elements (2026-12-01, see
 * benchmarks/RESULTS.md). MC dropout's sample batches are far larger. */
#define DK_PARALLEL_MIN ((size_t)1 << 21)
/* Unit of work a thread claims; a multiple of DK_GROUP. Dynamic claiming keeps
 * both cores busy when another process steals one of them for a while. */
#define DK_CHUNK ((size_t)1 << 15)
#define DK_MAX_THREADS 256
/* How long the caller spins for workers still on their last chunk before it
 * sleeps on the condition variable: about two chunks of work. A chunk ends
 * within ~15 microseconds, and a futex sleep plus wake-up costs the caller
 * about as much again, which on a 2-core machine showed as overhead. */
#define DK_SPIN_NS 40000L

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

typedef struct {
    const void *src;
    void *dst;
    size_t n;
    int dtype;
    uint32_t key0, key1;
    uint32_t ctr2, ctr3;
    /* Effective threshold: 0 (drop all), 1 with zero lanes (keep all: no
     * Philox needed), or the real threshold with need_rng set. */
    uint32_t threshold;
    int need_rng;
    float scale32;
    double scale64;
} dk_job;

/* ------------------------------------------------------------------------ */
/* Scalar helpers, shared by the portable path and the AVX2 tails.           */

static inline uint32_t dk_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float dk_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Exact float16 -> float32, as the F16C instruction does it. */
static inline float dk_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1Fu;
    uint32_t mantissa = h & 0x3FFu;
    uint32_t bits;
    if (exponent == 0x1Fu) {
        /* Infinity, or NaN: payload kept, quiet bit set. */
        bits = sign | 0x7F800000u | (mantissa << 13) | (mantissa ? 0x00400000u : 0u);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else {
        /* Subnormal half: normalise into a float32 exponent. */
        uint32_t shift = 0;
        while (!(mantissa & 0x400u)) {
            mantissa <<= 1;
            shift++;
        }
        bits = sign | ((113u - shift) << 23) | ((mantissa & 0x3FFu) << 13);
    }
    return dk_bits_f32(bits);
}

/* float32 -> float16, round to nearest even, subnormals and overflow to
 * infinity as IEEE 754 (and F16C's VCVTPS2PH) prescribe. Integer-only, so the
 * result does not depend on the floating-point environment. */
static inline uint16_t dk_f32_to_f16(float f) {
    uint32_t x = dk_f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
    if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* >= 65520 rounds to inf */
    if (ax >= 0x38800000u) {                                    /* normal half */
        uint32_t rebased = ax - 0x38000000u;
        rebased += 0xFFFu + ((rebased >> 13) & 1u);
        return (uint16_t)(sign | (rebased >> 13));
    }
    if (ax <= 0x33000000u) return sign; /* <= 2**-25: ties to even give zero */
    {
        uint32_t exponent = ax >> 23; /* 102..112 */
        uint32_t mantissa = (ax & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126u - exponent; /* to units of 2**-24 */
        uint32_t quotient = mantissa >> shift;
        uint32_t rest = mantissa & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rest > half || (rest == half && (quotient & 1u))) quotient++;
        return (uint16_t)(sign | quotient);
    }
}

static inline float dk_bf16_to_f32(uint16_t b) { return dk_bits_f32((uint32_t)b << 16); }

/* float32 -> bfloat16, round to nearest even; NaN stays a quiet NaN. */
static inline uint16_t dk_f32_to_bf16(float f) {
    uint32_t x = dk_f32_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x0040u);
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

static inline void dk_philox_block(uint64_t block, const dk_job *job, uint32_t out[4]) {
    uint32_t c0 = (uint32_t)block, c1 = (uint32_t)(block >> 32);
    uint32_t c2 = job->ctr2, c3 = job->ctr3;
    uint32_t k0 = job->key0, k1 = job->key1;
    for (int round = 0; round < 10; round++) {
        if (round) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* Keep flags for the elements [8*block, 8*block + 8). */
static inline void dk_block_keep(uint64_t block, const dk_job *job, int keep[8]) {
    if (!job->need_rng) {
        for (int j = 0; j < 8; j++) keep[j] = job->threshold != 0;
        return;
    }
    uint32_t words[4];
    dk_philox_block(block, job, words);
    for (int j = 0; j < 8; j++) {
        uint32_t lane = (words[j >> 1] >> (16 * (j & 1))) & 0xFFFFu;
        keep[j] = lane < job->threshold;
    }
}

/* Elements [start, end) one Philox block at a time; start must be a multiple of 8. */
static void dk_range_portable(const dk_job *job, size_t start, size_t end) {
    for (size_t base = start; base < end; base += 8) {
        int keep[8];
        size_t count = end - base < 8 ? end - base : 8;
        dk_block_keep((uint64_t)(base / 8), job, keep);
        switch (job->dtype) {
        case DK_F32: {
            const float *x = (const float *)job->src + base;
            float *y = (float *)job->dst + base;
            for (size_t j = 0; j < count; j++) y[j] = keep[j] ? x[j] * job->scale32 : 0.0f;
            break;
        }
        case DK_F64: {
            const double *x = (const double *)job->src + base;
            double *y = (double *)job->dst + base;
            for (size_t j = 0; j < count; j++) y[j] = keep[j] ? x[j] * job->scale64 : 0.0;
            break;
        }
        case DK_F16: {
            const uint16_t *x = (const uint16_t *)job->src + base;
            uint16_t *y = (uint16_t *)job->dst + base;
            for (size_t j = 0; j < count; j++)
                y[j] = keep[j] ? dk_f32_to_f16(dk_f16_to_f32(x[j]) * job->scale32) : 0;
            break;
        }
        default: {
            const uint16_t *x = (const uint16_t *)job->src + base;
            uint16_t *y = (uint16_t *)job->dst + base;
            for (size_t j = 0; j < count; j++)
                y[j] = keep[j] ? dk_f32_to_bf16(dk_bf16_to_f32(x[j]) * job->scale32) : 0;
            break;
        }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* AVX2 path: eight Philox blocks per __m256i, one group = 64 elements.     */

#if DK_HAVE_AVX2
#define DK_AVX2 __attribute__((target("avx2,f16c")))

/* hi/lo halves of the 32x32 -> 64-bit products of eight lanes by one constant.
 * _mm256_mul_epu32 multiplies the even lanes; the odd lanes are moved down
 * for a second multiply and the halves are blended back into place. Dword
 * shuffles rather than 64-bit shifts do the moving because shifts compete
 * with the multiplies for the same two execution ports. */
DK_AVX2 static inline void dk_mulhilo8(__m256i value, __m256i multiplier, __m256i *hi,
                                       __m256i *lo) {
    __m256i even = _mm256_mul_epu32(value, multiplier);
    __m256i odd = _mm256_mul_epu32(_mm256_shuffle_epi32(value, _MM_SHUFFLE(3, 3, 1, 1)),
                                   multiplier);
    *lo = _mm256_blend_epi32(even, _mm256_shuffle_epi32(odd, _MM_SHUFFLE(2, 2, 0, 0)), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_shuffle_epi32(even, _MM_SHUFFLE(3, 3, 1, 1)), odd, 0xAA);
}

/* Keep masks of one group: keep[k] holds 16-bit all-ones/zero flags for the
 * 16 elements 16k .. 16k+15 (blocks 2k and 2k+1), in element order. */
typedef struct {
    __m256i keep[4];
} dk_keep64;

/* Philox for the 8 blocks starting at `block`, compared against the threshold. */
DK_AVX2 static inline dk_keep64 dk_keep_group(uint64_t block, const dk_job *job) {
    dk_keep64 result;
    if (!job->need_rng) {
        __m256i all = job->threshold ? _mm256_set1_epi32(-1) : _mm256_setzero_si256();
        result.keep[0] = result.keep[1] = result.keep[2] = result.keep[3] = all;
        return result;
    }
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    uint32_t block_lo = (uint32_t)block, block_hi = (uint32_t)(block >> 32);
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32((int)block_lo), iota);
    __m256i c1;
    if (block_lo > 0xFFFFFFF8u) {
        /* The low counter word wraps inside this group: carry per lane. */
        uint32_t hi_words[8];
        for (uint32_t j = 0; j < 8; j++) hi_words[j] = (uint32_t)((block + j) >> 32);
        c1 = _mm256_loadu_si256((const __m256i *)hi_words);
    } else {
        c1 = _mm256_set1_epi32((int)block_hi);
    }
    __m256i c2 = _mm256_set1_epi32((int)job->ctr2);
    __m256i c3 = _mm256_set1_epi32((int)job->ctr3);
    const __m256i m0 = _mm256_set1_epi32((int)PHILOX_M0);
    const __m256i m1 = _mm256_set1_epi32((int)PHILOX_M1);
    uint32_t k0 = job->key0, k1 = job->key1;
    for (int round = 0; round < 10; round++) {
        __m256i hi0, lo0, hi1, lo1;
        dk_mulhilo8(c0, m0, &hi0, &lo0);
        dk_mulhilo8(c2, m1, &hi1, &lo1);
        c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32((int)k0));
        c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)k1));
        c1 = lo1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    /* Transpose words-by-block into blocks in element order: after the
     * unpacks u_k holds blocks k | k+4; the 128-bit permutes pair 2k | 2k+1. */
    __m256i t0 = _mm256_unpacklo_epi32(c0, c1);
    __m256i t1 = _mm256_unpackhi_epi32(c0, c1);
    __m256i t2 = _mm256_unpacklo_epi32(c2, c3);
    __m256i t3 = _mm256_unpackhi_epi32(c2, c3);
    __m256i u0 = _mm256_unpacklo_epi64(t0, t2);
    __m256i u1 = _mm256_unpackhi_epi64(t0, t2);
    __m256i u2 = _mm256_unpacklo_epi64(t1, t3);
    __m256i u3 = _mm256_unpackhi_epi64(t1, t3);
    __m256i lanes[4];
    lanes[0] = _mm256_permute2x128_si256(u0, u1, 0x20);
    lanes[1] = _mm256_permute2x128_si256(u2, u3, 0x20);
    lanes[2] = _mm256_permute2x128_si256(u0, u1, 0x31);
    lanes[3] = _mm256_permute2x128_si256(u2, u3, 0x31);
    /* Unsigned lane < threshold, i.e. lane <= threshold - 1 (threshold is in
     * [1, 65535] here, so threshold - 1 fits 16 bits): min(lane, limit) == lane. */
    const __m256i limit = _mm256_set1_epi16((short)(job->threshold - 1u));
    for (int k = 0; k < 4; k++)
        result.keep[k] = _mm256_cmpeq_epi16(_mm256_min_epu16(lanes[k], limit), lanes[k]);
    return result;
}

/* 32-bit keep flags for elements 8h .. 8h+7 of a 16-element mask (h = 0, 1). */
DK_AVX2 static inline __m256 dk_keep32(__m256i keep16, int h) {
    __m128i half = h ? _mm256_extracti128_si256(keep16, 1) : _mm256_castsi256_si128(keep16);
    return _mm256_castsi256_ps(_mm256_cvtepi16_epi32(half));
}

/* float32 -> bfloat16 bits (in 32-bit slots), round to nearest even. */
DK_AVX2 static inline __m256i dk_bf16_round8(__m256 value) {
    __m256i bits = _mm256_castps_si256(value);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded =
        _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF)), lsb),
                          16);
    __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
    __m256 is_nan = _mm256_cmp_ps(value, value, _CMP_UNORD_Q);
    return _mm256_blendv_epi8(rounded, quiet_nan, _mm256_castps_si256(is_nan));
}

/* One full group: the 64 elements starting at element 8*first_block; src and
 * dst point at the group's first element. */
DK_AVX2 static void dk_group_avx2(const dk_job *job, uint64_t first_block, const void *src,
                                  void *dst) {
    dk_keep64 mask = dk_keep_group(first_block, job);
    switch (job->dtype) {
    case DK_F32: {
        const float *x = (const float *)src;
        float *y = (float *)dst;
        const __m256 scale = _mm256_set1_ps(job->scale32);
        for (int k = 0; k < 4; k++) {
            for (int h = 0; h < 2; h++) {
                const int at = 16 * k + 8 * h;
                __m256 value = _mm256_mul_ps(_mm256_loadu_ps(x + at), scale);
                _mm256_storeu_ps(y + at, _mm256_and_ps(value, dk_keep32(mask.keep[k], h)));
            }
        }
        break;
    }
    case DK_F64: {
        const double *x = (const double *)src;
        double *y = (double *)dst;
        const __m256d scale = _mm256_set1_pd(job->scale64);
        for (int k = 0; k < 4; k++) {
            for (int q = 0; q < 4; q++) {
                const int at = 16 * k + 4 * q;
                __m128i part = q < 2 ? _mm256_castsi256_si128(mask.keep[k])
                                     : _mm256_extracti128_si256(mask.keep[k], 1);
                if (q & 1) part = _mm_srli_si128(part, 8);
                __m256d keep = _mm256_castsi256_pd(_mm256_cvtepi16_epi64(part));
                __m256d value = _mm256_mul_pd(_mm256_loadu_pd(x + at), scale);
                _mm256_storeu_pd(y + at, _mm256_and_pd(value, keep));
            }
        }
        break;
    }
    case DK_F16: {
        const uint16_t *x = (const uint16_t *)src;
        uint16_t *y = (uint16_t *)dst;
        const __m256 scale = _mm256_set1_ps(job->scale32);
        for (int k = 0; k < 4; k++) {
            for (int h = 0; h < 2; h++) {
                const int at = 16 * k + 8 * h;
                __m256 value = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + at)));
                value = _mm256_and_ps(_mm256_mul_ps(value, scale), dk_keep32(mask.keep[k], h));
                _mm_storeu_si128((__m128i *)(y + at),
                                 _mm256_cvtps_ph(value, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            }
        }
        break;
    }
    default: {
        const uint16_t *x = (const uint16_t *)src;
        uint16_t *y = (uint16_t *)dst;
        const __m256 scale = _mm256_set1_ps(job->scale32);
        const __m256i zero = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            /* bfloat16 is the top half of a float32: interleaving with zeros
             * widens it, and packus (the in-lane inverse) restores the order. */
            __m256i raw = _mm256_loadu_si256((const __m256i *)(x + 16 * k));
            __m256 lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, raw));
            __m256 hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, raw));
            __m256i lo_bits = dk_bf16_round8(_mm256_mul_ps(lo, scale));
            __m256i hi_bits = dk_bf16_round8(_mm256_mul_ps(hi, scale));
            __m256i packed = _mm256_packus_epi32(lo_bits, hi_bits);
            _mm256_storeu_si256((__m256i *)(y + 16 * k), _mm256_and_si256(packed, mask.keep[k]));
        }
        break;
    }
    }
}

/* Elements [start, end); start must be a multiple of DK_GROUP. A ragged tail
 * goes through a stack buffer so that it takes exactly the same code path. */
DK_AVX2 static void dk_range_avx2(const dk_job *job, size_t start, size_t end) {
    size_t elem = dk_elem_size[job->dtype];
    const char *src = (const char *)job->src;
    char *dst = (char *)job->dst;
    size_t base = start;
    for (; base + DK_GROUP <= end; base += DK_GROUP)
        dk_group_avx2(job, (uint64_t)(base / 8), src + base * elem, dst + base * elem);
    if (base < end) {
        _Alignas(32) unsigned char in[DK_GROUP * 8], out[DK_GROUP * 8];
        size_t bytes = (end - base) * elem;
        memset(in, 0, sizeof in);
        memcpy(in, src + base * elem, bytes);
        dk_group_avx2(job, (uint64_t)(base / 8), in, out);
        memcpy(dst + base * elem, out, bytes);
    }
}

static int dk_cpu_has_avx2(void) {
    unsigned eax, ebx, ecx, edx;
    __builtin_cpu_init();
    /* __builtin_cpu_supports checks that the OS saves the AVX state; F16C is
     * read from CPUID leaf 1 (ECX bit 29) because older compilers cannot name it. */
    if (!__builtin_cpu_supports("avx2")) return 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    return (ecx >> 29) & 1u;
}

/* ------------------------------------------------------------------------ */
/* AVX-512 path: sixteen Philox blocks per __m512i, one group = 128         */
/* elements. Needs AVX-512F (zmm, opmasks), BW (16-bit compares and masks)  */
/* and VL (masked 256-bit loads/stores for float16 tails).                  */

#define DK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,f16c")))
#define DK_GROUP512 128

/* Round keys, broadcast once per range rather than once per group: a
 * vpbroadcastd from a general register would take the shuffle port, which the
 * multiplies' hi/lo permutes already saturate. */
typedef struct {
    __m512i k0[10], k1[10];
} dk_keys512;

DK_AVX512 static inline void dk_keys512_init(const dk_job *job, dk_keys512 *keys) {
    uint32_t k0 = job->key0, k1 = job->key1;
    for (int round = 0; round < 10; round++) {
        keys->k0[round] = _mm512_set1_epi32((int)k0);
        keys->k1[round] = _mm512_set1_epi32((int)k1);
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
}

/* hi/lo halves of the 32x32 -> 64-bit products of sixteen lanes by one
 * constant. vpmuludq multiplies the even lanes; the odd lanes are shifted
 * down (a shift, not a shuffle, so the one shuffle port is left to the
 * permutes) for a second multiply, and one vpermt2d per half interleaves the two products. */
DK_AVX512 static inline void dk_mulhilo16(__m512i value, __m512i multiplier, __m512i *hi,
                                          __m512i *lo) {
    const __m512i lo_index =
        _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
    const __m512i hi_index =
        _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
    __m512i even = _mm512_mul_epu32(value, multiplier);
    __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(value, 32), multiplier);
    *lo = _mm512_permutex2var_epi32(even, lo_index, odd);
    *hi = _mm512_permutex2var_epi32(even, hi_index, odd);
}

/* keep[k] bit e says whether element 32k + e of the group survives. */
typedef struct {
    __mmask32 keep[4];
} dk_keep128;

/* Philox for the 16 blocks starting at `block`, compared against the threshold. */
DK_AVX512 static inline dk_keep128 dk_keep_group512(uint64_t block, const dk_job *job,
                                                    const dk_keys512 *keys) {
    dk_keep128 result;
    if (!job->need_rng) {
        __mmask32 all = job->threshold ? (__mmask32)0xFFFFFFFFu : (__mmask32)0;
        result.keep[0] = result.keep[1] = result.keep[2] = result.keep[3] = all;
        return result;
    }
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i base_lo = _mm512_set1_epi32((int)(uint32_t)block);
    __m512i c0 = _mm512_add_epi32(base_lo, iota);
    /* Lanes whose low counter word wrapped carry into the high word (only
     * reachable beyond 2**35 elements, but free: one compare per group). */
    __mmask16 carry = _mm512_cmplt_epu32_mask(c0, base_lo);
    __m512i c1 = _mm512_set1_epi32((int)(uint32_t)(block >> 32));
    c1 = _mm512_mask_add_epi32(c1, carry, c1, _mm512_set1_epi32(1));
    __m512i c2 = _mm512_set1_epi32((int)job->ctr2);
    __m512i c3 = _mm512_set1_epi32((int)job->ctr3);
    const __m512i m0 = _mm512_set1_epi32((int)PHILOX_M0);
    const __m512i m1 = _mm512_set1_epi32((int)PHILOX_M1);
    for (int round = 0; round < 10; round++) {
        __m512i hi0, lo0, hi1, lo1;
        dk_mulhilo16(c0, m0, &hi0, &lo0);
        dk_mulhilo16(c2, m1, &hi1, &lo1);
        /* 0x96 is the truth table of a ^ b ^ c: one vpternlogd per word. */
        c0 = _mm512_ternarylogic_epi32(hi1, c1, keys->k0[round], 0x96);
        c2 = _mm512_ternarylogic_epi32(hi0, c3, keys->k1[round], 0x96);
        c1 = lo1;
        c3 = lo0;
    }
    /* Transpose words-by-block into blocks in element order. Within each
     * 128-bit lane L the unpacks leave u_j = block 4L + j; the 128-bit
     * shuffles then gather lane L of u_0..u_3 into lanes[L] = blocks 4L..4L+3,
     * i.e. the 32 16-bit lanes of elements 32L .. 32L+31 in order. */
    __m512i t0 = _mm512_unpacklo_epi32(c0, c1);
    __m512i t1 = _mm512_unpackhi_epi32(c0, c1);
    __m512i t2 = _mm512_unpacklo_epi32(c2, c3);
    __m512i t3 = _mm512_unpackhi_epi32(c2, c3);
    __m512i u0 = _mm512_unpacklo_epi64(t0, t2);
    __m512i u1 = _mm512_unpackhi_epi64(t0, t2);
    __m512i u2 = _mm512_unpacklo_epi64(t1, t3);
    __m512i u3 = _mm512_unpackhi_epi64(t1, t3);
    __m512i v0 = _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(1, 0, 1, 0));
    __m512i v1 = _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(1, 0, 1, 0));
    __m512i v2 = _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(3, 2, 3, 2));
    __m512i v3 = _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(3, 2, 3, 2));
    __m512i lanes[4];
    lanes[0] = _mm512_shuffle_i32x4(v0, v1, _MM_SHUFFLE(2, 0, 2, 0));
    lanes[1] = _mm512_shuffle_i32x4(v0, v1, _MM_SHUFFLE(3, 1, 3, 1));
    lanes[2] = _mm512_shuffle_i32x4(v2, v3, _MM_SHUFFLE(2, 0, 2, 0));
    lanes[3] = _mm512_shuffle_i32x4(v2, v3, _MM_SHUFFLE(3, 1, 3, 1));
    /* threshold is in [1, 65535] here, so it fits an unsigned 16-bit lane. */
    const __m512i limit = _mm512_set1_epi16((short)job->threshold);
    for (int k = 0; k < 4; k++) result.keep[k] = _mm512_cmplt_epu16_mask(lanes[k], limit);
    return result;
}

/* Load/store masks: which of the `width` elements starting at `at` lie
 * below `count` (all of them in a full group). */
static inline uint32_t dk_valid_bits(unsigned count, unsigned at, unsigned width) {
    if (count >= at + width) return width == 32 ? 0xFFFFFFFFu : (1u << width) - 1u;
    if (count <= at) return 0;
    return (1u << (count - at)) - 1u;
}

/* float32 -> bfloat16 rounded to nearest even, left in the high 16 bits of
 * each 32-bit slot (the low 16 bits are garbage); NaN stays a quiet NaN with
 * its top payload bits, exactly as dk_f32_to_bf16. vcvtneps2bf16 is not used:
 * it flushes subnormal inputs to zero, which the reference does not. */
DK_AVX512 static inline __m512i dk_bf16_round16(__m512 value) {
    __m512i bits = _mm512_castps_si512(value);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), lsb);
    __mmask16 is_nan = _mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q);
    return _mm512_mask_or_epi32(rounded, is_nan, bits, _mm512_set1_epi32(0x00400000));
}

/* Up to one group: `count` (1..128) elements starting at element
 * 8*first_block; src and dst point at the group's first element. Tails use
 * masked loads and stores, which never touch memory past the end. Inlined
 * with count = 128 for full groups, where every mask is all-ones. */
DK_AVX512 static inline __attribute__((always_inline)) void
dk_group_avx512(const dk_job *job, const dk_keys512 *keys, uint64_t first_block, const void *src,
                void *dst, unsigned count) {
    dk_keep128 mask = dk_keep_group512(first_block, job, keys);
    switch (job->dtype) {
    case DK_F32: {
        const float *x = (const float *)src;
        float *y = (float *)dst;
        const __m512 scale = _mm512_set1_ps(job->scale32);
        for (unsigned k = 0; k < 4; k++) {
            for (unsigned h = 0; h < 2; h++) {
                const unsigned at = 32 * k + 16 * h;
                __mmask16 valid = (__mmask16)dk_valid_bits(count, at, 16);
                __mmask16 keep = (__mmask16)(mask.keep[k] >> (16 * h));
                __m512 value = _mm512_maskz_loadu_ps(valid, x + at);
                _mm512_mask_storeu_ps(y + at, valid, _mm512_maskz_mul_ps(keep, value, scale));
            }
        }
        break;
    }
    case DK_F64: {
        const double *x = (const double *)src;
        double *y = (double *)dst;
        const __m512d scale = _mm512_set1_pd(job->scale64);
        for (unsigned k = 0; k < 4; k++) {
            for (unsigned q = 0; q < 4; q++) {
                const unsigned at = 32 * k + 8 * q;
                __mmask8 valid = (__mmask8)dk_valid_bits(count, at, 8);
                __mmask8 keep = (__mmask8)(mask.keep[k] >> (8 * q));
                __m512d value = _mm512_maskz_loadu_pd(valid, x + at);
                _mm512_mask_storeu_pd(y + at, valid, _mm512_maskz_mul_pd(keep, value, scale));
            }
        }
        break;
    }
    case DK_F16: {
        const uint16_t *x = (const uint16_t *)src;
        uint16_t *y = (uint16_t *)dst;
        const __m512 scale = _mm512_set1_ps(job->scale32);
        for (unsigned k = 0; k < 4; k++) {
            for (unsigned h = 0; h < 2; h++) {
                const unsigned at = 32 * k + 16 * h;
                __mmask16 valid = (__mmask16)dk_valid_bits(count, at, 16);
                __mmask16 keep = (__mmask16)(mask.keep[k] >> (16 * h));
                __m512 value = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(valid, x + at));
                value = _mm512_maskz_mul_ps(keep, value, scale);
                _mm256_mask_storeu_epi16(
                    y + at, valid,
                    _mm512_cvtps_ph(value, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            }
        }
        break;
    }
    default: {
        const uint16_t *x = (const uint16_t *)src;
        uint16_t *y = (uint16_t *)dst;
        const __m512 scale = _mm512_set1_ps(job->scale32);
        const __m512i high_half = _mm512_set1_epi32((int)0xFFFF0000u);
        for (unsigned k = 0; k < 4; k++) {
            const unsigned at = 32 * k;
            __mmask32 valid = (__mmask32)dk_valid_bits(count, at, 32);
            /* bfloat16 is the top half of a float32: in each 32-bit slot the
             * even element widens by a shift and the odd one by a mask, so no
             * shuffle is needed and the order never changes. */
            __m512i raw = _mm512_maskz_loadu_epi16(valid, x + at);
            __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
            __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(raw, high_half));
            __m512i even_bits = dk_bf16_round16(_mm512_mul_ps(even, scale));
            __m512i odd_bits = dk_bf16_round16(_mm512_mul_ps(odd, scale));
            /* 0xF8 = a | (b & c): even result into the low half, odd kept high. */
            __m512i packed = _mm512_ternarylogic_epi32(_mm512_srli_epi32(even_bits, 16), odd_bits,
                                                       high_half, 0xF8);
            _mm512_mask_storeu_epi16(y + at, valid, _mm512_maskz_mov_epi16(mask.keep[k], packed));
        }
        break;
    }
    }
}

/* Elements [start, end); start must be a multiple of DK_GROUP512. */
DK_AVX512 static void dk_range_avx512(const dk_job *job, size_t start, size_t end) {
    size_t elem = dk_elem_size[job->dtype];
    const char *src = (const char *)job->src;
    char *dst = (char *)job->dst;
    dk_keys512 keys;
    dk_keys512_init(job, &keys);
    size_t base = start;
    for (; base + DK_GROUP512 <= end; base += DK_GROUP512)
        dk_group_avx512(job, &keys, (uint64_t)(base / 8), src + base * elem, dst + base * elem,
                        DK_GROUP512);
    if (base < end)
        dk_group_avx512(job, &keys, (uint64_t)(base / 8), src + base * elem, dst + base * elem,
                        (unsigned)(end - base));
}

static int dk_cpu_has_avx512(void) {
    /* __builtin_cpu_supports also checks that the OS saves the opmask and
     * zmm state (XCR0). The AVX-512 path uses F16C-era conversions too. */
    __builtin_cpu_init();
    return dk_cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}
#endif /* DK_HAVE_AVX2 */

/* ------------------------------------------------------------------------ */
/* Dispatch by instruction set.                                             */

typedef void (*dk_range_fn)(const dk_job *, size_t, size_t);

/* Ordered by preference: every ISA up to the best one runs on this CPU. */
enum { DK_ISA_PORTABLE = 0, DK_ISA_AVX2 = 1, DK_ISA_AVX512 = 2, DK_ISA_COUNT = 3 };
static const char *const dk_isa_names[] = {"portable", "avx2", "avx512"};
static int dk_isa_best = DK_ISA_PORTABLE;
static int dk_isa = DK_ISA_PORTABLE;

static dk_range_fn dk_range_for(int isa) {
#if DK_HAVE_AVX2
    if (isa == DK_ISA_AVX512) return dk_range_avx512;
    if (isa == DK_ISA_AVX2) return dk_range_avx2;
#endif
    (void)isa;
    return dk_range_portable;
}

/* ------------------------------------------------------------------------ */
/* Thread pool. Workers sleep on a condition variable between calls; the     */
/* caller works too, and everyone claims DK_CHUNK-sized pieces atomically.   */

typedef struct {
    const dk_job *job;
    dk_range_fn range;
    size_t nchunks;
    /* A batch of streams (seeds != NULL): stream c = t * n_offsets + r covers
     * elements [c * job->n, (c + 1) * job->n) of src and dst with key seeds[t]
     * and offset offsets[r]; a chunk is per_chunk consecutive streams. */
    const uint64_t *seeds;
    const uint64_t *offsets;
    size_t n_offsets, n_streams, per_chunk;
#if DK_HAVE_AVX2
    unsigned int mxcsr;
#endif
} dk_task;

/* Run chunk `chunk` of `task`: a DK_CHUNK slice of one stream, or a run of streams. */
static void dk_run_chunk(const dk_task *task, size_t chunk) {
    const dk_job *job = task->job;
    if (!task->seeds) {
        size_t start = chunk * DK_CHUNK;
        size_t end = start + DK_CHUNK < job->n ? start + DK_CHUNK : job->n;
        task->range(job, start, end);
        return;
    }
    size_t first = chunk * task->per_chunk;
    size_t last = first + task->per_chunk < task->n_streams ? first + task->per_chunk
                                                            : task->n_streams;
    size_t bytes = job->n * dk_elem_size[job->dtype];
    for (size_t c = first; c < last; c++) {
        dk_job one = *job;
        uint64_t seed = task->seeds[c / task->n_offsets];
        uint64_t offset = task->offsets[c % task->n_offsets];
        one.key0 = (uint32_t)seed;
        one.key1 = (uint32_t)(seed >> 32);
        one.ctr2 = (uint32_t)offset;
        one.ctr3 = (uint32_t)(offset >> 32);
        one.src = (const char *)job->src + c * bytes;
        one.dst = (char *)job->dst + c * bytes;
        task->range(&one, 0, job->n);
    }
}

#if DK_HAVE_PTHREADS
static void dk_run_chunks(const dk_task *task, size_t *next) {
    for (;;) {
        size_t chunk = __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
        if (chunk >= task->nchunks) return;
        dk_run_chunk(task, chunk);
    }
}
#endif

#if DK_HAVE_PTHREADS
typedef struct {
    pthread_mutex_t call_lock; /* one parallel call at a time */
    pthread_mutex_t lock;      /* guards everything below */
    pthread_cond_t work_ready;
    pthread_cond_t work_done;
    int started;          /* worker threads alive */
    int wanted;           /* workers 0..wanted-1 may join the current call */
    int active;           /* workers that joined and are still working */
    unsigned long generation;
    const dk_task *task;
    size_t next_chunk;
} dk_pool;

/* A forked child inherits none of the worker threads and possibly locked
 * mutexes, so the child handler forgets the pool (leaking it on purpose) and
 * the first parallel call in the child builds a fresh one. */
static dk_pool *dk_the_pool = NULL;
static pthread_mutex_t dk_pool_init_lock = PTHREAD_MUTEX_INITIALIZER;

typedef struct {
    dk_pool *pool;
    int index;
    /* Generation at creation: a worker scheduled late must still see the
     * call it was started for as new work. */
    unsigned long seen;
} dk_worker_arg;

static void *dk_worker_main(void *raw) {
    dk_worker_arg arg = *(dk_worker_arg *)raw;
    free(raw);
    dk_pool *pool = arg.pool;
    unsigned long seen = arg.seen;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (pool->generation == seen) pthread_cond_wait(&pool->work_ready, &pool->lock);
        seen = pool->generation;
        /* wanted drops to 0 once the caller has claimed the last chunk, so a
         * worker that wakes late (its core busy elsewhere) stays out. */
        if (arg.index >= pool->wanted) continue;
        __atomic_add_fetch(&pool->active, 1, __ATOMIC_RELAXED);
        const dk_task *task = pool->task;
        pthread_mutex_unlock(&pool->lock);
#if DK_HAVE_AVX2
        /* Same rounding and denormal mode as the calling thread. */
        _mm_setcsr(task->mxcsr);
#endif
        dk_run_chunks(task, &pool->next_chunk);
        pthread_mutex_lock(&pool->lock);
        /* Atomic: the caller may read it without the lock while it spins. */
        if (__atomic_sub_fetch(&pool->active, 1, __ATOMIC_RELEASE) == 0)
            pthread_cond_signal(&pool->work_done);
    }
    return NULL;
}

static void dk_atfork_prepare(void) {
    pthread_mutex_lock(&dk_pool_init_lock);
    if (dk_the_pool) {
        pthread_mutex_lock(&dk_the_pool->call_lock);
        pthread_mutex_lock(&dk_the_pool->lock);
    }
}

static void dk_atfork_parent(void) {
    if (dk_the_pool) {
        pthread_mutex_unlock(&dk_the_pool->lock);
        pthread_mutex_unlock(&dk_the_pool->call_lock);
    }
    pthread_mutex_unlock(&dk_pool_init_lock);
}

static void dk_atfork_child(void) {
    dk_the_pool = NULL;
    pthread_mutex_unlock(&dk_pool_init_lock);
}

static dk_pool *dk_get_pool(void) {
    pthread_mutex_lock(&dk_pool_init_lock);
    if (!dk_the_pool) {
        dk_pool *pool = (dk_pool *)calloc(1, sizeof *pool);
        if (pool) {
            pthread_mutex_init(&pool->call_lock, NULL);
            pthread_mutex_init(&pool->lock, NULL);
            pthread_cond_init(&pool->work_ready, NULL);
            pthread_cond_init(&pool->work_done, NULL);
        }
        dk_the_pool = pool;
    }
    dk_pool *pool = dk_the_pool;
    pthread_mutex_unlock(&dk_pool_init_lock);
    return pool;
}

/* Spin (bounded by DK_SPIN_NS) while workers that joined the call still run. */
static void dk_spin_until_idle(dk_pool *pool) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (unsigned spins = 1;; spins++) {
        if (__atomic_load_n(&pool->active, __ATOMIC_ACQUIRE) == 0) return;
#if DK_HAVE_AVX2
        _mm_pause();
#endif
        if (spins % 64 == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            long elapsed = (now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec);
            if (elapsed > DK_SPIN_NS) return;
        }
    }
}

/* Start workers up to `count`; returns how many are running. Called with
 * call_lock held, so no call is in flight. */
static int dk_grow_pool(dk_pool *pool, int count) {
    while (pool->started < count) {
        dk_worker_arg *arg = (dk_worker_arg *)malloc(sizeof *arg);
        if (!arg) break;
        arg->pool = pool;
        arg->index = pool->started;
        arg->seen = pool->generation;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        /* Workers never handle signals: Python expects them on the main thread. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_t thread;
        int failed = pthread_create(&thread, &attr, dk_worker_main, arg);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
        if (failed) {
            free(arg);
            break;
        }
        pool->started++;
    }
    return pool->started;
}
#endif /* DK_HAVE_PTHREADS */

/* One stream (seeds == NULL) or n_seeds x n_offsets streams of job->n elements each. */
static void dk_execute(const dk_job *job, const uint64_t *seeds, size_t n_seeds,
                       const uint64_t *offsets, size_t n_offsets, int nthreads) {
    dk_task task;
    memset(&task, 0, sizeof task);
    task.job = job;
    task.range = dk_range_for(dk_isa);
    size_t total = job->n;
    if (seeds) {
        task.seeds = seeds;
        task.offsets = offsets;
        task.n_offsets = n_offsets;
        task.n_streams = n_seeds * n_offsets;
        task.per_chunk = job->n >= DK_CHUNK ? 1 : DK_CHUNK / job->n;
        task.nchunks = (task.n_streams + task.per_chunk - 1) / task.per_chunk;
        total = task.n_streams * job->n;
    } else {
        task.nchunks = (job->n + DK_CHUNK - 1) / DK_CHUNK;
    }
#if DK_HAVE_AVX2
    task.mxcsr = _mm_getcsr();
#endif
    if (nthreads > DK_MAX_THREADS) nthreads = DK_MAX_THREADS;
    if ((size_t)nthreads > task.nchunks) nthreads = (int)task.nchunks;
#if DK_HAVE_PTHREADS
    if (nthreads > 1 && total >= DK_PARALLEL_MIN) {
        dk_pool *pool = dk_get_pool();
        /* A concurrent call from another Python thread runs serially
         * rather than waiting for the pool. */
        if (pool && pthread_mutex_trylock(&pool->call_lock) == 0) {
            int workers = dk_grow_pool(pool, nthreads - 1);
            if (workers > nthreads - 1) workers = nthreads - 1;
            pthread_mutex_lock(&pool->lock);
            pool->task = &task;
            pool->next_chunk = 0;
            pool->wanted = workers;
            __atomic_store_n(&pool->active, 0, __ATOMIC_RELAXED);
            pool->generation++;
            pthread_cond_broadcast(&pool->work_ready);
            pthread_mutex_unlock(&pool->lock);
            dk_run_chunks(&task, &pool->next_chunk);
            /* Every chunk is claimed: wait only for workers that joined, never
             * for one that has not been scheduled yet. */
            pthread_mutex_lock(&pool->lock);
            pool->wanted = 0;
            int busy = pool->active;
            pthread_mutex_unlock(&pool->lock);
            if (busy) {
                dk_spin_until_idle(pool);
                pthread_mutex_lock(&pool->lock);
                while (pool->active > 0) pthread_cond_wait(&pool->work_done, &pool->lock);
                pthread_mutex_unlock(&pool->lock);
            }
            pthread_mutex_unlock(&pool->call_lock);
            return;
        }
    }
#endif
    for (size_t chunk = 0; chunk < task.nchunks; chunk++) dk_run_chunk(&task, chunk);
}

/* ------------------------------------------------------------------------ */
/* Python bindings.                                                         */

PyDoc_STRVAR(dk_mask_scale_doc,
             "mask_scale(src_ptr, dst_ptr, numel, dtype_code, seed, offset, threshold, scale, "
             "num_threads)\n--\n\n"
             "Write keep ? src * scale : +0.0 for numel contiguous elements at dst_ptr (may equal "
             "src_ptr).\ndtype_code: 0 float32, 1 float64, 2 float16, 3 bfloat16. Releases the GIL.");

/* The C interface, shared by the Python binding below and by
 * dropkit.kernels._dispatch (the C++ eager op, linked against torch), which
 * reaches it through the capsule dropkit.kernels._native._C_API (a dk_c_api).
 * Both return 0, or -1 (numel < 0), -2 (dtype code), -3 (threshold) or -4 (null
 * pointer); dk_mask_scale_c runs without the GIL. */
static int dk_job_init(dk_job *job, const void *src, void *dst, int64_t numel, int dtype,
                       uint64_t seed, uint64_t offset, int64_t threshold, double scale) {
    if (numel < 0) return -1;
    if (dtype < DK_F32 || dtype > DK_BF16) return -2;
    if (threshold < 0 || threshold > DK_KEEP_ONE) return -3;
    if (numel > 0 && (src == NULL || dst == NULL)) return -4;
    job->src = src;
    job->dst = dst;
    job->n = (size_t)numel;
    job->dtype = dtype;
    job->key0 = (uint32_t)seed;
    job->key1 = (uint32_t)(seed >> 32);
    job->ctr2 = (uint32_t)offset;
    job->ctr3 = (uint32_t)(offset >> 32);
    job->need_rng = threshold > 0 && threshold < DK_KEEP_ONE;
    /* Without Philox every lane reads as 0: threshold 1 keeps all, 0 drops all. */
    job->threshold = job->need_rng ? (uint32_t)threshold : (threshold ? 1u : 0u);
    job->scale32 = (float)scale;
    job->scale64 = scale;
    return 0;
}

/* One stream on nthreads threads (the kernel's pool, for calls of DK_PARALLEL_MIN
 * elements and more). */
static int dk_mask_scale_c(const void *src, void *dst, int64_t numel, int dtype, uint64_t seed,
                           uint64_t offset, int64_t threshold, double scale, int nthreads) {
    dk_job job;
    int status = dk_job_init(&job, src, dst, numel, dtype, seed, offset, threshold, scale);
    if (status != 0 || numel == 0) return status;
    dk_execute(&job, NULL, 0, NULL, 0, nthreads < 1 ? 1 : nthreads);
    return 0;
}

/* Versioned, so that a _dispatch built against another layout refuses to run. */
typedef struct {
    int abi; /* 1: the layout below */
    int (*mask_scale)(const void *, void *, int64_t, int, uint64_t, uint64_t, int64_t, double,
                      int);
} dk_c_api;

static const dk_c_api dk_api = {1, dk_mask_scale_c};

static PyObject *dk_py_mask_scale(PyObject *self, PyObject *args) {
    unsigned long long src, dst, seed, offset;
    Py_ssize_t numel;
    int dtype, nthreads;
    long long threshold;
    double scale;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKniKKLdi:mask_scale", &src, &dst, &numel, &dtype, &seed, &offset,
                          &threshold, &scale, &nthreads))
        return NULL;
    if (numel < 0) return PyErr_Format(PyExc_ValueError, "numel must be >= 0, got %zd", numel);
    if (dtype < DK_F32 || dtype > DK_BF16)
        return PyErr_Format(PyExc_ValueError, "dtype_code must be 0..3, got %d", dtype);
    if (threshold < 0 || threshold > DK_KEEP_ONE)
        return PyErr_Format(PyExc_ValueError, "threshold must be in [0, 65536], got %lld",
                            threshold);
    if (numel > 0 && (src == 0 || dst == 0))
        return PyErr_Format(PyExc_ValueError, "null data pointer for %zd elements", numel);
    Py_BEGIN_ALLOW_THREADS
    dk_mask_scale_c((const void *)(uintptr_t)src, (void *)(uintptr_t)dst, (int64_t)numel, dtype,
                    seed, offset, threshold, scale, nthreads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

PyDoc_STRVAR(dk_mask_scale_streams_doc,
             "mask_scale_streams(src_ptr, dst_ptr, numel, dtype_code, seeds_ptr, n_seeds, "
             "offsets_ptr, n_offsets, threshold, scale, num_threads)\n--\n\n"
             "mask_scale for n_seeds x n_offsets streams in one call: stream (t, r) is numel "
             "contiguous elements\nat element (t * n_offsets + r) * numel of src and dst, masked "
             "with key seeds[t] and offset offsets[r]\n(seeds and offsets: uint64 arrays). Every "
             "stream gets exactly the bits of its own mask_scale call.");

static PyObject *dk_py_mask_scale_streams(PyObject *self, PyObject *args) {
    unsigned long long src, dst, seeds, offsets;
    Py_ssize_t numel, n_seeds, n_offsets;
    int dtype, nthreads;
    long long threshold;
    double scale;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKniKnKnLdi:mask_scale_streams", &src, &dst, &numel, &dtype,
                          &seeds, &n_seeds, &offsets, &n_offsets, &threshold, &scale, &nthreads))
        return NULL;
    if (numel < 0 || n_seeds < 0 || n_offsets < 0)
        return PyErr_Format(PyExc_ValueError,
                            "numel, n_seeds and n_offsets must be >= 0, got %zd, %zd, %zd", numel,
                            n_seeds, n_offsets);
    if (dtype < DK_F32 || dtype > DK_BF16)
        return PyErr_Format(PyExc_ValueError, "dtype_code must be 0..3, got %d", dtype);
    if (threshold < 0 || threshold > DK_KEEP_ONE)
        return PyErr_Format(PyExc_ValueError, "threshold must be in [0, 65536], got %lld",
                            threshold);
    if (numel == 0 || n_seeds == 0 || n_offsets == 0) Py_RETURN_NONE;
    if (src == 0 || dst == 0 || seeds == 0 || offsets == 0)
        return PyErr_Format(PyExc_ValueError, "null pointer for %zd x %zd streams", n_seeds,
                            n_offsets);

    /* The key and offset are per stream (dk_run_chunk). */
    dk_job job;
    dk_job_init(&job, (const void *)(uintptr_t)src, (void *)(uintptr_t)dst, (int64_t)numel, dtype,
                0, 0, threshold, scale);

    Py_BEGIN_ALLOW_THREADS
    dk_execute(&job, (const uint64_t *)(uintptr_t)seeds, (size_t)n_seeds,
               (const uint64_t *)(uintptr_t)offsets, (size_t)n_offsets,
               nthreads < 1 ? 1 : nthreads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

PyDoc_STRVAR(dk_isa_doc, "isa() -> str\n--\n\nInstruction set the kernel uses now.");

static PyObject *dk_py_isa(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyUnicode_FromString(dk_isa_names[dk_isa]);
}

PyDoc_STRVAR(dk_available_isas_doc,
             "available_isas() -> tuple[str, ...]\n--\n\nInstruction sets this CPU can run.");

static PyObject *dk_py_available_isas(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    PyObject *names = PyTuple_New(dk_isa_best + 1);
    if (!names) return NULL;
    for (int isa = 0; isa <= dk_isa_best; isa++) {
        PyObject *name = PyUnicode_FromString(dk_isa_names[isa]);
        if (!name) {
            Py_DECREF(names);
            return NULL;
        }
        PyTuple_SET_ITEM(names, isa, name);
    }
    return names;
}

PyDoc_STRVAR(dk_set_isa_doc,
             "set_isa(name) -> str\n--\n\nUse instruction set `name` ('portable', 'avx2', "
             "'avx512' or 'auto' for the best available); returns the one now in use. For tests and "
             "benchmarks.");

static PyObject *dk_py_set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    if (strcmp(name, "auto") == 0) {
        dk_isa = dk_isa_best;
        return PyUnicode_FromString(dk_isa_names[dk_isa]);
    }
    for (int isa = 0; isa < DK_ISA_COUNT; isa++) {
        if (strcmp(name, dk_isa_names[isa]) != 0) continue;
        if (isa > dk_isa_best)
            return PyErr_Format(PyExc_ValueError,
                                "this CPU (or build) cannot run isa %R; available up to '%s'",
                                arg, dk_isa_names[dk_isa_best]);
        dk_isa = isa;
        return PyUnicode_FromString(dk_isa_names[dk_isa]);
    }
    return PyErr_Format(PyExc_ValueError,
                        "isa must be 'auto', 'portable', 'avx2' or 'avx512', got %R", arg);
}

static PyMethodDef dk_methods[] = {
    {"mask_scale", dk_py_mask_scale, METH_VARARGS, dk_mask_scale_doc},
    {"mask_scale_streams", dk_py_mask_scale_streams, METH_VARARGS, dk_mask_scale_streams_doc},
    {"isa", dk_py_isa, METH_NOARGS, dk_isa_doc},
    {"available_isas", dk_py_available_isas, METH_NOARGS, dk_available_isas_doc},
    {"set_isa", dk_py_set_isa, METH_O, dk_set_isa_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef dk_module = {
    PyModuleDef_HEAD_INIT, "_native",
    "dropkit's native CPU dropout kernel (see dropkit/kernels/_native.c).", -1, dk_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
#if DK_HAVE_AVX2
    dk_isa_best = dk_cpu_has_avx512() ? DK_ISA_AVX512
                  : dk_cpu_has_avx2()   ? DK_ISA_AVX2
                                        : DK_ISA_PORTABLE;
#endif
    dk_isa = dk_isa_best;
#if DK_HAVE_PTHREADS
    static int atfork_registered = 0;
    if (!atfork_registered) {
        pthread_atfork(dk_atfork_prepare, dk_atfork_parent, dk_atfork_child);
        atfork_registered = 1;
    }
#endif
    PyObject *module = PyModule_Create(&dk_module);
    if (module == NULL) return NULL;
    /* The C entry point for dropkit.kernels._dispatch: the kernel is built once,
     * here, and the torch-linked op borrows it instead of compiling a copy. */
    PyObject *api = PyCapsule_New((void *)&dk_api, "dropkit.kernels._native._C_API", NULL);
    if (api == NULL || PyModule_AddObject(module, "_C_API", api) < 0) {
        Py_XDECREF(api);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
