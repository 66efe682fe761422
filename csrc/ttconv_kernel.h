/* Flat C API of the ttconv kernel. Every function returns TT_OK (the tt_encode*
 * functions: the number of NaN or infinite values met) or a negative TT_E* code;
 * callers check shapes and buffer sizes before calling. This file
 * is also the cffi cdef, so it holds only declarations cffi can parse. */

#define TT_OK 0
#define TT_E_TRUNCATED -1
#define TT_E_NOT_A_NUMBER -2
#define TT_E_BAD_ARGUMENT -3

#define TT_DTYPE_F32 0
#define TT_DTYPE_F16 1
#define TT_DTYPE_BF16 2

/* Encode n source values (F32, F16 or BF16) as msgpack float32: 0xca + 4 big-endian bytes. */
long long tt_encode(const void *src, int dtype, size_t n, uint8_t *out);

/* Interleave the rows of each head (new row 2i = old row i, new row 2i+1 = old row
 * head_dim/2 + i) of an [n_heads * head_dim, cols] matrix while encoding it. */
long long tt_encode_rope(const void *src, int dtype, size_t n_heads, size_t head_dim,
                         size_t cols, uint8_t *out);

/* Encode the transpose of a [rows, cols] matrix: cols * rows values, row-major. */
long long tt_encode_transposed(const void *src, int dtype, size_t rows, size_t cols, uint8_t *out);

/* Walk msgpack numbers (ints, float32, float64) from buf. Stops after max_count
 * values or before a value that does not fit in len bytes; reports how many values
 * and bytes were consumed. TT_E_NOT_A_NUMBER when a value is not a number. */
int tt_scan_numbers(const uint8_t *buf, size_t len, size_t max_count,
                    size_t *n_done, size_t *bytes_done);

/* Like tt_scan_numbers, also storing each value as float32 in out. */
int tt_decode_numbers(const uint8_t *buf, size_t len, size_t max_count, float *out,
                      size_t *n_done, size_t *bytes_done);

/* Row permutation of tt_encode_rope on float32 data; inverse != 0 undoes it. */
int tt_rope_rows_f32(const float *src, size_t n_heads, size_t head_dim, size_t cols,
                     int inverse, float *out);

/* Cache-blocked transpose of a [rows, cols] float32 matrix into [cols, rows]. */
int tt_transpose_f32(const float *src, size_t rows, size_t cols, float *out);

#define TT_OUT_BF16 0
#define TT_OUT_F32 1

/* Write rows of a source matrix in ttnn's TILE layout: 32x32 tiles in row-major tile
 * order, each four 16x16 faces (top-left, top-right, bottom-left, bottom-right), each
 * face row-major; as bfloat16 rounded to nearest even (TT_OUT_BF16) or float32.
 * out starts at a tile row; output row first_row + k (k < n_rows) is source row
 * row_index[k], whose element c lies at element row_index[k] * row_stride + c * col_stride
 * of src (a transpose: row_stride 1, col_stride = the source's row length), or, when
 * col_index is not NULL, at row_index[k] * row_stride + col_index[c] * col_stride; its
 * columns cols..padded_cols (a multiple of 32) are zeros. Other rows are not touched. */
long long tt_tile(const void *src, int dtype, const uint32_t *row_index, size_t n_rows,
                  size_t row_stride, size_t col_stride, const uint32_t *col_index, size_t cols,
                  size_t first_row, size_t padded_cols, int out_dtype, void *out);

#define TT_OUT_F16 2
/* Source only: msgpack float32 values, each 0xca and 4 big-endian bytes. */
#define TT_DTYPE_MSGPACK_F32 3

/* The inverse of tt_tile and of the row/column moves of a conversion: an [n_rows, cols]
 * row-major output of out_dtype (TT_OUT_F32, TT_OUT_BF16 or TT_OUT_F16, rounded to nearest
 * even) from a source matrix whose rows hold src_cols values, stored row-major (tiled == 0) or
 * in ttnn's TILE layout (tiled != 0; src_cols a multiple of 32, the source starting at a tile
 * row). Output row k is source row row_index[k] and its column c source column col_index[c]
 * (c when col_index is NULL); with transposed != 0, output row k is source column row_index[k]
 * and its column c source row col_index[c] (or c). A value whose dtype is the output's is
 * copied bit for bit. Returns TT_OK, or TT_E_NOT_A_NUMBER when a TT_DTYPE_MSGPACK_F32 source
 * value is not a msgpack float32. */
int tt_gather(const void *src, int dtype, int tiled, size_t src_cols, const uint32_t *row_index,
              size_t n_rows, const uint32_t *col_index, size_t cols, int transposed, int out_dtype,
              void *out);
