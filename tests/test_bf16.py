"""bfloat16 in plain numpy (ttconv.bf16) against ml_dtypes, an implementation written apart."""
import ml_dtypes
import numpy as np

from ttconv import bf16


def edge_values():
    rng = np.random.default_rng(5)
    bits = np.concatenate([
        rng.integers(0, 2 ** 32, 20000, dtype=np.uint64).astype(np.uint32),  # every kind of bit pattern
        np.array([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x00000001, 0x807FFFFF,
                  0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3F817FFF, 0x7F7F8000, 0x477FE000], dtype=np.uint32),
    ])
    return bits.view(np.float32)


def test_rounding_matches_ml_dtypes_on_every_non_nan_value():
    values = edge_values()
    finite = ~np.isnan(values)
    expected = values[finite].astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.array_equal(bf16.round_to_bits(values)[finite], expected)


def test_a_nan_stays_a_quiet_nan_of_its_sign():
    nans = np.array([0x7F800001, 0xFF800001, 0x7FC00000, 0xFFFFFFFF, 0x7FFFFFFF], dtype=np.uint32).view(np.float32)
    assert bf16.round_to_bits(nans).tolist() == [0x7FC0, 0xFFC0, 0x7FC0, 0xFFC0, 0x7FC0]


def test_widening_is_exact_and_rounded_values_are_fixed_points():
    bits = np.arange(0, 2 ** 16, dtype=np.uint32).astype(np.uint16)
    wide = bf16.widen(bits)
    assert np.array_equal(wide.view(np.uint32) >> 16, bits.astype(np.uint32))
    assert np.array_equal(wide, bits.view(ml_dtypes.bfloat16).astype(np.float32), equal_nan=True)
    finite = ~np.isnan(wide)
    assert np.array_equal(bf16.round_to_bits(wide[finite]), bits[finite])
    values = edge_values()[:1000]
    values = values[~np.isnan(values)]
    assert np.array_equal(bf16.rounded(values), values.astype(ml_dtypes.bfloat16).astype(np.float32))
