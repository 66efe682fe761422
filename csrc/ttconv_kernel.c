/* ttconv kernel: dtype conversion, row permutation, transposes and msgpack
 * float32 encoding/decoding for the converter's hot loops. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ttconv_kernel.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define TRANSPOSE_BLOCK 32
/* 64 rows encode to 320 bytes = 5 whole cache lines of the transposed output */
#define TRANSPOSE_ROWS 64

static uint32_t f16_to_f32_bits(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;

    if (exponent == 0) {
        if (mantissa == 0)
            return sign;
        /* subnormal half: normalise into a float32 exponent */
        exponent = 113;
        while (!(mantissa & 0x400u)) {
            mantissa <<= 1;
            exponent--;
        }
        mantissa &= 0x3ffu;
        return sign | (exponent << 23) | (mantissa << 13);
    }
    if (exponent == 31)
        return sign | 0x7f800000u | (mantissa << 13);
    return sign | ((exponent + 112) << 23) | (mantissa << 13);
}

static inline uint32_t source_bits(const void *src, int dtype, size_t i)
{
    uint32_t bits;
    switch (dtype) {
    case TT_DTYPE_F16:
        return f16_to_f32_bits(((const uint16_t *)src)[i]);
    case TT_DTYPE_BF16:
        return (uint32_t)((const uint16_t *)src)[i] << 16;
    default:
        memcpy(&bits, (const float *)src + i, 4);
        return bits;
    }
}

static inline uint32_t to_big_endian(uint32_t bits)
{
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_bswap32(bits);
#else
    uint8_t b[4] = {(uint8_t)(bits >> 24), (uint8_t)(bits >> 16), (uint8_t)(bits >> 8), (uint8_t)bits};
    uint32_t be;
    memcpy(&be, b, 4);
    return be;
#endif
}

static inline void put_float32(uint8_t *out, uint32_t bits)
{
    uint32_t be = to_big_endian(bits);
    out[0] = 0xca;
    memcpy(out + 1, &be, 4);
}

static int valid_dtype(int dtype)
{
    return dtype == TT_DTYPE_F32 || dtype == TT_DTYPE_F16 || dtype == TT_DTYPE_BF16;
}

static int is_nonfinite(uint32_t bits)
{
    return (bits & 0x7f800000u) == 0x7f800000u;
}

/* Encodes n values from index first; returns how many were NaN or infinite.
 * One loop per dtype keeps the per-value work free of branches on the dtype. */
static size_t encode_run(const void *src, int dtype, size_t first, size_t n, uint8_t *out)
{
    size_t i, nonfinite = 0;
    uint32_t bits;

    if (dtype == TT_DTYPE_F32) {
        const uint8_t *p = (const uint8_t *)src + first * 4;
        for (i = 0; i < n; i++, p += 4, out += 5) {
            memcpy(&bits, p, 4);
            nonfinite += is_nonfinite(bits);
            put_float32(out, bits);
        }
    } else if (dtype == TT_DTYPE_BF16) {
        const uint16_t *p = (const uint16_t *)src + first;
        for (i = 0; i < n; i++, out += 5) {
            bits = (uint32_t)p[i] << 16;
            nonfinite += is_nonfinite(bits);
            put_float32(out, bits);
        }
    } else {
        const uint16_t *p = (const uint16_t *)src + first;
        for (i = 0; i < n; i++, out += 5) {
            bits = f16_to_f32_bits(p[i]);
            nonfinite += is_nonfinite(bits);
            put_float32(out, bits);
        }
    }
    return nonfinite;
}

static long long clamp_count(size_t n)
{
    return n > (size_t)0x7fffffffffffffffLL ? 0x7fffffffffffffffLL : (long long)n;
}

long long tt_encode(const void *src, int dtype, size_t n, uint8_t *out)
{
    if (!valid_dtype(dtype))
        return TT_E_BAD_ARGUMENT;
    return clamp_count(encode_run(src, dtype, 0, n, out));
}

long long tt_encode_rope(const void *src, int dtype, size_t n_heads, size_t head_dim,
                         size_t cols, uint8_t *out)
{
    size_t head, i, half = head_dim / 2, nonfinite = 0;
    if (!valid_dtype(dtype) || head_dim % 2 != 0)
        return TT_E_BAD_ARGUMENT;
    for (head = 0; head < n_heads; head++) {
        size_t base = head * head_dim;
        for (i = 0; i < half; i++) {
            uint8_t *even = out + (base + 2 * i) * cols * 5;
            nonfinite += encode_run(src, dtype, (base + i) * cols, cols, even);
            nonfinite += encode_run(src, dtype, (base + half + i) * cols, cols, even + cols * 5);
        }
    }
    return clamp_count(nonfinite);
}

/* One dtype per call, so that the compiler specialises the loops for each constant dtype.
 * Each block is transposed into a small tile first (contiguous reads of the source),
 * then encoded row by row (contiguous writes of the output). */
static inline size_t encode_transposed_as(const void *src, int dtype, size_t rows, size_t cols, uint8_t *out)
{
    uint32_t tile[TRANSPOSE_BLOCK][TRANSPOSE_ROWS];
    size_t r0, c0, r, c, nonfinite = 0;
    for (r0 = 0; r0 < rows; r0 += TRANSPOSE_ROWS) {
        size_t r1 = r0 + TRANSPOSE_ROWS < rows ? r0 + TRANSPOSE_ROWS : rows;
        for (c0 = 0; c0 < cols; c0 += TRANSPOSE_BLOCK) {
            size_t c1 = c0 + TRANSPOSE_BLOCK < cols ? c0 + TRANSPOSE_BLOCK : cols;
            for (r = r0; r < r1; r++)
                for (c = c0; c < c1; c++)
                    tile[c - c0][r - r0] = source_bits(src, dtype, r * cols + c);
            for (c = c0; c < c1; c++) {
                uint8_t *dst = out + (c * rows + r0) * 5;
                for (r = 0; r < r1 - r0; r++, dst += 5) {
                    nonfinite += is_nonfinite(tile[c - c0][r]);
                    put_float32(dst, tile[c - c0][r]);
                }
            }
        }
    }
    return nonfinite;
}

long long tt_encode_transposed(const void *src, int dtype, size_t rows, size_t cols, uint8_t *out)
{
    switch (dtype) {
    case TT_DTYPE_F32:
        return clamp_count(encode_transposed_as(src, TT_DTYPE_F32, rows, cols, out));
    case TT_DTYPE_F16:
        return clamp_count(encode_transposed_as(src, TT_DTYPE_F16, rows, cols, out));
    case TT_DTYPE_BF16:
        return clamp_count(encode_transposed_as(src, TT_DTYPE_BF16, rows, cols, out));
    default:
        return TT_E_BAD_ARGUMENT;
    }
}

/* Size in bytes of the msgpack number starting with tag, or 0 if it is not a number. */
static size_t number_size(uint8_t tag)
{
    if (tag <= 0x7f || tag >= 0xe0)
        return 1;
    switch (tag) {
    case 0xcc: case 0xd0:
        return 2;
    case 0xcd: case 0xd1:
        return 3;
    case 0xca: case 0xce: case 0xd2:
        return 5;
    case 0xcb: case 0xcf: case 0xd3:
        return 9;
    default:
        return 0;
    }
}

static uint64_t load_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    size_t i;
    for (i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

static float number_value(const uint8_t *p)
{
    uint8_t tag = p[0];
    uint32_t bits32;
    uint64_t bits64;
    float f;
    double d;

    if (tag <= 0x7f)
        return (float)tag;
    if (tag >= 0xe0)
        return (float)(int8_t)tag;
    switch (tag) {
    case 0xca:
        bits32 = (uint32_t)load_be(p + 1, 4);
        memcpy(&f, &bits32, 4);
        return f;
    case 0xcb:
        bits64 = load_be(p + 1, 8);
        memcpy(&d, &bits64, 8);
        return (float)d;
    case 0xcc: return (float)p[1];
    case 0xcd: return (float)(uint16_t)load_be(p + 1, 2);
    case 0xce: return (float)(uint32_t)load_be(p + 1, 4);
    case 0xcf: return (float)load_be(p + 1, 8);
    case 0xd0: return (float)(int8_t)p[1];
    case 0xd1: return (float)(int16_t)(uint16_t)load_be(p + 1, 2);
    case 0xd2: return (float)(int32_t)(uint32_t)load_be(p + 1, 4);
    default:   return (float)(int64_t)load_be(p + 1, 8);
    }
}

/* True when the 8 values starting at p are all float32 (0xca, 5 bytes each). */
static inline int eight_float32(const uint8_t *p)
{
    return (p[0] == 0xca) & (p[5] == 0xca) & (p[10] == 0xca) & (p[15] == 0xca) &
           (p[20] == 0xca) & (p[25] == 0xca) & (p[30] == 0xca) & (p[35] == 0xca);
}

/* True when the 8 bytes at p are all positive fixints (one-byte values 0..127). */
static inline int eight_fixints(const uint8_t *p)
{
    uint64_t word;
    memcpy(&word, p, 8);
    return (word & 0x8080808080808080ULL) == 0;
}

static int walk_numbers(const uint8_t *buf, size_t len, size_t max_count, float *out,
                        size_t *n_done, size_t *bytes_done)
{
    size_t pos = 0, n = 0;
    int status = TT_OK;

    while (n < max_count && pos < len) {
        if (!out) {
            /* skipping only: jump over runs of float32 values or of small ints 8 at a time */
            while (n + 8 <= max_count && pos + 40 <= len && eight_float32(buf + pos)) {
                pos += 40;
                n += 8;
            }
            while (n + 8 <= max_count && pos + 8 <= len && eight_fixints(buf + pos)) {
                pos += 8;
                n += 8;
            }
            if (n >= max_count || pos >= len)
                break;
        }
        size_t size = number_size(buf[pos]);
        if (size == 0) {
            status = TT_E_NOT_A_NUMBER;
            break;
        }
        if (size > len - pos)
            break;
        if (out)
            out[n] = number_value(buf + pos);
        pos += size;
        n++;
    }
    *n_done = n;
    *bytes_done = pos;
    return status;
}

int tt_scan_numbers(const uint8_t *buf, size_t len, size_t max_count,
                    size_t *n_done, size_t *bytes_done)
{
    return walk_numbers(buf, len, max_count, NULL, n_done, bytes_done);
}

int tt_decode_numbers(const uint8_t *buf, size_t len, size_t max_count, float *out,
                      size_t *n_done, size_t *bytes_done)
{
    return walk_numbers(buf, len, max_count, out, n_done, bytes_done);
}

int tt_rope_rows_f32(const float *src, size_t n_heads, size_t head_dim, size_t cols,
                     int inverse, float *out)
{
    size_t head, i, half = head_dim / 2, row_bytes = cols * sizeof(float);
    if (head_dim % 2 != 0)
        return TT_E_BAD_ARGUMENT;
    for (head = 0; head < n_heads; head++) {
        size_t base = head * head_dim;
        for (i = 0; i < half; i++) {
            size_t split_first = (base + i) * cols, split_second = (base + half + i) * cols;
            size_t inter_first = (base + 2 * i) * cols, inter_second = (base + 2 * i + 1) * cols;
            if (inverse) {
                memcpy(out + split_first, src + inter_first, row_bytes);
                memcpy(out + split_second, src + inter_second, row_bytes);
            } else {
                memcpy(out + inter_first, src + split_first, row_bytes);
                memcpy(out + inter_second, src + split_second, row_bytes);
            }
        }
    }
    return TT_OK;
}

int tt_transpose_f32(const float *src, size_t rows, size_t cols, float *out)
{
    size_t r0, c0, r, c;
    for (r0 = 0; r0 < rows; r0 += TRANSPOSE_BLOCK) {
        size_t r1 = r0 + TRANSPOSE_BLOCK < rows ? r0 + TRANSPOSE_BLOCK : rows;
        for (c0 = 0; c0 < cols; c0 += TRANSPOSE_BLOCK) {
            size_t c1 = c0 + TRANSPOSE_BLOCK < cols ? c0 + TRANSPOSE_BLOCK : cols;
            for (r = r0; r < r1; r++)
                for (c = c0; c < c1; c++)
                    out[c * rows + r] = src[r * cols + c];
        }
    }
    return TT_OK;
}

static inline uint16_t bf16_nearest_even(uint32_t bits)
{
    /* branch-free, so that the compiler vectorizes the loops that call it */
    uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    uint32_t nan = ((bits >> 16) & 0x8000u) | 0x7fc0u; /* a NaN keeps its sign and becomes quiet */
    return (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

#define TILE_SEGMENT 1024 /* columns converted at a time: a multiple of 32 */

/* Where the 16 values from column c (a multiple of 16) of a row land in its tile row, in values:
 * the tile, the left or right face, then face_row (the row's offset inside its faces). */
static inline size_t tiled_offset(size_t c, size_t face_row)
{
    return (c >> 5) * 1024 + ((c & 16) << 4) + face_row;
}

/* Bits of n source values from element first on, col_stride apart (or, with col_index, at
 * first + col_index[j] * col_stride), into bits; bits[n..count) zero. Returns how many were NaN or
 * infinite. */
static size_t load_bits(const void *src, int dtype, size_t first, size_t col_stride,
                        const uint32_t *col_index, size_t n, size_t count, uint32_t *bits)
{
    size_t nonfinite = 0;
    if (col_index) {
        for (size_t j = 0; j < n; j++)
            bits[j] = source_bits(src, dtype, first + (size_t)col_index[j] * col_stride);
    } else if (dtype == TT_DTYPE_F32 && col_stride == 1) {
        memcpy(bits, (const float *)src + first, n * sizeof(uint32_t));
    } else if (dtype == TT_DTYPE_BF16) {
        for (size_t j = 0; j < n; j++)
            bits[j] = (uint32_t)((const uint16_t *)src)[first + j * col_stride] << 16;
    } else {
        for (size_t j = 0; j < n; j++)
            bits[j] = source_bits(src, dtype, first + j * col_stride);
    }
    for (size_t j = 0; j < n; j++)
        nonfinite += is_nonfinite(bits[j]);
    memset(bits + n, 0, (count - n) * sizeof(uint32_t));
    return nonfinite;
}

#if defined(__SSE2__)
/* Sums of the 32-bit lanes of four counters. */
static inline size_t lane_sum(__m128i counts)
{
    uint32_t lanes[4];
    _mm_storeu_si128((__m128i *)lanes, counts);
    return (size_t)lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

/* Sixteen float32 values rounded to bfloat16 as bf16_nearest_even does it, four to a register (the
 * compiler vectorizes the scalar loop badly with SSE2 alone, and not at all for a constant 16).
 * Returns the NaN/Inf count. */
static inline size_t f32_to_bf16_x16(const float *src, uint16_t *out)
{
    const __m128i exponent = _mm_set1_epi32(0x7f800000), magnitude = _mm_set1_epi32(0x7fffffff);
    const __m128i one = _mm_set1_epi32(1), bias = _mm_set1_epi32(0x7fff);
    const __m128i sign = _mm_set1_epi32(0x8000), quiet = _mm_set1_epi32(0x7fc0);
    __m128i halves[4], count = _mm_setzero_si128();
    for (int q = 0; q < 4; q++) {
        __m128i bits = _mm_loadu_si128((const __m128i *)(src + 4 * q));
        count = _mm_sub_epi32(count, _mm_cmpeq_epi32(_mm_and_si128(bits, exponent), exponent));
        __m128i nan = _mm_cmpgt_epi32(_mm_and_si128(bits, magnitude), exponent);
        __m128i high = _mm_srli_epi32(bits, 16);
        __m128i rounded = _mm_srli_epi32(_mm_add_epi32(_mm_add_epi32(bits, bias), _mm_and_si128(high, one)), 16);
        __m128i nan_value = _mm_or_si128(_mm_and_si128(high, sign), quiet);
        __m128i value = _mm_or_si128(_mm_and_si128(nan, nan_value), _mm_andnot_si128(nan, rounded));
        halves[q] = _mm_srai_epi32(_mm_slli_epi32(value, 16), 16); /* sign-extended, so that packs is exact */
    }
    _mm_storeu_si128((__m128i *)out, _mm_packs_epi32(halves[0], halves[1]));
    _mm_storeu_si128((__m128i *)(out + 8), _mm_packs_epi32(halves[2], halves[3]));
    return lane_sum(count);
}

/* Sixteen bfloat16 values as bf16_to_bf16 keeps them, eight to a register. Returns the NaN/Inf count. */
static inline size_t bf16_to_bf16_x16(const uint16_t *src, uint16_t *out)
{
    const __m128i exponent = _mm_set1_epi16(0x7f80), magnitude = _mm_set1_epi16(0x7fff);
    const __m128i sign = _mm_set1_epi16((short)0x8000), quiet = _mm_set1_epi16(0x7fc0);
    __m128i count = _mm_setzero_si128();
    for (int h = 0; h < 2; h++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(src + 8 * h));
        count = _mm_sub_epi16(count, _mm_cmpeq_epi16(_mm_and_si128(v, exponent), exponent));
        __m128i nan = _mm_cmpgt_epi16(_mm_and_si128(v, magnitude), exponent);
        __m128i nan_value = _mm_or_si128(_mm_and_si128(v, sign), quiet);
        _mm_storeu_si128((__m128i *)(out + 8 * h),
                         _mm_or_si128(_mm_and_si128(nan, nan_value), _mm_andnot_si128(nan, v)));
    }
    return lane_sum(_mm_madd_epi16(count, _mm_set1_epi16(1)));
}
#endif

/* n float32 values rounded to bfloat16 in one pass (the hot case); returns the NaN/Inf count. */
static size_t f32_to_bf16(const float *src, size_t n, uint16_t *out)
{
    size_t nonfinite = 0, j = 0;
#if defined(__SSE2__)
    for (; j + 16 <= n; j += 16)
        nonfinite += f32_to_bf16_x16(src + j, out + j);
#endif
    for (; j < n; j++) {
        uint32_t bits;
        memcpy(&bits, src + j, sizeof bits);
        nonfinite += is_nonfinite(bits);
        out[j] = bf16_nearest_even(bits);
    }
    return nonfinite;
}

/* n bfloat16 values kept as they are (a NaN becomes its sign's quiet NaN, as rounding makes it);
 * returns the NaN/Inf count. */
static size_t bf16_to_bf16(const uint16_t *src, size_t n, uint16_t *out)
{
    size_t nonfinite = 0, j = 0;
#if defined(__SSE2__)
    for (; j + 16 <= n; j += 16)
        nonfinite += bf16_to_bf16_x16(src + j, out + j);
#endif
    for (; j < n; j++) {
        uint16_t v = src[j];
        nonfinite += (v & 0x7f80u) == 0x7f80u;
        out[j] = (uint16_t)((v & 0x7fffu) > 0x7f80u ? (v & 0x8000u) | 0x7fc0u : v);
    }
    return nonfinite;
}

/* One output row (r within its tile row), converted a segment of columns at a time; each 16
 * columns of it are one row of a face, copied into place. Columns past cols become zeros. */
static size_t tile_row(const void *src, int dtype, size_t first, size_t col_stride,
                       const uint32_t *col_index, size_t cols, size_t padded_cols, size_t r,
                       int out_dtype, uint8_t *tile_base)
{
    uint32_t bits[TILE_SEGMENT];
    uint16_t halves[TILE_SEGMENT];
    size_t nonfinite = 0;
    size_t face_row = ((r & 16) << 5) + ((r & 15) << 4);
    for (size_t c0 = 0; c0 < padded_cols; c0 += TILE_SEGMENT) {
        size_t count = padded_cols - c0 < TILE_SEGMENT ? padded_cols - c0 : TILE_SEGMENT;
        size_t n = c0 >= cols ? 0 : (cols - c0 < count ? cols - c0 : count);
        size_t at = col_index ? first : first + c0 * col_stride;
        const uint32_t *segment_index = col_index ? col_index + c0 : NULL;
        int plain = col_stride == 1 && !col_index && n == count && out_dtype == TT_OUT_BF16;
        if (plain && dtype == TT_DTYPE_F32) {
            nonfinite += f32_to_bf16((const float *)src + at, count, halves);
        } else if (plain && dtype == TT_DTYPE_BF16) {
            nonfinite += bf16_to_bf16((const uint16_t *)src + at, count, halves);
        } else {
            nonfinite += load_bits(src, dtype, at, col_stride, segment_index, n, count, bits);
            if (out_dtype == TT_OUT_BF16) {
                for (size_t j = 0; j < count; j++)
                    halves[j] = bf16_nearest_even(bits[j]);
            }
        }
        /* constant sizes, so that the copies are inlined */
        for (size_t g = 0; g < count; g += 16) {
            if (out_dtype == TT_OUT_BF16)
                memcpy(tile_base + tiled_offset(c0 + g, face_row) * 2, halves + g, 16 * 2);
            else
                memcpy(tile_base + tiled_offset(c0 + g, face_row) * 4, bits + g, 16 * 4);
        }
    }
    return nonfinite;
}

#if defined(__SSE2__)
/* Eight 8-value rows of 16-bit values (rows[t] at src + offsets[t]) transposed into eight output rows
 * dst[t * stride ..]: three rounds of interleaves. */
static inline void transpose8_u16(const uint16_t *src, const size_t *offsets, uint16_t *dst, size_t stride)
{
    __m128i a[8], t[8], u[8];
    for (int i = 0; i < 8; i++)
        a[i] = _mm_loadu_si128((const __m128i *)(src + offsets[i]));
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm_unpacklo_epi16(a[2 * i], a[2 * i + 1]);
        t[2 * i + 1] = _mm_unpackhi_epi16(a[2 * i], a[2 * i + 1]);
    }
    u[0] = _mm_unpacklo_epi32(t[0], t[2]);
    u[1] = _mm_unpackhi_epi32(t[0], t[2]);
    u[2] = _mm_unpacklo_epi32(t[1], t[3]);
    u[3] = _mm_unpackhi_epi32(t[1], t[3]);
    u[4] = _mm_unpacklo_epi32(t[4], t[6]);
    u[5] = _mm_unpackhi_epi32(t[4], t[6]);
    u[6] = _mm_unpacklo_epi32(t[5], t[7]);
    u[7] = _mm_unpackhi_epi32(t[5], t[7]);
    for (int i = 0; i < 4; i++) {
        _mm_storeu_si128((__m128i *)(dst + (2 * i) * stride), _mm_unpacklo_epi64(u[i], u[i + 4]));
        _mm_storeu_si128((__m128i *)(dst + (2 * i + 1) * stride), _mm_unpackhi_epi64(u[i], u[i + 4]));
    }
}
#endif

/* Where the tile row holding output row r starts in out (rows of padded_cols values of width bytes). */
static inline uint8_t *tile_row_start(void *out, size_t r, size_t padded_cols, size_t width)
{
    return (uint8_t *)out + (r / 32) * 32 * padded_cols * width;
}

/* The hot case of tile_transposed_rows: a 16x16 block of float32 or bfloat16 source values (16 source
 * rows of 16 contiguous values from first on) to bfloat16. Each source run is rounded as it is read
 * (one vectorizable pass), then the 16-bit block is transposed into the sixteen output rows' face rows.
 * Returns the NaN/Inf count. */
static size_t bf16_transposed_face_rows(const void *src, int dtype, size_t first, size_t src_row_len, size_t r,
                                        size_t c0, uint8_t *tile_base)
{
    uint16_t rounded[16][16], block[16][16];
    size_t nonfinite = 0;
    for (size_t j = 0; j < 16; j++) {
        if (dtype == TT_DTYPE_F32)
            nonfinite += f32_to_bf16((const float *)src + first + j * src_row_len, 16, rounded[j]);
        else
            nonfinite += bf16_to_bf16((const uint16_t *)src + first + j * src_row_len, 16, rounded[j]);
    }
#if defined(__SSE2__)
    static const size_t upper[8] = {0, 16, 32, 48, 64, 80, 96, 112};
    static const size_t lower[8] = {128, 144, 160, 176, 192, 208, 224, 240};
    transpose8_u16(&rounded[0][0], upper, &block[0][0], 16);
    transpose8_u16(&rounded[0][8], upper, &block[8][0], 16);
    transpose8_u16(&rounded[0][0], lower, &block[0][8], 16);
    transpose8_u16(&rounded[0][8], lower, &block[8][8], 16);
#else
    for (size_t i = 0; i < 16; i++)
        for (size_t j = 0; j < 16; j++)
            block[i][j] = rounded[j][i];
#endif
    for (size_t i = 0; i < 16; i++) {
        size_t face_row = (((r + i) & 16) << 5) + (((r + i) & 15) << 4);
        memcpy(tile_base + tiled_offset(c0, face_row) * 2, block[i], sizeof block[i]);
    }
    return nonfinite;
}

/* Sixteen output rows r..r+15 (r a multiple of 16) of a transpose, from output column c0 on: output
 * row r+i is source column first_col+i, each 16x16 block of output read as 16 source row pieces of
 * 16 contiguous values and written as one face. Columns past cols become zeros. */
static size_t tile_transposed_rows(const void *src, int dtype, size_t first_col, size_t src_row_len,
                                   size_t cols, size_t padded_cols, size_t r, int out_dtype,
                                   uint8_t *tile_base, size_t c0)
{
    uint32_t block[16][16];
    uint16_t halves[16];
    size_t nonfinite = 0;
    for (; c0 < padded_cols; c0 += 16) {
        for (size_t j = 0; j < 16; j++) {
            size_t c = c0 + j;
            for (size_t i = 0; i < 16; i++) {
                uint32_t bits = c < cols ? source_bits(src, dtype, c * src_row_len + first_col + i) : 0;
                nonfinite += c < cols && is_nonfinite(bits);
                block[i][j] = bits;
            }
        }
        for (size_t i = 0; i < 16; i++) {
            size_t face_row = (((r + i) & 16) << 5) + (((r + i) & 15) << 4);
            size_t at = tiled_offset(c0, face_row);
            if (out_dtype == TT_OUT_BF16) {
                for (size_t j = 0; j < 16; j++)
                    halves[j] = bf16_nearest_even(block[i][j]);
                memcpy(tile_base + at * 2, halves, sizeof halves);
            } else {
                memcpy(tile_base + at * 4, block[i], sizeof block[i]);
            }
        }
    }
    return nonfinite;
}

/* How many rows from k on (a multiple of 16) can go through transposed_bands: a transpose, output
 * rows starting on a face boundary, and source columns that follow one another. */
static size_t transposed_run(const uint32_t *row_index, size_t k, size_t n_rows, size_t row_stride,
                             size_t col_stride, size_t first_row)
{
    if (row_stride != 1 || col_stride == 1 || (first_row + k) % 16)
        return 0;
    size_t n = 1;
    while (k + n < n_rows && row_index[k + n] == row_index[k] + n)
        n++;
    return n / 16 * 16;
}

/* n_rows output rows (a multiple of 16) of a transpose from output row r on (a multiple of 16), whose
 * source columns start at first_col. The 16x16 blocks of bfloat16 are taken 16 source rows at a
 * time, across every band of 16 output rows: the source is read along its rows, where a band at a
 * time would step a whole source row (often more than a page) between two cache lines. */
static size_t transposed_bands(const void *src, int dtype, size_t first_col, size_t src_row_len, size_t cols,
                               size_t padded_cols, size_t r, size_t n_rows, int out_dtype, void *out)
{
    size_t width = out_dtype == TT_OUT_BF16 ? 2 : 4;
    size_t nonfinite = 0, c0 = 0;
    if (out_dtype == TT_OUT_BF16 && (dtype == TT_DTYPE_F32 || dtype == TT_DTYPE_BF16)) {
        for (; c0 + 16 <= cols; c0 += 16) {
            for (size_t b = 0; b < n_rows; b += 16)
                nonfinite += bf16_transposed_face_rows(src, dtype, c0 * src_row_len + first_col + b, src_row_len,
                                                       r + b, c0, tile_row_start(out, r + b, padded_cols, width));
        }
    }
    for (size_t b = 0; b < n_rows; b += 16)
        nonfinite += tile_transposed_rows(src, dtype, first_col + b, src_row_len, cols, padded_cols, r + b,
                                          out_dtype, tile_row_start(out, r + b, padded_cols, width), c0);
    return nonfinite;
}

long long tt_tile(const void *src, int dtype, const uint32_t *row_index, size_t n_rows,
                  size_t row_stride, size_t col_stride, const uint32_t *col_index, size_t cols,
                  size_t first_row, size_t padded_cols, int out_dtype, void *out)
{
    if (!valid_dtype(dtype) || (out_dtype != TT_OUT_BF16 && out_dtype != TT_OUT_F32)
        || padded_cols % 32 || cols > padded_cols)
        return TT_E_BAD_ARGUMENT;
    size_t width = out_dtype == TT_OUT_BF16 ? 2 : 4;
    size_t nonfinite = 0;
    for (size_t k = 0; k < n_rows;) {
        size_t r = first_row + k;
        size_t run = col_index ? 0 : transposed_run(row_index, k, n_rows, row_stride, col_stride, first_row);
        if (run) {
            nonfinite += transposed_bands(src, dtype, row_index[k], col_stride, cols, padded_cols, r, run, out_dtype,
                                          out);
            k += run;
        } else {
            nonfinite += tile_row(src, dtype, (size_t)row_index[k] * row_stride, col_stride, col_index, cols,
                                  padded_cols, r & 31, out_dtype, tile_row_start(out, r, padded_cols, width));
            k += 1;
        }
    }
    return clamp_count(nonfinite);
}

/* float32 bits to float16 bits, rounded to nearest even; overflow becomes infinity, a NaN stays a
 * quiet NaN with its sign and the top of its payload. */
static inline uint16_t f16_nearest_even(uint32_t bits)
{
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
    if (magnitude >= 0x477ff000u) /* 65520 and above round to infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (magnitude >= 0x38800000u) { /* a normal half: rebias the exponent, round off 13 bits */
        uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
        return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));
    }
    /* a subnormal half (or zero): adding 0.5 lines the half's last bit up with the float's, and the
     * addition itself rounds to nearest even */
    float value, half = 0.5f;
    uint32_t sum;
    memcpy(&value, &magnitude, sizeof value);
    value += half;
    memcpy(&sum, &value, sizeof sum);
    return (uint16_t)(sign | (sum - 0x3f000000u));
}

static inline size_t source_offset(int tiled, size_t src_cols, size_t r, size_t c)
{
    if (!tiled)
        return r * src_cols + c;
    return (r >> 5) * 32 * src_cols + (c >> 5) * 1024 + ((r & 16) << 5) + ((c & 16) << 4) + ((r & 15) << 4)
           + (c & 15);
}

/* float32 bits of source element i; 0 when a msgpack value is not a float32. */
static inline int fetch_bits(const void *src, int dtype, size_t i, uint32_t *bits)
{
    if (dtype == TT_DTYPE_MSGPACK_F32) {
        const uint8_t *p = (const uint8_t *)src + 5 * i;
        *bits = ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | p[4];
        return p[0] == 0xca;
    }
    *bits = source_bits(src, dtype, i);
    return 1;
}

static inline void store_bits(void *out, int out_dtype, size_t j, uint32_t bits)
{
    if (out_dtype == TT_OUT_F32)
        memcpy((uint8_t *)out + 4 * j, &bits, 4);
    else if (out_dtype == TT_OUT_BF16)
        ((uint16_t *)out)[j] = bf16_nearest_even(bits);
    else
        ((uint16_t *)out)[j] = f16_nearest_even(bits);
}

/* Output value j from source element i; 0 when a msgpack value is not a float32. raw16: the source's
 * 16-bit dtype is the output's, so the bits are copied. */
static inline int move_value(const void *src, int dtype, size_t i, int raw16, void *out, int out_dtype,
                             size_t j)
{
    uint32_t bits;
    if (raw16) {
        ((uint16_t *)out)[j] = ((const uint16_t *)src)[i];
        return 1;
    }
    if (!fetch_bits(src, dtype, i, &bits))
        return 0;
    store_bits(out, out_dtype, j, bits);
    return 1;
}

/* n source elements from first on, one after another, to output values out_first..; one loop per
 * source dtype so that the per-value work has no branch on it. Returns 0 on a non-float32 msgpack
 * value. */
static int move_run(const void *src, int dtype, size_t first, size_t n, int raw16, void *out, int out_dtype,
                    size_t out_first)
{
    if (raw16) {
        memcpy((uint16_t *)out + out_first, (const uint16_t *)src + first, n * 2);
        return 1;
    }
    if (dtype == TT_DTYPE_F32 && out_dtype == TT_OUT_F32) {
        memcpy((float *)out + out_first, (const float *)src + first, n * 4);
        return 1;
    }
    switch (dtype) {
    case TT_DTYPE_MSGPACK_F32: {
        const uint8_t *p = (const uint8_t *)src + 5 * first;
        int ok = 1;
        for (size_t j = 0; j < n; j++, p += 5) {
            ok &= p[0] == 0xca;
            store_bits(out, out_dtype, out_first + j,
                       ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | p[4]);
        }
        return ok;
    }
    case TT_DTYPE_BF16:
        for (size_t j = 0; j < n; j++)
            store_bits(out, out_dtype, out_first + j, (uint32_t)((const uint16_t *)src)[first + j] << 16);
        return 1;
    case TT_DTYPE_F32:
        for (size_t j = 0; j < n; j++) {
            uint32_t bits;
            memcpy(&bits, (const float *)src + first + j, 4);
            store_bits(out, out_dtype, out_first + j, bits);
        }
        return 1;
    default:
        for (size_t j = 0; j < n; j++)
            store_bits(out, out_dtype, out_first + j, source_bits(src, dtype, first + j));
        return 1;
    }
}

#define GATHER_BLOCK 16

/* The float32 bits of sixteen msgpack values from p on; 0 when one of them is not a float32 (0xca). */
static inline int sixteen_msgpack_f32(const uint8_t *p, uint32_t *bits)
{
    unsigned tags = 0;
    for (size_t q = 0; q < 16; q++, p += 5) {
        uint32_t word;
        memcpy(&word, p + 1, 4);
        bits[q] = to_big_endian(word);
        tags |= p[0] ^ 0xcau;
    }
    return tags == 0;
}

/* Sixteen values (one face row of a tile) from source element at to output values j.. in the hot
 * dtype pairs with constant-size copies; the others through move_run. */
static inline int move_sixteen(const void *src, int dtype, size_t at, int raw16, void *out, int out_dtype, size_t j)
{
    if (raw16) {
        memcpy((uint16_t *)out + j, (const uint16_t *)src + at, 16 * 2);
        return 1;
    }
    if (dtype == TT_DTYPE_BF16 && out_dtype == TT_OUT_F32) {
        uint32_t bits[16];
        for (size_t q = 0; q < 16; q++)
            bits[q] = (uint32_t)((const uint16_t *)src)[at + q] << 16;
        memcpy((uint32_t *)out + j, bits, sizeof bits);
        return 1;
    }
    if (dtype == TT_DTYPE_F32 && out_dtype == TT_OUT_F32) {
        memcpy((float *)out + j, (const float *)src + at, 16 * 4);
        return 1;
    }
    return move_run(src, dtype, at, 16, raw16, out, out_dtype, j);
}

/* Source row r of a tiled source, its first cols values, to output values at..: each 32 columns are
 * two face rows (left and right face of a tile) at fixed distances from the row's start. */
static int untile_row(const void *src, int dtype, size_t src_cols, size_t r, size_t cols, int raw16, void *out,
                      int out_dtype, size_t at)
{
    size_t row_start = (r >> 5) * 32 * src_cols + ((r & 16) << 5) + ((r & 15) << 4);
    size_t whole = cols / 16 * 16;
    int ok = 1;
    for (size_t c = 0; c < whole; c += 16)
        ok &= move_sixteen(src, dtype, row_start + (c >> 5) * 1024 + ((c & 16) << 4), raw16, out, out_dtype, at + c);
    if (whole < cols)
        ok &= move_run(src, dtype, row_start + (whole >> 5) * 1024 + ((whole & 16) << 4), cols - whole, raw16, out,
                       out_dtype, at + whole);
    return ok;
}

#define TRANSPOSE_RUN 64 /* output rows a transpose writes at once: 4 face rows of a tile, 5 cache lines of msgpack */

/* True when output rows k..k+TRANSPOSE_RUN-1 are consecutive source columns j.. (in a tiled source j a
 * multiple of 16, so that each 16 of them lie side by side in a face row). */
static int consecutive_columns(const uint32_t *row_index, size_t k, size_t n_rows, int tiled)
{
    if (k + TRANSPOSE_RUN > n_rows || (tiled && row_index[k] % 16))
        return 0;
    for (size_t i = 1; i < TRANSPOSE_RUN; i++) {
        if (row_index[k + i] != row_index[k] + i)
            return 0;
    }
    return 1;
}

#if defined(__SSE2__)
/* transpose_run for 16-bit values copied as they are, eight by eight with SSE2. */
static void transpose_run_raw16(const uint16_t *src, int tiled, size_t src_cols, size_t j,
                                const uint32_t *col_index, size_t cols, uint16_t *out)
{
    size_t offsets[8];
    for (size_t c0 = 0; c0 < cols; c0 += 8) {
        size_t n = cols - c0 < 8 ? cols - c0 : 8;
        for (size_t q0 = 0; q0 < TRANSPOSE_RUN; q0 += 8) {
            for (size_t i = 0; i < n; i++)
                offsets[i] = source_offset(tiled, src_cols, col_index ? col_index[c0 + i] : c0 + i, j + q0);
            if (n == 8) {
                transpose8_u16(src, offsets, out + q0 * cols + c0, cols);
                continue;
            }
            for (size_t q = 0; q < 8; q++) {
                for (size_t i = 0; i < n; i++)
                    out[(q0 + q) * cols + c0 + i] = src[offsets[i] + q];
            }
        }
    }
}
#endif

/* TRANSPOSE_RUN output rows of a transpose at once: source columns j.. of each of 16 source rows are read
 * as runs of 16 values into a block, which is written out column by column. */
static int transpose_run(const void *src, int dtype, int tiled, size_t src_cols, size_t j,
                         const uint32_t *col_index, size_t cols, int raw16, int out_dtype, uint8_t *out)
{
    uint32_t bits[GATHER_BLOCK][TRANSPOSE_RUN];
    uint16_t halves[GATHER_BLOCK][TRANSPOSE_RUN];
    size_t width = out_dtype == TT_OUT_F32 ? 4 : 2;
    int ok = 1;
#if defined(__SSE2__)
    if (raw16) {
        transpose_run_raw16((const uint16_t *)src, tiled, src_cols, j, col_index, cols, (uint16_t *)out);
        return 1;
    }
#endif
    for (size_t c0 = 0; c0 < cols; c0 += GATHER_BLOCK) {
        size_t n = cols - c0 < GATHER_BLOCK ? cols - c0 : GATHER_BLOCK;
        for (size_t i = 0; i < n; i++) {
            size_t r = col_index ? col_index[c0 + i] : c0 + i;
            for (size_t g = 0; g < TRANSPOSE_RUN; g += 16) {
                size_t at = source_offset(tiled, src_cols, r, j + g);
                if (raw16) {
                    memcpy(&halves[i][g], (const uint16_t *)src + at, 16 * 2);
                } else if (dtype == TT_DTYPE_F32) {
                    memcpy(&bits[i][g], (const float *)src + at, 16 * 4);
                } else if (dtype == TT_DTYPE_BF16) {
                    for (size_t q = 0; q < 16; q++)
                        bits[i][g + q] = (uint32_t)((const uint16_t *)src)[at + q] << 16;
                } else if (dtype == TT_DTYPE_MSGPACK_F32) {
                    ok &= sixteen_msgpack_f32((const uint8_t *)src + 5 * at, &bits[i][g]);
                } else {
                    for (size_t q = 0; q < 16; q++)
                        ok &= fetch_bits(src, dtype, at + q, &bits[i][g + q]);
                }
            }
        }
        for (size_t q = 0; q < TRANSPOSE_RUN; q++) {
            uint8_t *row = out + (q * cols + c0) * width;
            if (raw16) {
                for (size_t i = 0; i < n; i++)
                    ((uint16_t *)row)[i] = halves[i][q];
            } else if (out_dtype == TT_OUT_F32) {
                for (size_t i = 0; i < n; i++)
                    memcpy(row + 4 * i, &bits[i][q], 4);
            } else if (out_dtype == TT_OUT_BF16) {
                for (size_t i = 0; i < n; i++)
                    ((uint16_t *)row)[i] = bf16_nearest_even(bits[i][q]);
            } else {
                for (size_t i = 0; i < n; i++)
                    ((uint16_t *)row)[i] = f16_nearest_even(bits[i][q]);
            }
        }
    }
    return ok;
}

int tt_gather(const void *src, int dtype, int tiled, size_t src_cols, const uint32_t *row_index,
              size_t n_rows, const uint32_t *col_index, size_t cols, int transposed, int out_dtype,
              void *out)
{
    if ((!valid_dtype(dtype) && dtype != TT_DTYPE_MSGPACK_F32)
        || (out_dtype != TT_OUT_F32 && out_dtype != TT_OUT_BF16 && out_dtype != TT_OUT_F16)
        || (tiled && src_cols % 32))
        return TT_E_BAD_ARGUMENT;
    int raw16 = (dtype == TT_DTYPE_BF16 && out_dtype == TT_OUT_BF16)
                || (dtype == TT_DTYPE_F16 && out_dtype == TT_OUT_F16);
    int ok = 1;
    if (!transposed) {
        for (size_t k = 0; k < n_rows; k++) {
            size_t r = row_index[k], at = k * cols;
            if (col_index) {
                for (size_t c = 0; c < cols; c++)
                    ok &= move_value(src, dtype, source_offset(tiled, src_cols, r, col_index[c]), raw16, out,
                                     out_dtype, at + c);
            } else if (!tiled) {
                ok &= move_run(src, dtype, r * src_cols, cols, raw16, out, out_dtype, at);
            } else {
                ok &= untile_row(src, dtype, src_cols, r, cols, raw16, out, out_dtype, at);
            }
        }
        return ok ? TT_OK : TT_E_NOT_A_NUMBER;
    }
    /* a transpose, in 16x16 blocks so that both sides are read and written a cache line at a time */
    for (size_t k0 = 0; k0 < n_rows;) {
        if (consecutive_columns(row_index, k0, n_rows, tiled)) {
            ok &= transpose_run(src, dtype, tiled, src_cols, row_index[k0], col_index, cols, raw16, out_dtype,
                                (uint8_t *)out + k0 * cols * (out_dtype == TT_OUT_F32 ? 4 : 2));
            k0 += TRANSPOSE_RUN;
            continue;
        }
        size_t k1 = n_rows - k0 < GATHER_BLOCK ? n_rows : k0 + GATHER_BLOCK;
        for (size_t c0 = 0; c0 < cols; c0 += GATHER_BLOCK) {
            size_t c1 = cols - c0 < GATHER_BLOCK ? cols : c0 + GATHER_BLOCK;
            for (size_t k = k0; k < k1; k++) {
                for (size_t c = c0; c < c1; c++) {
                    size_t source_row = col_index ? col_index[c] : c;
                    ok &= move_value(src, dtype, source_offset(tiled, src_cols, source_row, row_index[k]), raw16,
                                     out, out_dtype, k * cols + c);
                }
            }
        }
        k0 = k1;
    }
    return ok ? TT_OK : TT_E_NOT_A_NUMBER;
}
