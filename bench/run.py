"""Benchmark runner: ttconv against the I/O floor, in one run, on synthetic inputs.

For each case: wall time, peak RSS (from /usr/bin/time -v), MB/s of output, and the
ratio to the I/O floor measured right after it on the same, already cached, files: the
time to read the inputs (cat the checkpoint and the init file to /dev/null) and the time
to write and fsync a file of the output's size (dd copying the init file's bytes in
1 MiB blocks). The best of --repeat runs counts for each. Two ratios: to the sequential
floor (read + write, what a program that reads and then writes pays) and to max(read,
write) (what perfect overlap of reading and writing would pay). Then a
kernel micro-benchmark: RoPE permutation + msgpack encode, C vs jax fallback vs plain
numpy, beside numpy's memcpy bandwidth.

    python bench/run.py                     # every case (needs ~35 GB of disk)
    python bench/run.py llama-155m --repeat 3
    python bench/run.py tinyllama-1.1b --backend c --backend jax
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
    """Seconds to read the inputs (cat to /dev/null) and to write and fsync a file of the
    output's size: (read, write).

    The bytes written are the init file's (cycled if the output is larger), copied by
    dd in 1 MiB blocks: this machine's virtual disk writes zeros (/dev/zero) about three
    times faster than real data, which would make the floor unreachable by any writer."""
    os.sync()
    started = time.perf_counter()
    subprocess.run(["cat", *inputs], stdout=subprocess.DEVNULL, check=True)
    read = time.perf_counter() - started
    started = time.perf_counter()
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
    write = time.perf_counter() - started
    os.unlink(scratch)
    return read, write


def run_ttconv(case, folder, output, backend):
    family = CASES[case]["family"]
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "ttconv", family, "-i", os.path.join(folder, "init.msgpack"),
           "-o", output, "--hf_model", os.path.join(folder, "checkpoint"), "--quiet"]
    env = dict(os.environ, TTCONV_BACKEND=backend)
    os.sync()  # earlier outputs' writeback must not slow this run (the floor does the same)
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
    best_tt, best_read, best_write, rss = float("inf"), float("inf"), float("inf"), 0
    for _ in range(repeat):
        if os.path.exists(output):
            os.unlink(output)  # ttconv writes a new file, as the floor does
        elapsed, peak = run_ttconv(case, folder, output, backend)
        out_bytes = os.path.getsize(output)
        read, write = io_floor(inputs, out_bytes, output + ".floor")
        best_tt, best_read, best_write = min(best_tt, elapsed), min(best_read, read), min(best_write, write)
        rss = max(rss, peak)
    os.unlink(output)
    sequential, overlapped = best_read + best_write, max(best_read, best_write)
    return {
        "case": case, "backend": backend, "seconds": best_tt, "read_seconds": best_read,
        "write_seconds": best_write, "sequential_floor": sequential, "ratio": best_tt / sequential,
        "overlapped_floor": overlapped, "overlapped_ratio": best_tt / overlapped,
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
    parser.add_argument("--backend", action="append", choices=["c", "jax"],
                        help="backend(s) to run ttconv on; repeat for both (default: c)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    args.backend = args.backend or ["c"]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")

    rows = [bench_case(case, args.out, args.repeat, backend)
            for case in args.cases or CASES for backend in args.backend]
    print("| case | backend | input MB | output MB | ttconv s | read s | write+fsync s | "
          "ratio to read+write | ratio to max(read, write) | peak RSS MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['backend']} | {r['input_mb']:.0f} | {r['output_mb']:.0f} | {r['seconds']:.2f} | "
              f"{r['read_seconds']:.2f} | {r['write_seconds']:.2f} | {r['ratio']:.2f}x | "
              f"{r['overlapped_ratio']:.2f}x | {r['peak_rss_mb']:.0f} |")
    for case in args.cases or CASES:
        if case in UPSTREAM:
            print(f"\nupstream {case}: {UPSTREAM[case]}")
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
