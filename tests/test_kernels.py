"""Kernel operations on both backends against plain numpy references, and the backend choice."""
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig

import ml_dtypes
import msgpack
import numpy as np
import pytest

import conftest
import support
from ttconv import kernels


def f32_bits_reference(array):
    """Exact float32 bits of a source array, via ml_dtypes/numpy casts plus NaN payloads."""
    if array.dtype == np.uint16:
        return array.view(ml_dtypes.bfloat16).astype(np.float32).view(np.uint32)
    bits = array.astype(np.float32).view(np.uint32).copy()
    if array.dtype == np.float16:
        h = array.view(np.uint16).astype(np.uint32)
        nan = ((h & 0x7C00) == 0x7C00) & ((h & 0x3FF) != 0)
        bits[nan] = ((h & 0x8000) << 16 | 0x7F800000 | (h & 0x3FF) << 13)[nan]
    return bits


def msgpack_reference(bits):
    """Each value packed by msgpack-python as a float32, from its bits."""
    return b"".join(b"\xca" + int(b).to_bytes(4, "big") for b in bits.reshape(-1))


def sources(rows, cols, seed=0):
    rng = np.random.default_rng(seed)
    f32 = rng.standard_normal((rows, cols)).astype(np.float32)
    if f32.size >= 5:
        f32.reshape(-1)[:4] = [np.inf, -np.inf, 0.0, -0.0]
        f32.view(np.uint32).reshape(-1)[4] = 0x7FA00001  # signalling NaN with payload
    f16 = rng.integers(0, 1 << 16, (rows, cols), dtype=np.uint16).view(np.float16)  # every class incl. subnormals
    bf16 = rng.integers(0, 1 << 16, (rows, cols), dtype=np.uint16)
    return {"f32": f32, "f16": f16, "bf16": bf16}


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
def test_encode_matches_msgpack(backend, kind):
    src = sources(6, 10)[kind]
    encoded, nonfinite = kernels.encode(src)
    bits = f32_bits_reference(src)
    assert encoded.tobytes() == msgpack_reference(bits)
    assert nonfinite == int(np.count_nonzero((bits & 0x7F800000) == 0x7F800000))


def test_encode_float32_roundtrips_through_msgpack(backend):
    src = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    encoded, _ = kernels.encode(src)
    unpacked = msgpack.unpackb(b"\xdc" + (1000).to_bytes(2, "big") + encoded.tobytes())
    np.testing.assert_array_equal(np.float32(unpacked), src)


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("heads,head_dim,cols", [(1, 2, 1), (4, 8, 5), (3, 16, 33)])
def test_encode_rope_interleaves_each_head(backend, kind, heads, head_dim, cols):
    src = sources(heads * head_dim, cols, seed=heads)[kind]
    encoded, _ = kernels.encode_rope(src, heads)
    bits = f32_bits_reference(src)
    order = [h * head_dim + (i // 2 if i % 2 == 0 else head_dim // 2 + i // 2)
             for h in range(heads) for i in range(head_dim)]
    assert encoded.tobytes() == msgpack_reference(bits[order])


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 3), (33, 65), (64, 32)])
def test_encode_transposed(backend, kind, rows, cols):
    src = sources(rows, cols, seed=rows)[kind]
    encoded, _ = kernels.encode_transposed(src)
    assert encoded.tobytes() == msgpack_reference(f32_bits_reference(src).T.copy())


# Tensors larger than the fallback's chunk (2**18 values), with partial last chunks.
@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
def test_encode_many_chunks(backend, kind):
    src = sources(1, (1 << 18) * 2 + 7, seed=7)[kind]
    encoded, nonfinite = kernels.encode(src)
    bits = f32_bits_reference(src)
    assert encoded.tobytes() == msgpack_reference(bits)
    assert nonfinite == int(np.count_nonzero((bits & 0x7F800000) == 0x7F800000))


@pytest.mark.parametrize("heads,head_dim,cols", [(5, 64, 2048), (3, 128, 4096)])
def test_encode_rope_many_chunks(backend, heads, head_dim, cols):
    src = sources(heads * head_dim, cols, seed=heads)["bf16"]
    encoded, _ = kernels.encode_rope(src, heads)
    bits = f32_bits_reference(src)
    expected = bits.reshape(heads, 2, head_dim // 2, cols).transpose(0, 2, 1, 3).reshape(-1)
    assert encoded.tobytes() == msgpack_reference(expected)


def test_encode_transposed_many_chunks(backend):
    src = sources(1000, 700, seed=9)["f32"]
    encoded, _ = kernels.encode_transposed(src)
    assert encoded.tobytes() == msgpack_reference(f32_bits_reference(src).T.copy())


def test_encode_empty(backend):
    for encoder in (kernels.encode, kernels.encode_transposed):
        encoded, nonfinite = encoder(np.zeros((0, 4), np.float32))
        assert encoded.size == 0 and nonfinite == 0


@pytest.mark.parametrize("heads,head_dim,cols", [(2, 4, 3), (5, 6, 8)])
def test_rope_rows_and_its_inverse(backend, heads, head_dim, cols):
    w = np.random.default_rng(1).standard_normal((heads * head_dim, cols)).astype(np.float32)
    expected = w.reshape(heads, 2, head_dim // 2, cols).transpose(0, 2, 1, 3).reshape(w.shape)
    forward = kernels.rope_rows(w, heads)
    np.testing.assert_array_equal(forward, expected)
    np.testing.assert_array_equal(kernels.rope_rows(forward, heads, inverse=True), w)


def test_transpose(backend):
    w = np.random.default_rng(2).standard_normal((37, 70)).astype(np.float32)
    np.testing.assert_array_equal(kernels.transpose(w), w.T)


def test_rope_rejects_bad_head_splits(backend):
    with pytest.raises(ValueError):
        kernels.encode_rope(np.zeros((10, 4), np.float32), 3)
    with pytest.raises(ValueError):
        kernels.encode_rope(np.zeros((6, 4), np.float32), 2)  # head_dim 3 is odd


NUMBERS = [0, 1, 127, -1, -32, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, -33, -128, -129,
           -32768, -32769, -2**31, -2**31 - 1, -2**63, 0.5, -2.25, 1e-30, 3.4e38]


def packed_numbers():
    parts = [msgpack.packb(v, use_single_float=True) for v in NUMBERS]
    parts += [msgpack.packb(v, use_single_float=False) for v in (0.1, -1e-300, 1e300)]
    values = NUMBERS + [0.1, -1e-300, 1e300]
    return parts, values


def test_scan_and_decode_every_number_encoding(backend):
    parts, values = packed_numbers()
    buf = np.frombuffer(b"".join(parts), dtype=np.uint8)
    n, nbytes, bad = kernels.scan_numbers(buf, len(values))
    assert (n, nbytes, bad) == (len(values), buf.size, False)
    decoded, nbytes, bad = kernels.decode_numbers(buf, len(values))
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(decoded, np.array(values, dtype=np.float64).astype(np.float32))


def test_scan_stops_at_count_at_non_numbers_and_before_cut_values(backend):
    buf = np.frombuffer(msgpack.packb(1.5, use_single_float=True) * 3 + b"\xa1x", dtype=np.uint8)
    assert kernels.scan_numbers(buf, 2) == (2, 10, False)
    assert kernels.scan_numbers(buf, 10) == (3, 15, True)
    assert kernels.scan_numbers(buf[:13], 10) == (2, 10, False)


def test_scan_long_mixed_runs(backend):
    rng = np.random.default_rng(5)
    values = rng.standard_normal(20000).astype(np.float32).astype(object)
    values[rng.integers(0, 20000, 300)] = 0
    values[:500] = 1
    items = [int(v) if float(v).is_integer() else float(v) for v in values]
    buf = np.frombuffer(msgpack.packb(items, use_single_float=True)[3:], dtype=np.uint8)
    decoded, nbytes, bad = kernels.decode_numbers(buf, len(items))
    assert nbytes == buf.size and not bad
    np.testing.assert_array_equal(decoded, np.float32(items))


@pytest.mark.parametrize("bad", [np.zeros(4, np.float32), np.zeros((2, 2), np.uint8), np.zeros(8, np.uint8)[::2]])
def test_scan_checks_its_buffer_before_calling_c(backend, bad):
    with pytest.raises(ValueError):
        kernels.scan_numbers(bad, 1)
    with pytest.raises(ValueError):
        kernels.decode_numbers(bad, 1)


def test_encode_checks_output_buffer(backend):
    with pytest.raises(ValueError):
        kernels.encode(np.zeros(4, np.float32), np.empty(19, np.uint8))
    with pytest.raises(ValueError):
        kernels.encode(np.zeros(4, np.float64))


def version_line(cwd, installed=None):
    """`python -m ttconv --version` in cwd, as if ttconv were installed (only) in the folder installed.

    -S keeps this environment's own ttconv (an editable install's import hook) out of the way;
    the dependencies come from site-packages on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", kernels.BACKEND_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(installed)] * bool(installed) + [sysconfig.get_paths()["purelib"]])
    proc = subprocess.run([sys.executable, "-S", "-m", "ttconv", "--version"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def package_copy(dest, with_kernel):
    source = os.path.dirname(kernels.__file__)
    shutil.copytree(source, dest / "ttconv", ignore=shutil.ignore_patterns(
        "__pycache__", *([] if with_kernel else ["_kernel*"])))


@pytest.mark.skipif(not conftest.C_LOADED, reason="needs the built kernel to install a copy of it")
def test_source_tree_hiding_an_installed_kernel_says_so(tmp_path):
    site, src = tmp_path / "site", tmp_path / "src"
    package_copy(site, with_kernel=True)
    kernel = next(n for n in os.listdir(site / "ttconv") if n.startswith("_kernel.") and n.endswith(".so"))
    info = site / "ttconv-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ttconv\nVersion: 0.1.0\n")
    (info / "RECORD").write_text(f"ttconv/__init__.py,,\nttconv/{kernel},,\n")
    package_copy(src, with_kernel=False)
    assert "backend: c" in version_line(site, site)
    line = version_line(src, site)
    assert f"backend: jax; running the source tree {src / 'ttconv'}" in line
    assert f"hides the installed ttconv in {site / 'ttconv'}" in line and "pip install -e ." in line


def test_unbuilt_kernel_says_how_to_build_it(tmp_path):
    package_copy(tmp_path, with_kernel=False)
    line = version_line(tmp_path)
    assert "backend: jax; the C kernel is not built" in line and "reinstall with a C compiler" in line


def test_jax_compilation_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    from ttconv import fallback

    monkeypatch.delenv(fallback.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fallback.compilation_cache_dir() == str(tmp_path / "xdg" / "ttconv" / "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fallback.compilation_cache_dir() == str(tmp_path / "home" / ".cache" / "ttconv" / "jax")
    monkeypatch.setenv(fallback.CACHE_ENV, str(tmp_path / "mine"))
    assert fallback.compilation_cache_dir() == str(tmp_path / "mine")
    for off in ("", "0", "off", "OFF"):
        monkeypatch.setenv(fallback.CACHE_ENV, off)
        assert fallback.compilation_cache_dir() is None


def test_the_fallback_keeps_compiled_programs_between_runs(tmp_path):
    """A second run on the fallback takes its programs from the cache folder and writes the same bytes."""
    env = {**os.environ, kernels.BACKEND_ENV: "jax", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    env.pop("TTCONV_JAX_CACHE", None)

    def convert(name, **extra):
        out = tmp_path / name
        mini = os.path.join(support.FIXTURES, "llama-mini")
        done = subprocess.run([sys.executable, "-m", "ttconv", "llama", "-i", os.path.join(mini, "init.msgpack"),
                               "-o", out, "--hf_model", mini, "-q"],
                              env={**env, **extra}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return out.read_bytes()

    folder = tmp_path / "xdg" / "ttconv" / "jax"
    first = convert("first.msgpack")
    kept = set(os.listdir(folder))
    assert kept and convert("second.msgpack") == first
    assert set(os.listdir(folder)) >= kept
    assert convert("off.msgpack", XDG_CACHE_HOME=str(tmp_path / "other"), TTCONV_JAX_CACHE="off") == first
    assert not (tmp_path / "other").exists()


def tiled_reference(matrix, padded_rows, padded_cols, dtype):
    """ttnn's TILE order by numpy reshapes (spec §4): 32x32 tiles, four 16x16 faces each."""
    full = np.zeros((padded_rows, padded_cols), dtype=dtype)
    full[:matrix.shape[0], :matrix.shape[1]] = matrix
    return full.reshape(padded_rows // 32, 2, 16, padded_cols // 32, 2, 16).transpose(0, 3, 1, 4, 2, 5).reshape(-1)


def bf16_reference(bits):
    """bfloat16 bits by ml_dtypes' round to nearest even (NaNs become the sign's quiet NaN)."""
    with np.errstate(invalid="ignore"):
        return bits.view(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("rows,cols", [(1, 5), (32, 32), (40, 70), (65, 33)])
def test_tile_matches_numpy_tiles_of_bf16(backend, kind, rows, cols):
    src = sources(rows, cols, seed=rows + cols)[kind]
    padded_rows, padded_cols = -(-rows // 32) * 32, -(-cols // 32) * 32
    out = np.zeros(padded_rows * padded_cols * 2, dtype=np.uint8)
    bad = kernels.tile(src, out, padded_cols)
    bits = f32_bits_reference(src)
    expected = tiled_reference(bf16_reference(bits), padded_rows, padded_cols, np.uint16)
    assert out.view(np.uint16).tobytes() == expected.tobytes()
    assert bad == int(np.count_nonzero((bits & 0x7F800000) == 0x7F800000))


def test_tile_rounds_ties_to_even(backend):
    bits = np.array([[0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0xBF808001]], dtype=np.uint32)
    out = np.zeros(32 * 32 * 2, dtype=np.uint8)
    kernels.tile(bits.view(np.float32), out, 32)
    assert out.view(np.uint16)[:5].tolist() == [0x3F80, 0x3F82, 0x3F81, 0x7F80, 0xBF81]


@pytest.mark.parametrize("kind", ["f32", "bf16"])
def test_tile_float32_output_keeps_bits(backend, kind):
    src = sources(33, 40, seed=9)[kind]
    out = np.zeros(64 * 64 * 4, dtype=np.uint8)
    kernels.tile(src, out, 64, out_dtype="f32")
    assert out.view(np.uint32).tobytes() == tiled_reference(f32_bits_reference(src), 64, 64, np.uint32).tobytes()


def test_tile_picked_rows_at_an_offset_leave_the_others(backend):
    src = sources(48, 40, seed=4)["f32"]
    heads, head_dim = 3, 16
    order = np.arange(48).reshape(heads, 2, head_dim // 2).transpose(0, 2, 1).reshape(-1)  # RoPE interleave
    out = np.full(96 * 64 * 2, 0x5A, dtype=np.uint8)
    kernels.tile(src, out, 64, rows=order, first_row=40)
    expected = np.full((96, 64), 0x5A5A, dtype=np.uint16)
    expected[40:88, :40] = bf16_reference(src[order].view(np.uint32))
    expected[40:88, 40:] = 0
    tiled = expected.reshape(3, 2, 16, 2, 2, 16).transpose(0, 3, 1, 4, 2, 5).reshape(-1)
    assert out.view(np.uint16).tobytes() == tiled.tobytes()


@pytest.mark.parametrize("nbytes", [0, 1, 4097, 1 << 20])
def test_aligned_empty_starts_on_a_page(nbytes):
    buffer = kernels.aligned_empty(nbytes)
    assert buffer.dtype == np.uint8 and buffer.size == nbytes and buffer.ctypes.data % 4096 == 0


def test_the_fallback_stages_only_what_jax_would_copy():
    from ttconv import fallback

    aligned = kernels.aligned_empty(32 * 64 * 4).view(np.uint32).reshape(32, 64)
    assert fallback._staged(aligned) is aligned
    shifted = kernels.aligned_empty(32 * 64 * 4 + 4)[4:].view(np.uint32).reshape(32, 64)
    for block in (shifted, aligned[:, :32]):  # off XLA_ALIGNMENT; not contiguous
        staged = fallback._staged(block)
        assert staged.ctypes.data % 4096 == 0 and np.array_equal(staged, block)


def test_the_fallback_pads_rows_in_the_buffer_a_block_lies_in_when_it_has_room():
    from ttconv import fallback

    buffer = kernels.aligned_empty(64 * 32 * 4)
    block = buffer[:40 * 32 * 4].view(np.uint32).reshape(40, 32)
    block[:] = np.arange(40 * 32, dtype=np.uint32).reshape(40, 32)
    padded = fallback._staged(block, 64)
    assert padded.shape == (64, 32) and padded.ctypes.data == block.ctypes.data
    assert np.array_equal(padded[:40], block)
    at_the_end = buffer[24 * 32 * 4:].view(np.uint32).reshape(40, 32)  # no room for 256 rows: copied
    padded = fallback._staged(at_the_end, 256)
    assert padded.shape == (256, 32) and not np.shares_memory(padded, buffer)
    assert np.array_equal(padded[:40], at_the_end)


def rope_order(n_heads, head_dim):
    """Source rows of the RoPE interleave, as the directory writer picks them (written out by hand)."""
    order = []
    for head in range(n_heads):
        for i in range(head_dim // 2):
            order += [head * head_dim + i, head * head_dim + head_dim // 2 + i]
    return np.array(order, dtype=np.uint32)


def test_the_fallback_tells_the_rope_interleave_of_whole_heads_from_other_orders():
    from ttconv import fallback

    assert fallback._whole_heads(rope_order(4, 16), 64) == 4
    assert fallback._whole_heads(rope_order(1, 64), 64) == 1
    near_miss = rope_order(4, 16)
    near_miss[[6, 7]] = near_miss[[7, 6]]
    assert fallback._whole_heads(near_miss, 64) == 0
    assert fallback._whole_heads(rope_order(4, 16), 96) == 0  # not every source row
    assert fallback._whole_heads(np.arange(64, dtype=np.uint32)[::-1].copy(), 64) == 0


@pytest.mark.parametrize("kind", ["f32", "bf16"])
def test_tile_rope_interleave_and_other_orders(backend, kind):
    src = sources(64, 48, seed=12)[kind]
    bits = f32_bits_reference(src)
    near_miss = rope_order(4, 16)
    near_miss[[6, 7]] = near_miss[[7, 6]]
    for order in (rope_order(4, 16), rope_order(2, 32), near_miss):
        out = np.zeros(64 * 64 * 2, dtype=np.uint8)
        nonfinite = kernels.tile(src, out, 64, rows=order)
        expected = tiled_reference(bf16_reference(bits[order]), 64, 64, np.uint16)
        assert out.view(np.uint16).tobytes() == expected.tobytes()
        assert nonfinite == int(np.count_nonzero((bits & 0x7F800000) == 0x7F800000))


@pytest.mark.parametrize("kind", ["f32", "bf16"])
def test_tile_reads_a_reused_page_aligned_source_afresh(backend, kind):
    """The fallback hands an aligned source to jax without copying it: refilling the buffer between
    two calls must show in the second one's output (rows in order from an offset, as a directory's
    block is tiled)."""
    buffer = kernels.aligned_empty(64 * 96 * 4)
    for seed in (1, 2):
        src = sources(64, 96, seed=seed)[kind]
        source = buffer[:src.nbytes].view(src.dtype).reshape(src.shape)
        source[:] = src
        out = np.zeros(32 * 96 * 2, dtype=np.uint8)
        kernels.tile(source, out, 96, rows=np.arange(32, 64))
        expected = tiled_reference(bf16_reference(f32_bits_reference(src[32:64])), 32, 96, np.uint16)
        assert out.view(np.uint16).tobytes() == expected.tobytes()


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
def test_tile_transposed(backend, kind):
    src = sources(50, 36, seed=5)[kind]  # a [in, out] Conv1D weight: output rows are its columns
    out = np.zeros(64 * 64 * 2, dtype=np.uint8)
    nonfinite = kernels.tile(src, out, 64, transposed=True)
    bits = f32_bits_reference(src)
    expected = tiled_reference(bf16_reference(bits.T.copy()), 64, 64, np.uint16)
    assert out.view(np.uint16).tobytes() == expected.tobytes()
    assert nonfinite == int(np.count_nonzero((bits & 0x7F800000) == 0x7F800000))


@pytest.mark.parametrize("kind", ["f32", "bf16"])
@pytest.mark.parametrize("transposed", [False, True])
def test_tile_of_a_block_with_nonfinite_values_after_it(backend, kind, transposed):
    """Consecutive rows of a larger source (as the directory writer reads them) whose further rows (of a
    transpose: columns) are Inf and NaN: neither their values nor their count reach the result, also
    where the fallback pads a block's rows to share a program between sizes."""
    first, count = 32, 160  # five tile rows: the fallback pads them to six
    whole = sources(first + count + 64, 80, seed=13)[kind].copy()
    words = whole.view(np.uint32 if kind == "f32" else np.uint16)
    inf, nan = (0x7F800000, 0xFFFFFFFF) if kind == "f32" else (0x7F80, 0xFFFF)
    words[first + count:, 0::2], words[first + count:, 1::2] = inf, nan
    words[first + 5, 7] = inf  # one among the rows tiled
    source = whole.T.copy() if transposed else whole
    out = np.zeros(count * 96 * 2, dtype=np.uint8)
    nonfinite = kernels.tile(source, out, 96, rows=np.arange(first, first + count), transposed=transposed)
    bits = f32_bits_reference(whole[first:first + count])
    assert nonfinite == int(np.count_nonzero((bits & 0x7F800000) == 0x7F800000)) >= 1
    expected = tiled_reference(bf16_reference(bits), count, 96, np.uint16)
    assert out.view(np.uint16).tobytes() == expected.tobytes()


@pytest.mark.parametrize("kind", ["f32", "bf16"])
@pytest.mark.parametrize("transposed", [False, True])
def test_tile_rounds_every_bit_pattern_in_every_lane(backend, kind, transposed):
    """Random bits (NaNs with payloads, infinities, subnormals) and ties at every position of the
    16-value groups the C kernel rounds together."""
    rng = np.random.default_rng(17)
    bits = rng.integers(0, 1 << 32, (64, 96), dtype=np.uint64).astype(np.uint32)
    bits[::3] = (bits[::3] & 0xFFFF0000) | 0x8000  # exact ties between two bfloat16 values
    bits[1::7] |= 0x7F800000  # NaNs and infinities, a sign bit either way
    src = bits.view(np.float32) if kind == "f32" else (bits >> 16).astype(np.uint16)
    out = np.zeros(96 * 96 * 2, dtype=np.uint8)
    nonfinite = kernels.tile(src, out, 96, transposed=transposed)
    wide = f32_bits_reference(src)
    wide = wide.T.copy() if transposed else wide
    expected = tiled_reference(bf16_reference(wide), 96, 96, np.uint16)
    assert out.view(np.uint16)[:expected.size].tobytes() == expected.tobytes()
    assert nonfinite == int(np.count_nonzero((wide & 0x7F800000) == 0x7F800000))


def test_tile_checks_its_arguments_before_calling_c(backend):
    src = np.zeros((4, 40), dtype=np.float32)
    with pytest.raises(ValueError, match="multiple of 32"):
        kernels.tile(src, np.zeros(4096, dtype=np.uint8), 40)
    with pytest.raises(ValueError, match="room for 1 tile rows"):
        kernels.tile(src, np.zeros(100, dtype=np.uint8), 64)
    with pytest.raises(ValueError, match="outside"):
        kernels.tile(src, np.zeros(64 * 32 * 2, dtype=np.uint8), 64, rows=[4])


@pytest.mark.parametrize("kind", ["f32", "bf16"])
@pytest.mark.parametrize("out_dtype", ["bf16", "f32"])
def test_tile_transposed_rows_at_an_offset(backend, kind, out_dtype):
    """Consecutive source columns from a face boundary on go 16 at a time; the rest one by one."""
    src = sources(70, 45, seed=6)[kind]  # [in, out]: output rows are columns 3..44
    rows = np.arange(3, 45)
    out = np.full(64 * 96 * (2 if out_dtype == "bf16" else 4), 0x33, dtype=np.uint8)
    kernels.tile(src, out, 96, rows=rows, first_row=8, transposed=True, out_dtype=out_dtype)
    bits = f32_bits_reference(src).T[rows]
    words = np.uint16 if out_dtype == "bf16" else np.uint32
    expected = np.full((64, 96), 0x3333 if out_dtype == "bf16" else 0x33333333, dtype=words)
    expected[8:8 + len(rows)] = 0
    expected[8:8 + len(rows), :70] = bf16_reference(bits.copy()) if out_dtype == "bf16" else bits
    tiled = expected.reshape(2, 2, 16, 3, 2, 16).transpose(0, 3, 1, 4, 2, 5).reshape(-1)
    assert out.view(words).tobytes() == tiled.tobytes()


@pytest.mark.parametrize("kind", ["f32", "bf16"])
@pytest.mark.parametrize("out_dtype", ["bf16", "f32"])
def test_tile_transposed_long_runs_with_a_jump(backend, kind, out_dtype):
    """Runs of many 16-row bands (taken 16 source rows at a time across the bands), cut where the
    source columns jump, over 83 source rows (five whole groups of 16 and three left)."""
    src = sources(83, 160, seed=9)[kind]
    rows = np.concatenate([np.arange(0, 70), np.arange(100, 150)])
    out = np.full(128 * 96 * (2 if out_dtype == "bf16" else 4), 0x33, dtype=np.uint8)
    kernels.tile(src, out, 96, rows=rows, transposed=True, out_dtype=out_dtype)
    bits = f32_bits_reference(src).T[rows]
    words = np.uint16 if out_dtype == "bf16" else np.uint32
    expected = np.full((128, 96), 0x3333 if out_dtype == "bf16" else 0x33333333, dtype=words)
    expected[:len(rows)] = 0
    expected[:len(rows), :83] = bf16_reference(bits.copy()) if out_dtype == "bf16" else bits
    tiled = expected.reshape(4, 2, 16, 3, 2, 16).transpose(0, 3, 1, 4, 2, 5).reshape(-1)
    assert out.view(words).tobytes() == tiled.tobytes()


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("out_dtype", ["bf16", "f32"])
@pytest.mark.parametrize("rows,cols", [(1, 128), (3, 1100)])
def test_tile_picked_columns(backend, kind, out_dtype, rows, cols):
    """A q/k norm vector's RoPE interleave: output column 2i is column i, 2i+1 column cols/2 + i
    (1100 columns cross the kernel's 1024-column segments)."""
    src = sources(rows, cols, seed=cols)[kind]
    columns = np.arange(cols).reshape(2, cols // 2).T.reshape(-1)
    padded_cols = -(-cols // 32) * 32
    words = np.uint16 if out_dtype == "bf16" else np.uint32
    out = np.zeros(32 * padded_cols * np.dtype(words).itemsize, dtype=np.uint8)
    kernels.tile(src, out, padded_cols, out_dtype=out_dtype, columns=columns)
    bits = f32_bits_reference(src)[:, columns].copy()
    expected = bf16_reference(bits) if out_dtype == "bf16" else bits
    assert out.view(words).tobytes() == tiled_reference(expected, 32, padded_cols, words).tobytes()


def test_tile_checks_picked_columns(backend):
    src = np.zeros((1, 40), dtype=np.float32)
    with pytest.raises(ValueError, match="column 40 is outside the source's 40 columns"):
        kernels.tile(src, np.zeros(64 * 32 * 2, dtype=np.uint8), 64, columns=[0, 40])


# ---------------------------------------------------------------- gather (export)

def f16_reference(bits):
    """float16 bits by numpy's round to nearest even; a NaN becomes quiet, keeping its sign and the top
    ten bits of its payload."""
    with np.errstate(invalid="ignore", over="ignore"):
        out = bits.view(np.float32).astype(np.float16).view(np.uint16).copy()
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    out[nan] = ((bits >> 16) & 0x8000 | 0x7E00 | (bits >> 13) & 0x3FF)[nan].astype(np.uint16)
    return out


def converted_reference(src, kind, out_dtype):
    """Output bytes of source values (kind) as out_dtype: bits kept where the dtypes agree."""
    if kind == out_dtype:
        return src.view(np.uint32 if kind == "f32" else np.uint16)
    bits = f32_bits_reference(src)
    return {"f32": bits, "bf16": bf16_reference(bits), "f16": f16_reference(bits)}[out_dtype]


def msgpack_bytes(f32):
    """msgpack float32 values (0xca + big-endian bits), as a uint8 array."""
    return np.frombuffer(msgpack_reference(f32.view(np.uint32)), dtype=np.uint8)


# (source kind, tiled): msgpack values are never tiled
GATHER_SOURCES = [(kind, tiled) for kind in ("f32", "f16", "bf16") for tiled in (False, True)] + [("msgpack", False)]


@pytest.mark.parametrize("kind,tiled", GATHER_SOURCES)
@pytest.mark.parametrize("out_dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("transposed", [False, True])
def test_gather_matches_numpy(backend, kind, out_dtype, tiled, transposed):
    rows, cols = 96, 128
    values = sources(rows, cols, seed=7)["f32" if kind == "msgpack" else kind]
    stored = tiled_reference(values, rows, cols, values.dtype) if tiled else values
    if kind == "msgpack":
        stored = msgpack_bytes(values)
    rng = np.random.default_rng(11)
    columns = rng.permutation(rows if transposed else cols)[:29].astype(np.uint32)
    matrix = values.T if transposed else values
    # picked rows at random, and runs of consecutive ones (a transpose takes those 64 at a time), on a
    # face boundary and off it
    pickings = (rng.permutation(cols if transposed else rows)[:37], np.arange(16, 94), np.arange(3, 70))
    full = rows if transposed else cols  # every column: rows copied whole where nothing changes their bytes
    for picked, cols_of, width in [(p.astype(np.uint32), c, w) for p in pickings
                                   for c, w in ((columns, len(columns)), (None, 50), (None, full))]:
        out = np.zeros(len(picked) * width * 4, dtype=np.uint8)
        assert kernels.gather(stored, kind, cols, picked, out, out_dtype, tiled=tiled, columns=cols_of, cols=width,
                              transposed=transposed)
        chosen = matrix[picked][:, cols_of if cols_of is not None else slice(0, width)]
        expected = converted_reference(np.ascontiguousarray(chosen), "f32" if kind == "msgpack" else kind, out_dtype)
        assert out[:expected.nbytes].tobytes() == expected.tobytes()


# Gathers on the fallback in a fresh interpreter; reports whether they matched numpy and imported jax.
ROW_COPY_PROBE = """
import json, sys
import numpy as np
from ttconv import kernels
rng = np.random.default_rng(5)
f32 = rng.standard_normal((64, 48)).astype(np.float32)
bf16 = (f32.view(np.uint32) >> 16).astype(np.uint16)
rope = np.arange(64, dtype=np.uint32).reshape(4, 2, 8).transpose(0, 2, 1).reshape(-1)  # heads of 16 rows
columns = rope[:48] % 48
ok = []
for source, kind, out_dtype, width in ((f32, "f32", "bf16", 2), (bf16, "bf16", "bf16", 2), (bf16, "bf16", "f32", 4)):
    for rows, picked in ((rope, None), (np.arange(1, 2, dtype=np.uint32), columns)):
        out = np.zeros(64 * 48 * width, dtype=np.uint8)
        kernels.gather(source.reshape(-1), kind, 48, rows, out, out_dtype, columns=picked, cols=48)
        expected = source[rows][:, picked if picked is not None else slice(None)]
        if out_dtype == "f32":
            expected = (expected.astype(np.uint32) << 16).view(np.float32)
        elif kind == "f32":
            expected = ((expected.view(np.uint32) + 0x7FFF + ((expected.view(np.uint32) >> 16) & 1)) >> 16
                        ).astype(np.uint16)
        ok.append(out[:expected.nbytes].tobytes() == np.ascontiguousarray(expected).tobytes())
before = "jax" in sys.modules
if sys.argv[1] == "transposed":
    kernels.gather(f32.reshape(-1), "f32", 48, np.arange(48, dtype=np.uint32), np.zeros(64 * 48 * 4, np.uint8),
                   "f32", cols=64, transposed=True)
print(json.dumps({"ok": ok, "jax_before": before, "jax_after": "jax" in sys.modules}))
"""


def test_the_fallback_copies_rows_without_importing_jax(tmp_path):
    # a Llama or Qwen3 export from a ttml stream only copies rows (RoPE-permuted, or a q/k norm's columns),
    # perhaps rounding or widening them: jax's import, about a second, would buy nothing
    env = {**os.environ, kernels.BACKEND_ENV: "jax"}
    reports = {}
    for then in ("nothing", "transposed"):
        done = subprocess.run([sys.executable, "-c", ROW_COPY_PROBE, then], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        reports[then] = json.loads(done.stdout)
    assert reports["nothing"] == {"ok": [True] * 6, "jax_before": False, "jax_after": False}
    assert reports["transposed"]["jax_after"]  # a transpose does take jax: the probe can see it


# Tiles the 4 MB blocks of a 64 MB tensor on the fallback in a fresh interpreter, each where it lies (as
# the directory writer's reads are); reports the page faults of the fewest of three more passes over them.
BLOCK_FAULTS_PROBE = """
import resource
import numpy as np
from ttconv import kernels
source = kernels.aligned_empty(16 * 512 * 2048 * 4).view(np.float32).reshape(-1, 2048)
source[:] = 1.5
out = kernels.aligned_empty(512 * 2048 * 2)
def tile_each_block():
    for first in range(0, source.shape[0], 512):
        kernels.tile(source[first:first + 512], out, 2048, out_dtype="bf16")
tile_each_block()
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tile_each_block()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the fallback tunes glibc's malloc only")
def test_the_fallback_reuses_freed_memory_for_its_outputs(tmp_path):
    # jax allocates each program's outputs anew; returned to the system and faulted in again, their
    # pages cost half of the fallback's throughput (130-300 faults per block without ttconv's malloc settings)
    env = {**os.environ, kernels.BACKEND_ENV: "jax"}
    done = subprocess.run([sys.executable, "-c", BLOCK_FAULTS_PROBE], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 16 * 10


@pytest.mark.parametrize("kind,tiled", GATHER_SOURCES[:-1])
@pytest.mark.parametrize("transposed", [False, True])
def test_gather_from_a_block_with_garbage_after_it(backend, kind, tiled, transposed):
    """A block read into a larger buffer (as tt.rows reads): what lies after it (NaN and Inf patterns
    here) must not reach the output, also where the fallback pads the block's rows in place."""
    rows, cols = 96, 64
    values = sources(rows, cols, seed=9)[kind]
    stored = tiled_reference(values, rows, cols, values.dtype) if tiled else values
    buffer = kernels.aligned_empty(2 * stored.nbytes)
    buffer[:] = 0xFF
    block = buffer[:stored.nbytes].view(stored.dtype)
    block[:] = stored.reshape(-1)
    picked = np.arange(5, 60, dtype=np.uint32) if transposed else np.arange(32, 96, dtype=np.uint32)
    out = np.zeros(len(picked) * (rows if transposed else cols) * 4, dtype=np.uint8)
    width = rows if transposed else cols
    assert kernels.gather(block, kind, cols, picked, out, "f32", tiled=tiled, cols=width, transposed=transposed)
    matrix = values.T if transposed else values
    expected = converted_reference(np.ascontiguousarray(matrix[picked]), kind, "f32")
    assert out.tobytes() == expected.tobytes()


@pytest.mark.parametrize("kind,tiled", GATHER_SOURCES)
def test_transposed_gather_of_a_few_columns_of_a_wide_source(backend, kind, tiled):
    """A call that picks a few source columns of a wide matrix (the fallback narrows the source to
    them, whole tiles of a tiled one): in the middle, at the right edge, and one column."""
    rows, cols = 64, 512
    values = sources(rows, cols, seed=12)["f32" if kind == "msgpack" else kind]
    stored = msgpack_bytes(values) if kind == "msgpack" else tiled_reference(values, rows, cols, values.dtype) \
        if tiled else values
    for picked in (np.arange(200, 230), np.arange(470, 512)[::-1], np.array([77])):
        out = np.zeros(len(picked) * rows * 4, dtype=np.uint8)
        assert kernels.gather(stored, kind, cols, picked.astype(np.uint32), out, "f32", tiled=tiled, cols=rows,
                              transposed=True)
        expected = converted_reference(np.ascontiguousarray(values.T[picked]), "f32" if kind == "msgpack" else kind,
                                       "f32")
        assert out.tobytes() == expected.tobytes(), picked[:3]


def test_gather_rounds_half_precision_edges(backend):
    bits = np.array([0x477FF000, 0x477FEFFF, 0x33000000, 0x33000001, 0x387FF000, 0x38800000, 0x00000001,
                     0x7F800000, 0xFFC00001, 0x3F808000], dtype=np.uint32)  # 65520, below it, 2^-25, ...
    values = np.stack([bits, bits[::-1]]).view(np.float32)
    cols = bits.size
    for out_dtype, reference in (("f16", f16_reference), ("bf16", bf16_reference)):
        # one whole row (rounded without the jax fallback on it) and rows picked out of order (with it)
        for rows, expected in (([0], bits), ([1, 0], np.concatenate([bits[::-1], bits]))):
            out = np.zeros(len(rows) * cols * 2, dtype=np.uint8)
            assert kernels.gather(values, "f32", cols, rows, out, out_dtype, cols=cols)
            assert out.view(np.uint16).tolist() == reference(expected).tolist(), (out_dtype, rows)
    assert f16_reference(bits[:2]).tolist() == [0x7C00, 0x7BFF]  # the reference itself: 65520 rounds to infinity


def test_gather_refuses_msgpack_values_that_are_not_float32(backend):
    encoded = msgpack_bytes(np.arange(8, dtype=np.float32)).copy()
    out = np.zeros(8 * 4, dtype=np.uint8)
    assert kernels.gather(encoded, "msgpack", 4, [0, 1], out, "f32", cols=4)
    encoded[5 * 6] = 0xCB  # not a float32 tag
    assert not kernels.gather(encoded, "msgpack", 4, [0, 1], out, "f32", cols=4)


def test_transposed_gather_refuses_msgpack_values_that_are_not_float32(backend):
    """Inside a run of 64 consecutive source columns (read 16 values of a source row at a time)."""
    encoded = msgpack_bytes(np.arange(20 * 64, dtype=np.float32)).copy()
    out = np.zeros(64 * 20 * 4, dtype=np.uint8)
    assert kernels.gather(encoded, "msgpack", 64, np.arange(64), out, "f32", cols=20, transposed=True)
    encoded[5 * (7 * 64 + 40)] = 0xCB  # row 7, column 40
    assert not kernels.gather(encoded, "msgpack", 64, np.arange(64), out, "f32", cols=20, transposed=True)


@pytest.mark.parametrize("bad", [dict(rows=[4]), dict(columns=[9]), dict(cols=9), dict(out_size=10),
                                 dict(source_cols=5), dict(tiled=True)])
def test_gather_checks_its_arguments_before_calling_c(backend, bad):
    source = np.zeros((4, 8), dtype=np.float32)
    out = np.zeros(bad.get("out_size", 64), dtype=np.uint8)
    with pytest.raises(ValueError):
        kernels.gather(source, "f32", bad.get("source_cols", 8), bad.get("rows", [0, 1]), out, "f32",
                       columns=bad.get("columns"), cols=bad.get("cols", 2), tiled=bad.get("tiled", False))
