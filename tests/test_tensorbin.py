"""Writing .tensorbin files: the header ttnn 0.81.1 writes, checked against the real ttnn library."""
import numpy as np
import pytest

import ttdir_support
from ttconv import kernels
from ttconv.tt import tensorbin


def written(path, values, data_type):
    rows, cols = values.shape
    padded_rows, padded_cols = -(-rows // 32) * 32, -(-cols // 32) * 32
    out = np.zeros(padded_rows * padded_cols * (2 if data_type == tensorbin.BFLOAT16 else 4), dtype=np.uint8)
    kernels.tile(values, out, padded_cols, out_dtype="bf16" if data_type == tensorbin.BFLOAT16 else "f32")
    path.write_bytes(tensorbin.header_bytes(rows, cols, data_type) + out.tobytes())
    return path


@pytest.mark.parametrize("data_type", [tensorbin.BFLOAT16, tensorbin.FLOAT32])
@pytest.mark.parametrize("rows,cols", [(1, 1), (40, 70), (64, 32), (97, 300)])
def test_written_file_is_byte_for_byte_what_ttnn_dumps(ttnn_tool, tmp_path, backend, rows, cols, data_type):
    values = np.random.default_rng(rows * cols).standard_normal((rows, cols)).astype(np.float32)
    path = written(tmp_path / "t.tensorbin", values, data_type)
    dtype, layout, dims, loaded = ttnn_tool.read(path, tmp_path)
    assert (dtype, layout, dims) == (data_type, 1, [1, 1, rows, cols])
    expected = ttdir_support.bf16(values) if data_type == tensorbin.BFLOAT16 else values
    np.testing.assert_array_equal(loaded.reshape(rows, cols), expected)
    ttnn_tool.rewrite(path, tmp_path / "ttnn.tensorbin")
    assert (tmp_path / "ttnn.tensorbin").read_bytes() == path.read_bytes()


def test_header_puts_data_on_a_64_byte_boundary_and_reads_back(tmp_path):
    values = np.arange(33 * 65, dtype=np.float32).reshape(33, 65)
    path = written(tmp_path / "t.tensorbin", values, tensorbin.BFLOAT16)
    header = tensorbin.read_header(str(path))
    assert header.data_start % 64 == 0
    assert (header.shape, header.layout, header.tile, header.alignment) == ((1, 1, 33, 65), "TILE", (32, 32), (32, 32))
    assert (header.mesh_shape, header.distribution, header.devices) == ((1, 1), (1,), 1)
    assert header.shards[0].size == 64 * 96 * 2 and header.data_start + header.shards[0].size == header.file_size
    np.testing.assert_array_equal(tensorbin.read_tensor(header).reshape(33, 65), ttdir_support.bf16(values))
