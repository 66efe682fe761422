"""bfloat16 in plain numpy: a bfloat16 value is the upper half of a float32's bits.

Held as uint16 bit patterns, so that no command needs ml_dtypes (whose import alone costs about half
a second) to round, widen or write bfloat16 values. Rounding is to nearest even and a NaN stays a
quiet NaN of the same sign, as the C kernel and its jax fallback round.
"""
import numpy as np


def round_to_bits(values):
    """bfloat16 bits (uint16) of float32 values, rounded to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) & 0x8000) | 0x7FC0
    return rounded


def widen(bits):
    """float32 values of bfloat16 bits (uint16), exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def rounded(values):
    """float32 values rounded to the nearest bfloat16 (what a bfloat16 file holds of them)."""
    return widen(round_to_bits(values))

