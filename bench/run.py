"""Benchmark runner: ttconv against the I/O floor, in one run, on synthetic inputs.

For each case: wall time, peak RSS (from /usr/bin/time -v), MB/s of output, and the
ratio to the I/O floor measured right after it on the same, already cached, files (cat the checkpoint
and the init file to /dev/null, write and fsync a file of the output's size: dd copying
the init file's bytes in 1 MiB blocks). Then a
kernel micro-benchmark: RoPE permutation + msgpack encode, C vs jax fallback vs plain
numpy, beside numpy's memcpy bandwidth.

    python bench/run.py                     # every case (needs ~35 GB of disk)
    python bench/run.py llama-155m --repeat 3
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import CASES, generate  # noqa: E402

UPSTREAM = {"llama-155m": "46 s, 10 GB peak RSS (published measurement of llama_export.py)"}


def inputs_of(folder):
    ckpt = os.path.join(folder, "checkpoint")
    return [os.path.join(ckpt, n) for n in sorted(os.listdir(ckpt)) if n.endswith(".safetensors")] + \
        [os.path.join(folder, "init.msgpack")]


def io_floor(inputs, out_bytes, scratch):
    """cat the inputs to /dev/null, then write and fsync a file of the output's size.

    The bytes written are the init file's (cycled if the output is larger), copied by
    dd in 1 MiB blocks: this machine's virtual disk writes zeros (/dev/zero) about three
    times faster than real data, which would make the floor unreachable by any writer."""
    started = time.perf_counter()
    subprocess.run(["cat", *inputs], stdout=subprocess.DEVNULL, check=True)
    init, written = inputs[-1], 0
    open(scratch, "wb").close()
    while written < out_bytes:
        blocks = -(-min(out_bytes - written, os.path.getsize(init)) // (1 << 20))
        subprocess.run(["dd", f"if={init}", f"of={scratch}", "bs=1M", f"count={blocks}", "iflag=fullblock",
                        "oflag=append", "conv=notrunc", "status=none"], check=True)
        written = os.path.getsize(scratch)
    with open(scratch, "rb+") as f:
        f.truncate(out_bytes)
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - started
    os.unlink(scratch)
    return elapsed


def run_ttconv(case, folder, output, backend):
    family = CASES[case]["family"]
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "ttconv", family, "-i", os.path.join(folder, "init.msgpack"),
           "-o", output, "--hf_model", os.path.join(folder, "checkpoint"), "--quiet"]
    env = dict(os.environ, TTCONV_BACKEND=backend)
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"ttconv failed on {case}:\n{result.stderr}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return elapsed, rss_kb * 1024


def bench_case(case, out_dir, repeat, backend):
    folder = generate(case, out_dir)
    inputs = inputs_of(folder)
    output = os.path.join(out_dir, f"{case}.out.msgpack")
    # untimed warm-up, so that both sides read the inputs from the same (warm) page cache
    subprocess.run(["cat", *inputs], stdout=subprocess.DEVNULL, check=True)
    best_tt, best_floor, rss = float("inf"), float("inf"), 0
    for _ in range(repeat):
        if os.path.exists(output):
            os.unlink(output)  # ttconv writes a new file, as the floor does
        elapsed, peak = run_ttconv(case, folder, output, backend)
        out_bytes = os.path.getsize(output)
        best_floor = min(best_floor, io_floor(inputs, out_bytes, output + ".floor"))
        best_tt, rss = min(best_tt, elapsed), max(rss, peak)
    os.unlink(output)
    return {
        "case": case, "seconds": best_tt, "floor_seconds": best_floor, "ratio": best_tt / best_floor,
        "peak_rss_mb": rss / 1e6, "output_mb": out_bytes / 1e6, "mb_per_s": out_bytes / 1e6 / best_tt,
        "input_mb": sum(os.path.getsize(p) for p in inputs) / 1e6,
    }


def kernel_bench(rows=4096, cols=4096, heads=32):
    """GB/s (float32 input bytes per second) of RoPE permute + encode on each backend."""
    from ttconv import kernels

    src = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    gb = src.nbytes / 1e9

    def timed(fn, times=3):
        fn()
        best = float("inf")
        for _ in range(times):
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        return gb / best

    def numpy_path():
        d = rows // heads
        permuted = src.reshape(heads, 2, d // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)
        out = np.empty((src.size, 5), np.uint8)
        out[:, 0] = 0xCA
        out[:, 1:] = permuted.astype(">f4").view(np.uint8).reshape(-1, 4)
        return out

    results = {"memcpy": timed(lambda: np.copyto(np.empty_like(src), src)), "numpy": timed(numpy_path)}
    saved = kernels._kernel
    if saved is not None:
        results["c"] = timed(lambda: kernels.encode_rope(src, heads))
    kernels._kernel = None
    try:
        results["jax"] = timed(lambda: kernels.encode_rope(src, heads))
    finally:
        kernels._kernel = saved
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"cases to run (default: all of {', '.join(CASES)})")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"),
                        help="folder for generated inputs and outputs (kept between runs)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best time of each side counts")
    parser.add_argument("--backend", default="c", choices=["c", "jax"])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")

    rows = [bench_case(case, args.out, args.repeat, args.backend) for case in args.cases or CASES]
    print(f"| case | input MB | output MB | ttconv s | I/O floor s | ratio | peak RSS MB | MB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['input_mb']:.0f} | {r['output_mb']:.0f} | {r['seconds']:.2f} | "
              f"{r['floor_seconds']:.2f} | {r['ratio']:.2f}x | {r['peak_rss_mb']:.0f} | {r['mb_per_s']:.0f} |")
        if r["case"] in UPSTREAM:
            print(f"|   upstream {r['case']} | | | | | | | {UPSTREAM[r['case']]} |")
    kernel = kernel_bench()
    print()
    print("| kernel: RoPE permute + encode, 64 MB float32 | GB/s |")
    print("|---|---:|")
    for name in ("c", "jax", "numpy", "memcpy"):
        if name in kernel:
            print(f"| {name} | {kernel[name]:.2f} |")
    if "c" in kernel:
        print(f"\nC / jax throughput: {kernel['c'] / kernel['jax']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cases": rows, "kernel_gb_per_s": kernel}, f, indent=2)


if __name__ == "__main__":
    main()
