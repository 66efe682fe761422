"""The one module that knows which backend runs the hot loops.

The C kernel (ttconv._kernel, built with cffi from csrc/) is used when it loads;
otherwise the same operations run as jit-compiled jax.numpy (ttconv.fallback), and
msgpack numbers are scanned with numpy. TTCONV_BACKEND=c or TTCONV_BACKEND=jax forces
one. jax is imported only when the fallback first encodes, because importing it takes
longer than most conversions.

Source arrays are float32 (F32), float16 (F16) or uint16 holding bfloat16 bits (BF16).
"""
import concurrent.futures
import os

import numpy as np

from . import bf16
from .errors import BackendError
from .interrupts import import_held

BACKEND_ENV = "TTCONV_BACKEND"

_DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.uint16): 2}
_HERE = os.path.dirname(os.path.abspath(__file__))


def _installed_kernel_elsewhere():
    """Folder of an installed ttconv that has the compiled kernel, other than this one, or None."""
    import importlib.metadata

    for dist in importlib.metadata.distributions(name="ttconv"):
        for file in dist.files or ():
            if file.name.startswith("_kernel.") and file.name.endswith((".so", ".pyd")):
                path = os.path.abspath(dist.locate_file(file))
                if os.path.dirname(path) != _HERE and os.path.exists(path):
                    return os.path.dirname(path)
    return None


def _why_no_kernel(exc):
    installed = _installed_kernel_elsewhere()
    if installed:
        return (f"running the source tree {_HERE}, which has no compiled kernel and hides the installed "
                f"ttconv in {installed}; run ttconv from another folder, or build the kernel here with "
                "`pip install -e .`")
    return (f"the C kernel is not built ({exc}); reinstall with a C compiler: "
            "`pip install --force-reinstall --no-deps ttconv`, or `pip install -e .` in a source tree")


def _choose_backend():
    """(backend name, kernel module or None, why the fallback runs or None)."""
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced not in ("", "c", "jax"):
        raise BackendError(f"{BACKEND_ENV} must be 'c' or 'jax', not {forced!r}")
    if forced == "jax":
        return "jax", None, None
    try:
        kernel = import_held("ttconv._kernel")
    except ImportError as exc:
        if forced == "c":
            raise BackendError(f"{BACKEND_ENV}=c but {_why_no_kernel(exc)}") from None
        return "jax", None, _why_no_kernel(exc)
    return "c", kernel, None


BACKEND, _kernel, FALLBACK_REASON = _choose_backend()


_HELPER = []


def helper():
    """The one helper thread that takes part of a large kernel call while the caller does the rest (the
    kernel releases the GIL); None on a single core."""
    if not _HELPER:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        _HELPER.append(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ttconv-kernel")
                       if cores > 1 else None)
    return _HELPER[0]


PAGE = 4096


def aligned_empty(nbytes):
    """An uninitialised uint8 array of nbytes that starts on a page boundary (as O_DIRECT needs, and
    more than the jax fallback needs to hand it to jax without a copy)."""
    raw = np.empty(nbytes + PAGE, dtype=np.uint8)
    return raw[-raw.ctypes.data % PAGE:][:nbytes]


def _dtype_code(array):
    try:
        return _DTYPE_CODES[array.dtype]
    except KeyError:
        raise ValueError(f"unsupported source dtype {array.dtype}") from None


def _check_rope(array, n_heads):
    if array.ndim != 2 or n_heads <= 0 or array.shape[0] % n_heads:
        raise ValueError(f"cannot split {array.shape} rows into {n_heads} heads")
    head_dim = array.shape[0] // n_heads
    if head_dim % 2:
        raise ValueError(f"head dimension {head_dim} is odd")
    return head_dim


def _fallback():
    from . import fallback

    return fallback


def _out_buffer(n_values, out):
    if out is None:
        return np.empty(n_values * 5, dtype=np.uint8)
    if out.dtype != np.uint8 or out.ndim != 1 or out.size < n_values * 5:
        raise ValueError(f"output buffer must be uint8 with room for {n_values * 5} bytes")
    return out[: n_values * 5]


def _check_bytes(buf):
    if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.ndim != 1 or not buf.flags.c_contiguous:
        raise ValueError("expected a contiguous 1-D uint8 array of msgpack bytes")


def _ptr(array, ctype="uint8_t *"):
    # The pointer stays valid while the caller holds the numpy array that owns the memory.
    return _kernel.ffi.cast(ctype, _kernel.ffi.from_buffer(array))


def encode(array, out=None):
    """msgpack float32 encoding (0xca + big-endian) of a source array: (uint8 buffer, NaN/Inf count).

    out, when given, is a uint8 buffer with room for the encoding; the C kernel always
    encodes into it, the fallback when the values take several chunks."""
    array = np.ascontiguousarray(array)
    _dtype_code(array)
    out = _out_buffer(array.size, out)
    if _kernel is None:
        return _fallback().encode(array, _dtype_code(array), out)
    return out, _kernel.lib.tt_encode(_ptr(array), _dtype_code(array), array.size, _ptr(out))


def encode_rope(array, n_heads, out=None):
    """Encode a [n_heads * head_dim, cols] matrix with each head's rows interleaved: (buffer, NaN/Inf count)."""
    array = np.ascontiguousarray(array)
    head_dim = _check_rope(array, n_heads)
    out = _out_buffer(array.size, out)
    if _kernel is None:
        return _fallback().encode_rope(array, _dtype_code(array), n_heads, out)
    nonfinite = _kernel.lib.tt_encode_rope(
        _ptr(array), _dtype_code(array), n_heads, head_dim, array.shape[1], _ptr(out)
    )
    return out, nonfinite


def encode_transposed(array, out=None):
    """Encode the transpose of a 2-D source matrix: (buffer, NaN/Inf count)."""
    array = np.ascontiguousarray(array)
    if array.ndim != 2:
        raise ValueError(f"transpose needs a matrix, got shape {array.shape}")
    out = _out_buffer(array.size, out)
    if _kernel is None:
        return _fallback().encode_transposed(array, _dtype_code(array), out)
    nonfinite = _kernel.lib.tt_encode_transposed(
        _ptr(array), _dtype_code(array), array.shape[0], array.shape[1], _ptr(out)
    )
    return out, nonfinite


OUT_DTYPES = {"bf16": (0, 2), "f32": (1, 4)}  # TT_OUT_* code, bytes per value
TILE = 32


def tile(array, out, padded_cols, rows=None, first_row=0, transposed=False, out_dtype="bf16", columns=None):
    """Write rows of a 2-D source array (or of its transpose) into out in ttnn's TILE layout
    (32x32 tiles of four 16x16 faces) as bfloat16 rounded to nearest even or float32, in one pass.

    out is a uint8 buffer that starts at a tile row; output row first_row + k is source row
    rows[k] (all rows in order when rows is None), column c of it the source's column
    columns[c] (all columns in order when columns is None), its columns up to padded_cols
    zeros. Rows of out not named are left as they are. Returns the NaN/Inf count of the rows
    written."""
    array = np.ascontiguousarray(array)
    code = _dtype_code(array)
    if array.ndim != 2:
        raise ValueError(f"tiling needs a matrix, got shape {array.shape}")
    n_source, cols = array.shape[::-1] if transposed else array.shape
    rows = np.arange(n_source, dtype=np.uint32) if rows is None else np.ascontiguousarray(rows, dtype=np.uint32)
    if rows.size and int(rows.max()) >= n_source:
        raise ValueError(f"row {int(rows.max())} is outside the source's {n_source} rows")
    if columns is not None:
        columns = np.ascontiguousarray(columns, dtype=np.uint32)
        if columns.size and int(columns.max()) >= cols:
            raise ValueError(f"column {int(columns.max())} is outside the source's {cols} columns")
        cols = columns.size
    out_code, width = OUT_DTYPES[out_dtype]
    if padded_cols % TILE or cols > padded_cols:
        raise ValueError(f"padded_cols {padded_cols} must be a multiple of {TILE} and at least {cols}")
    tile_rows = -(-(first_row + rows.size) // TILE)
    if out.dtype != np.uint8 or out.ndim != 1 or out.size < tile_rows * TILE * padded_cols * width:
        raise ValueError(f"output buffer must be uint8 with room for {tile_rows} tile rows")
    if not rows.size:
        return 0
    if _kernel is None:
        return _fallback().tile(array, code, rows, _in_order(rows), first_row, padded_cols, transposed, out_code == 1,
                                out, columns)
    row_stride, col_stride = (1, array.shape[1]) if transposed else (array.shape[1], 1)
    column_index = _kernel.ffi.NULL if columns is None else _ptr(columns, "uint32_t *")
    return _kernel.lib.tt_tile(_ptr(array), code, _ptr(rows, "uint32_t *"), rows.size, row_stride, col_stride,
                               column_index, cols, first_row, padded_cols, out_code, _ptr(out))


def rope_rows(matrix, n_heads, inverse=False):
    """Interleave (or, with inverse, de-interleave) each head's rows of a float32 matrix."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    head_dim = _check_rope(matrix, n_heads)
    rows, cols = matrix.shape
    if _kernel is None:
        return _fallback().rope_rows(matrix, n_heads, inverse)
    out = np.empty_like(matrix)
    _kernel.lib.tt_rope_rows_f32(
        _ptr(matrix, "float *"), n_heads, head_dim, cols, int(inverse),
        _ptr(out, "float *"),
    )
    return out


def transpose(matrix):
    """Transpose a float32 matrix into a new contiguous array."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"transpose needs a matrix, got shape {matrix.shape}")
    if _kernel is None:
        return _fallback().transpose(matrix)
    rows, cols = matrix.shape
    out = np.empty((cols, rows), dtype=np.float32)
    _kernel.lib.tt_transpose_f32(
        _ptr(matrix, "float *"), rows, cols, _ptr(out, "float *")
    )
    return out


# Size of each msgpack number by its first byte; 0 for anything that is not a number.
_NUMBER_SIZE = np.zeros(256, dtype=np.int64)
_NUMBER_SIZE[0x00:0x80] = 1
_NUMBER_SIZE[0xE0:0x100] = 1
for _tags, _size in (((0xCC, 0xD0), 2), ((0xCD, 0xD1), 3), ((0xCA, 0xCE, 0xD2), 5), ((0xCB, 0xCF, 0xD3), 9)):
    _NUMBER_SIZE[list(_tags)] = _size

_PAYLOAD_DTYPE = {
    0xCA: ">f4", 0xCB: ">f8", 0xCC: ">u1", 0xCD: ">u2", 0xCE: ">u4", 0xCF: ">u8",
    0xD0: ">i1", 0xD1: ">i2", 0xD2: ">i4", 0xD3: ">i8",
}


def _walk_numbers_numpy(buf, max_count, want_values):
    """Fallback walk over msgpack numbers: vectorised over runs of same-tagged values."""
    length = buf.size
    pos = done = 0
    window = 256
    values = []
    while done < max_count and pos < length:
        tag = int(buf[pos])
        size = int(_NUMBER_SIZE[tag])
        if size == 0:
            return done, pos, True, values
        limit = min(max_count - done, (length - pos) // size, window)
        if limit == 0:
            break
        if size == 1:
            run_tags = buf[pos:pos + limit]
            same = _NUMBER_SIZE[run_tags] == 1
        else:
            run_tags = buf[pos:pos + limit * size:size]
            same = run_tags == tag
        run = limit if same.all() else int(np.argmin(same))
        if want_values:
            if size == 1:
                values.append(buf[pos:pos + run].view(np.int8).astype(np.float32))
            else:
                # each value's big-endian payload after its tag, read in place
                payload = np.ndarray((run,), dtype=_PAYLOAD_DTYPE[tag], buffer=buf, offset=pos + 1, strides=(size,))
                with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, as in C
                    values.append(payload.astype(np.float32))
        window = window * 2 if run == limit else 256
        pos += run * size
        done += run
    return done, pos, False, values


def scan_numbers(buf, max_count):
    """Walk up to max_count msgpack numbers at the start of a uint8 buffer.

    Returns (values walked, bytes walked, stopped_at_non_number). The walk also stops
    before a number that does not fit in the buffer.
    """
    _check_bytes(buf)
    if _kernel is None:
        done, nbytes, bad, _ = _walk_numbers_numpy(buf, max_count, False)
        return done, nbytes, bad
    n_done = _kernel.ffi.new("size_t *")
    bytes_done = _kernel.ffi.new("size_t *")
    status = _kernel.lib.tt_scan_numbers(_ptr(buf), buf.size, max_count, n_done, bytes_done)
    return n_done[0], bytes_done[0], status == _kernel.lib.TT_E_NOT_A_NUMBER


def decode_numbers(buf, max_count):
    """Like scan_numbers, returning the values as float32: (values, bytes walked, stopped_at_non_number)."""
    _check_bytes(buf)
    if _kernel is None:
        done, nbytes, bad, values = _walk_numbers_numpy(buf, max_count, True)
        out = np.concatenate(values) if values else np.empty(0, dtype=np.float32)
        return out, nbytes, bad
    out = np.empty(min(max_count, buf.size), dtype=np.float32)
    n_done = _kernel.ffi.new("size_t *")
    bytes_done = _kernel.ffi.new("size_t *")
    status = _kernel.lib.tt_decode_numbers(
        _ptr(buf), buf.size, max_count, _ptr(out, "float *"), n_done, bytes_done
    )
    return out[:n_done[0]], bytes_done[0], status == _kernel.lib.TT_E_NOT_A_NUMBER


GATHER_OUT = {"f32": (1, 4), "bf16": (0, 2), "f16": (2, 2)}  # TT_OUT_* code, bytes per value
# Source dtypes of gather: the three of _DTYPE_CODES (as numpy arrays of that dtype) and msgpack
# float32 values (uint8 bytes, five a value).
GATHER_SOURCES = {"f32": (0, 4, np.float32), "f16": (1, 2, np.float16), "bf16": (2, 2, np.uint16),
                  "msgpack": (3, 5, np.uint8)}


def _in_order(rows):
    """Whether rows (uint32, not empty) are consecutive and ascending."""
    return int(rows[-1]) - int(rows[0]) + 1 == rows.size and bool((np.diff(rows) == 1).all())


def _msgpack_float32(source):
    """float32 values of msgpack bytes, five a value, when every one is a msgpack float32 (else None):
    each value's four big-endian bytes after its tag, read in place in one strided pass."""
    if not (source[::5] == 0xCA).all():
        return None
    big_endian = np.ndarray((source.size // 5,), dtype=">u4", buffer=source, offset=1, strides=(5,))
    return big_endian.astype(np.uint32).view(np.float32)


def transpose_window(rows, src_cols, tiled=False):
    """For a transpose on the fallback: (first, width), the source columns that the picked rows name
    (whole tile columns of a tiled source). A call picks a few output rows of a matrix it is given
    whole, and the fallback would decode, stage and transpose all of it each time. The width is a
    power of two, at least a tile (or all the columns), so that jax compiles few programs."""
    first = int(rows.min()) // TILE * TILE if tiled else int(rows.min())
    span = min(src_cols, 1 << (max(int(rows.max()) + 1 - first, TILE) - 1).bit_length())
    return min(first, src_cols - span), span  # kept inside the source; whole tiles still (both multiples of 32)


def _picked_columns(source, per_value, tiled, src_cols, rows):
    """The tiled or msgpack source of a transpose on the fallback (per_value: array elements a value)
    narrowed to its transpose_window(), as a new source of its own: (source, its columns, rows counted
    from its first column)."""
    first, span = transpose_window(rows, src_cols, tiled)
    if first == 0 and span == src_cols:
        return source, src_cols, rows
    if tiled:  # [tile rows, tiles a row, 32 * 32 values]: whole tiles of each tile row
        tiles = source.reshape(-1, src_cols // TILE, TILE * TILE * per_value)
        narrowed = tiles[:, first // TILE:(first + span) // TILE]
    else:
        narrowed = source.reshape(-1, src_cols * per_value)[:, first * per_value:(first + span) * per_value]
    return np.ascontiguousarray(narrowed).reshape(-1), span, rows - np.uint32(first)


def _plain_rows(source, source_dtype, src_cols, rows, in_order, out, out_dtype, tiled, columns, cols, transposed):
    """Rows of a row-major source (consecutive, or picked: a RoPE permutation of rows), whole or their
    columns picked (a q/k norm vector's), in the source's own dtype, or only rounded to bfloat16 or
    widened from it, written without the fallback (which would import jax, about a second, for them):
    copied, or converted by ttconv.bf16's bit arithmetic, the kernel's rounding; False for any other
    gather."""
    conversion = (source_dtype, out_dtype)
    if conversion not in _PLAIN or tiled or transposed or (columns is None and cols != src_cols):
        return False
    if in_order:
        first = int(rows[0])
        picked = source[first * src_cols:(first + rows.size) * src_cols].reshape(rows.size, src_cols)
    else:
        picked = source.reshape(-1, src_cols).take(rows, axis=0)
    if columns is not None:
        picked = picked.take(columns, axis=1)
    picked = _PLAIN[conversion](picked).view(np.uint8).reshape(-1)
    out[:picked.size] = picked
    return True


_PLAIN = {("f32", "f32"): lambda values: values, ("bf16", "bf16"): lambda bits: bits,
          ("f16", "f16"): lambda values: values, ("f32", "bf16"): bf16.round_to_bits, ("bf16", "f32"): bf16.widen}


def gather(source, source_dtype, src_cols, rows, out, out_dtype, *, tiled=False, columns=None, cols=None,
           transposed=False):
    """Write an [len(rows), cols] row-major matrix of out_dtype ("f32", "bf16" or "f16", rounded to
    nearest even; a value already in that dtype copied bit for bit) into out, a uint8 buffer, from a
    source matrix with src_cols values a row: its rows, row-major or (tiled) in ttnn's TILE layout
    (whole tile rows), as "f32", "f16", "bf16" (uint16 bits) or "msgpack" (float32 values, five bytes
    each). Output row k is source row rows[k] (with transposed, source column rows[k]); its column c
    the source column (with transposed, row) columns[c], or c when columns is None.

    Returns False when a msgpack source value is not a float32 (the caller decodes it otherwise),
    True when done."""
    code, width, raw_dtype = GATHER_SOURCES[source_dtype]
    source = np.ascontiguousarray(source).reshape(-1)
    if source.dtype != raw_dtype:
        raise ValueError(f"a {source_dtype} source must be {np.dtype(raw_dtype)}, not {source.dtype}")
    values = source.size // 5 if source_dtype == "msgpack" else source.size
    if src_cols <= 0 or values % src_cols or (tiled and (src_cols % TILE or values // src_cols % TILE)):
        raise ValueError(f"{values} source values are not whole {'tile ' if tiled else ''}rows of {src_cols}")
    source_rows = values // src_cols
    rows = np.ascontiguousarray(rows, dtype=np.uint32)
    if columns is not None:
        columns = np.ascontiguousarray(columns, dtype=np.uint32)
        cols = columns.size
    if cols is None:
        raise ValueError("give cols or columns")
    row_limit, col_limit = (src_cols, source_rows) if transposed else (source_rows, src_cols)
    if rows.size and int(rows.max()) >= row_limit:
        raise ValueError(f"row {int(rows.max())} is outside the source's {row_limit}")
    last_col = int(columns.max()) if columns is not None and columns.size else cols - 1
    if cols and last_col >= col_limit:
        raise ValueError(f"column {last_col} is outside the source's {col_limit}")
    out_code, out_width = GATHER_OUT[out_dtype]
    if out.dtype != np.uint8 or out.ndim != 1 or out.size < rows.size * cols * out_width:
        raise ValueError(f"output buffer must be uint8 with room for {rows.size * cols * out_width} bytes")
    if not rows.size or not cols:
        return True
    if _kernel is None:
        if transposed and (tiled or source_dtype == "msgpack"):  # the fallback narrows row-major values itself
            per_value = width // np.dtype(raw_dtype).itemsize
            source, src_cols, rows = _picked_columns(source, per_value, tiled, src_cols, rows)
        if source_dtype == "msgpack":
            source, source_dtype = _msgpack_float32(source), "f32"
            if source is None:
                return False
            code = GATHER_SOURCES["f32"][0]
        in_order = _in_order(rows)
        if _plain_rows(source, source_dtype, src_cols, rows, in_order, out, out_dtype, tiled, columns, cols,
                       transposed):
            return True
        return _fallback().gather(source, code, tiled, src_cols, rows, in_order, columns, cols, transposed, out_code,
                                  out)
    column_index = _kernel.ffi.NULL if columns is None else _ptr(columns, "uint32_t *")
    status = _kernel.lib.tt_gather(_ptr(source), code, int(tiled), src_cols, _ptr(rows, "uint32_t *"), rows.size,
                                   column_index, cols, int(transposed), out_code, _ptr(out))
    if status == _kernel.lib.TT_E_BAD_ARGUMENT:
        raise ValueError("tt_gather refused its arguments")
    return status != _kernel.lib.TT_E_NOT_A_NUMBER
