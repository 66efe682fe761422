"""The encoders without the C extension, as jit-compiled jax.numpy.

Only ttconv.kernels imports this module, and only when the C kernel is not in use and
something is to be encoded (importing jax takes most of a second).
Encoding runs on fixed-size chunks (whole heads for the RoPE permutation, whole columns
for transposes), padded to the chunk size, so that jax compiles one program per tensor
shape family and each chunk stays in cache. Every value becomes float32 bits (uint32),
then five msgpack bytes: 0xca and the bits big-endian. Four values make exactly five
uint32 words, so the encoding is plain shifts and ors on uint32, with no byte shuffles.

XLA on the CPU moves values (a transpose, the tile order) several times faster in a program of
its own than fused with arithmetic on them, so tiling and transposed encoding run as separate
programs: one computes in the source's order, the others only move (a large transpose in two of
them itself, see _blocks). A contiguous block aligned to
XLA_ALIGNMENT is handed to jax as it is, also when its rows are padded (to share programs between
sizes) and the buffer it lies in has room: jax copies any other block, so _staged copies it once.
"""
import concurrent.futures
import ctypes
import functools
import math
import os
import threading

import numpy as np

from .interrupts import import_held
from .kernels import aligned_empty, transpose_window

CHUNK_VALUES = 1 << 18
XLA_ALIGNMENT = 64  # a numpy argument that starts on a multiple of this is used where it lies (measured)
F32, F16, BF16 = 0, 1, 2
CACHE_ENV = "TTCONV_JAX_CACHE"
CACHE_OFF = ("", "0", "off")

jax = import_held("jax")
jax.config.update("jax_platforms", "cpu")
# Programs run on the calling thread: the callers are already two threads (kernels.helper, _workers), and
# handing each call to jax's worker threads and back costs ~0.15 ms a call and, with two callers, about
# a quarter of the throughput (a 4 MB block, measured).
jax.config.update("jax_cpu_enable_async_dispatch", False)
jnp = import_held("jax.numpy")
lax = jax.lax


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
RECYCLED_BYTES = 32 << 20


def _recycle_freed_blocks():
    """Have malloc keep freed blocks of up to RECYCLED_BYTES for reuse. jax allocates each program's
    outputs anew, and glibc gives a freed block of a few MB back to the system (it is above its mmap
    threshold, or on top of a heap that it trims), so that the next call faults every page of its
    output in again: 130-300 faults per 4 MB block, half of the fallback's throughput (measured). A no-op
    where the C library has no mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, RECYCLED_BYTES)
    mallopt(M_TRIM_THRESHOLD, 2 * RECYCLED_BYTES)


_recycle_freed_blocks()


def compilation_cache_dir():
    """Where jax keeps the fallback's compiled programs between runs (about 0.6 s of compiling a
    conversion saved from the second run on): TTCONV_JAX_CACHE, else $XDG_CACHE_HOME/ttconv/jax (or
    ~/.cache/ttconv/jax); None when TTCONV_JAX_CACHE is empty, 0 or off."""
    setting = os.environ.get(CACHE_ENV)
    if setting is not None:
        return None if setting.strip().lower() in CACHE_OFF else setting
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ttconv", "jax")


def _use_compilation_cache():
    """Keep compiled programs in compilation_cache_dir(), unless jax was given a cache of its own or the
    folder cannot be made (then every run compiles, as without a cache)."""
    folder = compilation_cache_dir()
    if folder is None or jax.config.jax_compilation_cache_dir:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return
    if os.access(folder, os.W_OK | os.X_OK):
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # each program takes ~50 ms
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


_use_compilation_cache()


def _f32_bits(source, code):
    """float32 bit patterns (uint32) of source values: float32 or float16/bfloat16 bits as uint16."""
    if code == F32:
        return source
    wide = source.astype(jnp.uint32)
    if code == BF16:
        return wide << 16
    bits = lax.bitcast_convert_type(lax.bitcast_convert_type(source, jnp.float16).astype(jnp.float32), jnp.uint32)
    nan = ((wide & 0x7C00) == 0x7C00) & ((wide & 0x03FF) != 0)  # keep the payload, as the C kernel does
    return jnp.where(nan, ((wide & 0x8000) << 16) | 0x7F800000 | ((wide & 0x03FF) << 13), bits)


def _byteswap(x):
    return (x >> 24) | ((x >> 8) & 0xFF00) | ((x << 8) & 0xFF0000) | (x << 24)


def _msgpack_words(bits):
    """Five little-endian uint32 words per four values: 0xca a0 a1 a2 | a3 0xca b0 b1 | b2 b3 0xca c0 | ..."""
    bits = bits.reshape(-1)
    if bits.size % 4:
        bits = jnp.pad(bits, (0, 4 - bits.size % 4))
    a, b, c, d = (_byteswap(bits[k::4]) for k in range(4))  # each now holds its bytes in file order
    tag = [np.uint32(0xCA << shift) for shift in (0, 8, 16, 24)]
    words = (
        (a << 8) | tag[0],
        (a >> 24) | tag[1] | (b << 16),
        (b >> 16) | tag[2] | (c << 24),
        (c >> 8) | tag[3],
        d,
    )
    return jnp.stack(words, axis=1).reshape(-1)


def _uint32s(like, value):
    """value in every place of a uint32 array shaped like `like` (lax.select takes no scalar operand; the
    arithmetic operators do, and a scalar constant costs no broadcast to trace and lower)."""
    return lax.full(like.shape, np.uint32(value), jnp.uint32)


def _nonfinite(bits):
    """The NaN/Inf counts of float32 bits in groups of up to 32 values; _count() adds them up. XLA on the
    CPU reduces a block to one number slower than it rounds the block: short groups take half the time.
    Written in lax, as _bf16_nearest_even."""
    exponent = np.uint32(0x7F800000)
    flags = lax.convert_element_type(lax.eq(lax.bitwise_and(bits, exponent), exponent), jnp.int32).reshape(-1)
    group = 32
    while flags.size % group:
        group //= 2
    return lax.reduce(flags.reshape(-1, group), np.int32(0), lax.add, (1,))


def _count(counts):
    """The total of _nonfinite()'s group counts."""
    return int(np.asarray(counts).sum())


@functools.partial(jax.jit, static_argnums=1)
def _encode_flat(source, code):
    bits = _f32_bits(source, code)
    return _msgpack_words(bits), _nonfinite(bits)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _encode_heads(source, code, head_dim):
    bits = _f32_bits(source, code)
    heads, cols = source.shape[0] // head_dim, source.shape[1]
    permuted = bits.reshape(heads, 2, head_dim // 2, cols).transpose(0, 2, 1, 3)
    return _msgpack_words(permuted), _nonfinite(bits)


def _raw(array, code):
    return array.view(np.uint32) if code == F32 else array.view(np.uint16)


def _padded(block, size, axis):
    """block with zeros appended along axis up to size (the last chunk of a tensor)."""
    missing = size - block.shape[axis]
    if missing == 0:
        return block
    pad = [(0, 0)] * block.ndim
    pad[axis] = (0, missing)
    return np.pad(block, pad)


def _workers():
    """Two threads (at most the core count): XLA runs one computation per call, so chunks encoded
    from two threads keep both cores busy (about 1.3x the throughput of one)."""
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1),
                                                      thread_name_prefix="ttconv-jax")
    return _POOL


_POOL = None


def _run_chunks(program, chunks, out):
    """Encode (block, first value, value count) chunks: (msgpack bytes, NaN/Inf count).

    A single chunk's bytes are returned as jax produced them; several are encoded by two
    threads straight into their places in out."""
    chunks = list(chunks)
    if not chunks:
        return out[:0], 0
    if len(chunks) == 1 and chunks[0][2] * 5 == out.size:
        words, bad = program(_staged(chunks[0][0]))
        return np.asarray(words).view(np.uint8)[:out.size], _count(bad)

    def encode_into_out(chunk):
        block, first, count = chunk
        words, bad = program(_staged(block))
        out[first * 5:(first + count) * 5] = np.asarray(words).view(np.uint8)[:count * 5]
        return _count(bad)

    return out, sum(_workers().map(encode_into_out, chunks))


def _bucket(n_values):
    """Chunk size for n values: a power of two from 4096 up to CHUNK_VALUES (few distinct programs)."""
    size = 1 << 12
    while size < min(n_values, CHUNK_VALUES):
        size <<= 1
    return size


def encode(array, code, out):
    """msgpack float32 bytes of every value (into out when there are several chunks): (bytes, NaN/Inf count)."""
    flat = _raw(array, code).reshape(-1)
    size = _bucket(flat.size)
    chunks = ((_padded(flat[first:first + size], size, 0), first, min(size, flat.size - first))
              for first in range(0, flat.size, size))
    return _run_chunks(functools.partial(_encode_flat, code=code), chunks, out)


def encode_rope(array, code, n_heads, out):
    """Like encode, with each head's rows interleaved (RoPE pairs (i, i + d/2) -> (2i, 2i+1))."""
    rows, cols = array.shape
    head_dim = rows // n_heads
    step = min(n_heads, max(1, CHUNK_VALUES // max(1, head_dim * cols))) * head_dim
    raw = _raw(array, code)
    chunks = ((_padded(raw[first:first + step], step, 0), first * cols, min(step, rows - first) * cols)
              for first in range(0, rows, step))
    return _run_chunks(functools.partial(_encode_heads, code=code, head_dim=head_dim), chunks, out)


BLOCK = 16  # the side of the square blocks a transpose moves whole first (see _blocks)


@functools.partial(jax.jit, static_argnums=1)
def _blocks(matrix, side):
    """matrix [R, C] as [R/side, C/side, side, side]: its square blocks in the order of its transpose's.
    XLA on the CPU transposes a large matrix in one program 3-5x slower than in two, this one, which
    moves whole runs of `side` values, and one that transposes each block (_transposed_matrix)."""
    rows, cols = matrix.shape
    return matrix.reshape(rows // side, side, cols // side, side).transpose(0, 2, 1, 3)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _window_blocks(matrix, first, width, side):
    """Columns first.. first + width of matrix (first traced: one program serves every window of a
    width), as _blocks() cuts them when side is not 0."""
    window = lax.dynamic_slice(matrix, (np.int32(0), first), (matrix.shape[0], width))
    return _blocks(window, side) if side else window


def _transposed_matrix(matrix):
    """The transpose of a matrix, or of the one that _blocks() cut (4 axes), inside a jit-compiled program."""
    if matrix.ndim == 2:
        return matrix.T
    block_rows, block_cols, side, _ = matrix.shape
    return matrix.transpose(1, 3, 0, 2).reshape(block_cols * side, block_rows * side)


def _blockable(matrix):
    return matrix.ndim == 2 and matrix.shape[0] % BLOCK == 0 and matrix.shape[1] % BLOCK == 0


_transpose = jax.jit(_transposed_matrix)


def _transposed(bits):
    """The transpose of a matrix (a jax array), by _blocks and _transpose when its sides allow."""
    return _transpose(_blocks(bits, BLOCK) if _blockable(bits) else bits)


def encode_transposed(array, code, out):
    """Like encode, for the transpose of a matrix: a block of whole source columns at a time, transposed
    by programs of its own and encoded by another (XLA runs them faster apart than in one program)."""
    rows, cols = array.shape
    width = min(cols, max(1, CHUNK_VALUES // max(1, rows)))
    raw = _raw(array, code)
    chunks = ((_padded(raw[:, first:first + width], width, 1), first * rows, min(width, cols - first) * rows)
              for first in range(0, cols, width))
    return _run_chunks(lambda block: _encode_flat(_transposed(block), code), chunks, out)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _rope_rows(bits, n_heads, inverse):
    rows, cols = bits.shape
    half = rows // n_heads // 2
    split = (n_heads, half, 2, cols) if inverse else (n_heads, 2, half, cols)
    return bits.reshape(split).transpose(0, 2, 1, 3).reshape(rows, cols)


def rope_rows(matrix, n_heads, inverse):
    """Interleave (or de-interleave) each head's rows of a float32 matrix."""
    return np.asarray(_rope_rows(matrix.view(np.uint32), n_heads, inverse)).view(np.float32)


def transpose(matrix):
    """Transpose of a float32 matrix."""
    return np.asarray(_transposed(matrix.view(np.uint32))).view(np.float32)


def _bf16_nearest_even(bits):
    """bfloat16 bits (uint16) of float32 bits, rounded to nearest even; a NaN keeps its sign, quiet.
    Written in lax, not jax.numpy: every new block shape traces the program again, and jax.numpy's
    operators take about twice as long to trace (their type promotion)."""
    high = lax.shift_right_logical(bits, np.uint32(16))
    nan = lax.gt(lax.bitwise_and(bits, np.uint32(0x7FFFFFFF)), np.uint32(0x7F800000))
    odd = lax.bitwise_and(high, np.uint32(1))
    rounded = lax.shift_right_logical(lax.add(lax.add(bits, np.uint32(0x7FFF)), odd), np.uint32(16))
    quiet = lax.bitwise_or(lax.bitwise_and(high, np.uint32(0x8000)), np.uint32(0x7FC0))
    return lax.convert_element_type(lax.select(nan, quiet, rounded), jnp.uint16)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _rounded(source, rows, columns, code, transposed, padded_cols, out_f32, heads, valid):
    """The picked values of source rounded (bfloat16 bits, or float32 bits), still in the source's
    orientation (output rows are source columns when transposed), the output's columns padded with
    zeros up to padded_cols; and the NaN/Inf count of the first `valid` output rows (traced: rows
    after them only pad the block to a shape that a program exists for). heads: the rows are picked
    as the RoPE interleave of that many whole heads (see _whole_heads), by a reshape instead of a
    gather."""
    bits = _f32_bits(source, code)
    if heads:
        n_rows, cols = bits.shape
        bits = bits.reshape(heads, 2, n_rows // heads // 2, cols).transpose(0, 2, 1, 3).reshape(n_rows, cols)
    if transposed:
        picked = bits if rows is None else bits[:, rows]
        picked = picked if columns is None else picked[columns]
        padding = ((0, padded_cols - picked.shape[0]), (0, 0))
    else:
        picked = bits if rows is None else bits[rows]
        picked = picked if columns is None else picked[:, columns]
        padding = ((0, 0), (0, padded_cols - picked.shape[1]))
    values = picked if out_f32 else _bf16_nearest_even(picked)
    if any(high for _, high in padding):
        values = lax.pad(values, np.zeros((), values.dtype), [(low, high, 0) for low, high in padding])
    output_row = lax.broadcasted_iota(jnp.int32, picked.shape, 1 if transposed else 0)
    counted = lax.select(lax.lt(output_row, lax.full(picked.shape, valid, jnp.int32)), picked, _uint32s(picked, 0))
    return values, _nonfinite(counted)


@functools.partial(jax.jit, static_argnums=1)
def _tiles(values, transposed):
    """Whole tile rows of rounded values (of their transpose) in TILE order, by the reshapes of spec
    section 4 reversed. A program of its own: XLA moves 16-bit values alone several times faster than
    it does fused with the rounding (a transposed block 2-8x)."""
    if transposed:
        cols, rows = values.shape
        return values.reshape(cols // 32, 2, 16, rows // 32, 2, 16).transpose(3, 0, 4, 1, 5, 2).reshape(-1)
    rows, cols = values.shape
    return values.reshape(rows // 32, 2, 16, cols // 32, 2, 16).transpose(0, 3, 1, 4, 2, 5).reshape(-1)


def _whole_heads(rows, n_source):
    """How many heads, when rows picks all n_source rows as the RoPE interleave of whole heads (output
    row 2i of a head of d rows is its row i, row 2i + 1 its row d/2 + i): XLA permutes them by a reshape
    in the time it rounds them, and takes twice that to gather them. Else 0."""
    n = rows.size
    if n != n_source or n < 2:
        return 0
    half = int(rows[1])
    if half == 0 or n % (2 * half):
        return 0
    head = np.arange(2 * half, dtype=rows.dtype).reshape(2, half).T.reshape(-1)
    interleave = (head + np.arange(0, n, 2 * half, dtype=rows.dtype)[:, None]).reshape(-1)
    return n // (2 * half) if np.array_equal(rows, interleave) else 0


def _tiled_offsets(first_row, n_rows, padded_cols):
    """Where each value of rows first_row.. of a row-major [n_rows, padded_cols] block lands in TILE order."""
    r = np.arange(first_row, first_row + n_rows)[:, None]
    c = np.arange(padded_cols)[None, :]
    return ((r // 32) * 32 * padded_cols + (c // 32) * 1024 + (r % 32 // 16) * 512 + (c % 32 // 16) * 256
            + (r % 16) * 16 + c % 16)


def _granular(n_rows):
    """The rows a block of n_rows consecutive rows is padded to: whole tile rows, as many as the next of
    1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... (powers of two and three times them) that holds them. The
    directory writer's blocks come in many sizes, as the room left in its output buffer allows (the
    halves of a 4 MB block are 31 and 32 tile rows of a 1024-column tensor, 10 and 11 of a 3072-column
    one, 5 and 6 of a 5632-column one), and jax prepares each new shape's two programs anew (trace,
    lower, compile or load from the cache: 20-40 ms a program, dozens of shapes a conversion); padded,
    nearly equal blocks share them, for at most half again as many values computed (mostly far less)."""
    if n_rows <= 32:
        return n_rows
    tile_rows = -(-n_rows // 32)
    power = 1 << (tile_rows - 1).bit_length()  # the power of two that holds them; three quarters of it may too
    return 32 * (power * 3 // 4 if power >= 4 and power * 3 // 4 >= tile_rows else power)


def tile(array, code, rows, in_order, first_row, padded_cols, transposed, out_f32, out, columns=None):
    """Rows of array (or of its transpose; in_order: they are consecutive), their columns picked by
    columns when given, rounded and placed in TILE order into out; the NaN/Inf count."""
    raw = _raw(array, code)
    n_rows = len(rows)
    heads = 0 if in_order or transposed else _whole_heads(rows, raw.shape[0])
    if in_order:  # sliced here, not gathered by XLA: its gather is slower, and over a transpose it transposes all
        lo, span = int(rows[0]), _granular(n_rows)
        if not transposed:  # the rows after the block, or a staging copy's: see _staged
            source = _staged(raw[lo:lo + n_rows], span)
        else:  # a strided block, copied: with the source's further columns where it has them
            source = _staged(raw[:, lo:lo + (span if lo + span <= raw.shape[1] else n_rows)])
        rows = None
    else:
        source, rows = _staged(raw), None if heads else rows
    values, bad = _rounded(source, rows, columns, code, transposed, padded_cols, out_f32, heads, np.int32(n_rows))
    words = out.view(np.uint32 if out_f32 else np.uint16)
    if first_row % 32 == 0 and n_rows % 32 == 0:  # whole tile rows: one contiguous stretch of out (the first
        tiled = _tiles(values, transposed)  # tile rows of the padded block's: TILE order goes tile row by tile row)
        start, size = first_row * padded_cols, n_rows * padded_cols
        words[start:start + size] = np.asarray(tiled)[:size]
    else:
        values = np.asarray(values)
        words[_tiled_offsets(first_row, n_rows, padded_cols)] = (values.T if transposed else values)[:n_rows]
    return _count(bad)


def _f16_nearest_even(bits):
    """float16 bits (uint16) of float32 bits, rounded to nearest even, as the C kernel does it."""
    sign = (bits >> 16) & 0x8000
    magnitude = bits & 0x7FFFFFFF
    nan = sign | 0x7E00 | ((magnitude >> 13) & 0x3FF)
    normal = sign | ((magnitude + 0xFFF + ((magnitude >> 13) & 1) - 0x38000000) >> 13)
    # a subnormal half: the float32 addition of 0.5 rounds to nearest even at the half's last bit
    summed = lax.bitcast_convert_type(lax.bitcast_convert_type(magnitude, jnp.float32) + np.float32(0.5),
                                      jnp.uint32)
    subnormal = sign | (summed - 0x3F000000)
    return jnp.where(magnitude > 0x7F800000, nan,
                     jnp.where(magnitude >= 0x477FF000, sign | 0x7C00,
                               jnp.where(magnitude >= 0x38800000, normal, subnormal))).astype(jnp.uint16)


OUT_BF16, OUT_F32, OUT_F16 = 0, 1, 2


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8))
def _gather(matrix, rows, columns, code, tiled, transposed, out_code, raw16, leading=None):
    """leading: with no columns given, the number of leading columns to keep (sliced: XLA gathers an
    index array of columns about three times slower)."""
    if tiled:
        n, cols = matrix.shape
        matrix = matrix.reshape(n // 32, cols // 32, 2, 2, 16, 16).transpose(0, 2, 4, 1, 3, 5).reshape(n, cols)
    if transposed:  # the source, or _blocks() of it
        matrix = _transposed_matrix(matrix)
    picked = matrix if rows is None else matrix[rows]
    if columns is not None:
        picked = picked[:, columns]
    elif leading is not None:
        picked = picked[:, :leading]
    if raw16:
        return picked
    bits = _f32_bits(picked, code)
    if out_code == OUT_F32:
        return bits
    return _bf16_nearest_even(bits) if out_code == OUT_BF16 else _f16_nearest_even(bits)


def gather(source, code, tiled, src_cols, rows, in_order, columns, cols, transposed, out_code, out):
    """kernels.gather on jax.numpy (in_order: the rows are consecutive)."""
    n = rows.size
    if transposed and not tiled and in_order and n > 32 and n & (n - 1):
        # as runs of a power of two rows each: a window of columns is a power of two wide (few programs),
        # and one of the next power of two would transpose up to twice the values picked
        head, row_bytes = 1 << (n.bit_length() - 1), cols * (4 if out_code == OUT_F32 else 2)
        for part, place in ((rows[:head], out[:head * row_bytes]), (rows[head:], out[head * row_bytes:])):
            gather(source, code, tiled, src_cols, part, True, columns, cols, transposed, out_code, place)
        return True
    raw = _raw(source, code)
    matrix = raw.reshape(-1, src_cols)
    # without columns: the leading ones (a transpose's source rows, or all but the tile padding)
    leading = cols if columns is None and (transposed or cols != src_cols) else None
    raw16 = code in (F16, BF16) and (code, out_code) in ((F16, OUT_F16), (BF16, OUT_BF16))
    if not transposed:  # only the source rows (whole tile rows) the picked rows lie in
        unit = 32 if tiled else 1
        first = int(rows.min()) // unit * unit
        matrix, rows = matrix[first:-(-(int(rows.max()) + 1) // unit) * unit], rows - np.uint32(first)
    # source rows and picked rows padded to powers of two: chunks come in many sizes, and each new
    # shape would be a new compilation (a transpose's source is all of a tensor's rows: a tile row's
    # multiple, for the blocks, is enough)
    matrix = _staged(matrix, -(-matrix.shape[0] // 32) * 32 if transposed else _power_of_two(matrix.shape[0]))
    if transposed and not tiled:  # the window of columns picked, taken where the whole source lies
        first, width = transpose_window(rows, src_cols)
        matrix = _window_blocks(matrix, np.int32(first), width, BLOCK if width % BLOCK == 0 else 0)
        rows = rows - np.uint32(first)
    if in_order:
        picked, start = None, int(rows[0])  # sliced from the whole result, not gathered (XLA's gather is slower)
    else:
        picked, start = _padded(rows, _power_of_two(rows.size), 0), 0
    values = np.asarray(_gather(matrix, picked, columns, code, bool(tiled), bool(transposed), out_code, raw16,
                                leading))
    values = values[start:start + rows.size]
    nbytes = values.size * values.dtype.itemsize
    out[:nbytes] = values.reshape(-1).view(np.uint8)
    return True


_STAGING = threading.local()


def _staged(block, rows=None):
    """block as jax takes it without copying it (contiguous, aligned to XLA_ALIGNMENT), with room for
    `rows` rows (default: its own; rows past the block's hold whatever the memory after it holds: no
    picked value comes from them). That is the block's own memory when it qualifies (with more rows:
    when the buffer it lies in reaches that far), else a copy in this thread's aligned staging buffer."""
    shape = (block.shape[0] if rows is None else rows,) + block.shape[1:]
    nbytes = math.prod(shape) * block.itemsize
    if block.flags.c_contiguous and block.ctypes.data % XLA_ALIGNMENT == 0:
        if shape[0] == block.shape[0]:
            return block
        owner = block
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        offset = block.ctypes.data - owner.ctypes.data
        if owner.flags.c_contiguous and 0 <= offset and offset + nbytes <= owner.nbytes:
            return owner.reshape(-1).view(np.uint8)[offset:offset + nbytes].view(block.dtype).reshape(shape)
    buffer = getattr(_STAGING, "buffer", None)
    if buffer is None or buffer.size < nbytes:
        buffer = _STAGING.buffer = aligned_empty(nbytes)
    staged = buffer[:nbytes].view(block.dtype).reshape(shape)
    staged[:block.shape[0]] = block
    return staged


def _power_of_two(n):
    """The smallest power of two, at least 32 (a tile row), that is n or more."""
    size = 32
    while size < n:
        size <<= 1
    return size
