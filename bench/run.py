"""Benchmark runner: ttconv against the I/O floor, in one run, on synthetic inputs.

For each case, format and backend: wall time, peak RSS (from /usr/bin/time -v), MB/s of
output, and the ratio to the I/O floor measured right after it on the same, already cached,
files: the time to read the inputs (cat the checkpoint, and for msgpack the init file, to
/dev/null) and the time to write and fsync a file of the output's size (dd copying the init
file's bytes in 1 MiB blocks, through the page cache and with O_DIRECT: the faster counts).
msgpack fills the case's init file; flatbuffer builds a directory from config.json: a
training state (model, zero AdamW moments, scheduler; --layout training) or the model only
(--layout model; give --layout twice for both in one run). The best of --repeat runs counts for
each. Three ratios: to the sequential floor (read + write, what a program that reads and then
writes pays), the best run against the best floor and the median of the runs each against the
floor measured right after it, and to max(read, write) (what perfect overlap of reading and
writing would pay). Then a
kernel micro-benchmark: RoPE permutation + msgpack encode, C vs jax fallback vs plain
numpy, beside numpy's memcpy bandwidth. With --export: ttconv to-hf from each format instead,
against reading the tt-train input and writing the output; --format ttml (export only) starts
from a ttml.checkpointing stream written from the checkpoint as tt-train's Python side holds it
(bf16, fused qkv/gate_up for Llama, fused kv for Qwen3, NanoGPT for GPT-2). DeepSeek is written as
ttml checkpoints: its case runs `ttconv deepseek` (and with --export to-hf from that file).

    python bench/run.py                     # every case, both formats (needs ~45 GB of disk)
    python bench/run.py llama-155m --repeat 3
    python bench/run.py tinyllama-1.1b --format flatbuffer --layout training --layout model --backend c --backend jax
    python bench/run.py llama3.2-3b-bf16 --export --format flatbuffer --repeat 5
    python bench/run.py tinyllama-1.1b --export --format ttml --repeat 5
    python bench/run.py deepseek-v2-lite-bf16 --repeat 3; python bench/run.py deepseek-v2-lite-bf16 --export
"""
import argparse
import json
import mmap
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from generate import CASES, generate  # noqa: E402

UPSTREAM = {"llama-155m": "46 s, 10 GB peak RSS (published measurement of llama_export.py)"}


FORMATS = ("msgpack", "flatbuffer", "ttml")  # ttml: --export only, but DeepSeek's both ways
TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def inputs_of(folder, fmt):
    ckpt = os.path.join(folder, "checkpoint")
    files = [os.path.join(ckpt, n) for n in sorted(os.listdir(ckpt)) if n.endswith(".safetensors")]
    return files + ([os.path.join(folder, "init.msgpack")] if fmt == "msgpack" else [])


def size_of(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
    return os.path.getsize(path)


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def write_floor(source, out_bytes, scratch, direct):
    """Seconds to write and fsync out_bytes of source's bytes (cycled) with dd in 1 MiB blocks."""
    os.sync()
    started = time.perf_counter()
    written = 0
    open(scratch, "wb").close()
    flags = "append,direct" if direct else "append"
    while written < out_bytes:
        # whole MiB blocks of the source only (O_DIRECT refuses a partial one); the excess is cut below
        blocks = max(1, min(out_bytes - written + (1 << 20) - 1, os.path.getsize(source)) // (1 << 20))
        subprocess.run(["dd", f"if={source}", f"of={scratch}", "bs=1M", f"count={blocks}", "iflag=fullblock",
                        f"oflag={flags}", "conv=notrunc", "status=none"], check=True)
        written = os.path.getsize(scratch)
    with open(scratch, "rb+") as f:
        f.truncate(out_bytes)
        os.fsync(f.fileno())
    seconds = time.perf_counter() - started
    os.unlink(scratch)
    return seconds


def io_floor(inputs, out_bytes, scratch, source):
    """Seconds to read the inputs (cat to /dev/null) and to write and fsync a file of the
    output's size, the faster of buffered and O_DIRECT writing: (read, write).

    The bytes written are the source's, the init file's or, without one, the checkpoint's
    (cycled if the output is larger): this machine's virtual disk writes zeros (/dev/zero)
    about three times faster than real data, which would make the floor unreachable by any
    writer."""
    os.sync()
    started = time.perf_counter()
    subprocess.run(["cat", *inputs], stdout=subprocess.DEVNULL, check=True)
    read = time.perf_counter() - started
    write = min(write_floor(source, out_bytes, scratch, direct) for direct in (False, True))
    return read, write


def run_command(args, backend):
    """Run `python -m ttconv ARGS --quiet` under /usr/bin/time -v: (seconds, peak RSS bytes)."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "ttconv", *args, "--quiet"]
    env = dict(os.environ, TTCONV_BACKEND=backend)
    os.sync()  # earlier outputs' writeback must not slow this run (the floor does the same)
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"ttconv failed: {' '.join(args)}\n{result.stderr}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return elapsed, rss_kb * 1024


def run_ttconv(case, folder, output, backend, fmt, layout):
    family = CASES[case]["family"]
    if fmt == "ttml":  # DeepSeek: a ttml checkpoint built from config.json, the model only
        return run_command([family, "-o", output, "--hf_model", os.path.join(folder, "checkpoint")], backend)
    source = (["-i", os.path.join(folder, "init.msgpack")] if fmt == "msgpack"
              else ["--no-init", "--format", fmt, "--layout", layout])
    return run_command([family, *source, "-o", output, "--hf_model", os.path.join(folder, "checkpoint")], backend)


def files_floor(source, sizes, scratch):
    """Seconds to write and fsync files of the given sizes, one after another, in a new directory
    (then fsynced): a directory output's own files, whose creates, last partial blocks and fsyncs the
    one-file floor does not pay (1-2 ms a file here). The bytes are the source's first 64 MiB,
    cycled; the faster of buffered and O_DIRECT writes in 1 MiB blocks (O_DIRECT's last block
    padded, the file then cut to its size)."""
    block = 1 << 20
    data = mmap.mmap(-1, 64 << 20)  # page-aligned, as O_DIRECT needs
    with open(source, "rb") as f:
        data.write(f.read(len(data)))
    best = float("inf")
    for direct in (False, True):
        os.sync()
        started = time.perf_counter()
        os.mkdir(scratch)
        for number, size in enumerate(sizes):
            fd = os.open(os.path.join(scratch, str(number)), os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | (os.O_DIRECT if direct else 0), 0o644)
            done = 0
            while done < size:
                start = done % len(data)
                length = min(block, size - done, len(data) - start)
                if direct:
                    length = -(-length // 4096) * 4096
                done += os.write(fd, memoryview(data)[start:start + length])
            if direct:
                os.ftruncate(fd, size)
            os.fsync(fd)
            os.close(fd)
        fd = os.open(scratch, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        best = min(best, time.perf_counter() - started)
        shutil.rmtree(scratch)
    data.close()
    return best


def bench_case(case, out_dir, repeat, backend, fmt, layout):
    folder = generate(case, out_dir)
    inputs = inputs_of(folder, fmt)
    output = os.path.join(out_dir, f"{case}.out" + {"msgpack": ".msgpack", "ttml": ".pkl"}.get(fmt, ""))
    # untimed warm-up, so that both sides read the inputs from the same (warm) page cache
    subprocess.run(["cat", *inputs], stdout=subprocess.DEVNULL, check=True)
    best_tt, best_read, best_write, rss, ratios = float("inf"), float("inf"), float("inf"), 0, []
    best_files, files_ratios = float("inf"), []
    for _ in range(repeat):
        remove(output)  # ttconv writes a new file or directory, as the floor does
        elapsed, peak = run_ttconv(case, folder, output, backend, fmt, layout)
        out_bytes = size_of(output)
        file_sizes = [os.path.getsize(p) for p in files_of(output)] if os.path.isdir(output) else None
        remove(output)  # before the floor is written: a case needs room on the disk for one output, not two
        init = os.path.join(folder, "init.msgpack")
        source = init if os.path.exists(init) else max(inputs, key=os.path.getsize)
        read, write = io_floor(inputs, out_bytes, output + ".floor", source)
        if file_sizes is not None:  # the same files as the directory, written and fsynced one by one
            files = files_floor(source, file_sizes, output + ".files")
            best_files = min(best_files, files)
            files_ratios.append(elapsed / (read + files))
        best_tt, best_read, best_write = min(best_tt, elapsed), min(best_read, read), min(best_write, write)
        rss = max(rss, peak)
        ratios.append(elapsed / (read + write))
    sequential, overlapped = best_read + best_write, max(best_read, best_write)
    return {
        "case": case, "format": fmt if fmt in ("msgpack", "ttml") else f"{fmt} ({layout})", "backend": backend,
        "seconds": best_tt, "read_seconds": best_read,
        "write_seconds": best_write, "sequential_floor": sequential, "ratio": best_tt / sequential,
        "median_ratio": sorted(ratios)[len(ratios) // 2],
        "overlapped_floor": overlapped, "overlapped_ratio": best_tt / overlapped,
        "peak_rss_mb": rss / 1e6, "output_mb": out_bytes / 1e6, "mb_per_s": out_bytes / 1e6 / best_tt,
        "input_mb": sum(os.path.getsize(p) for p in inputs) / 1e6,
        "files_seconds": best_files if files_ratios else None,
        "median_files_ratio": sorted(files_ratios)[len(files_ratios) // 2] if files_ratios else None,
    }


def files_of(path):
    """The files of a tt-train input: a msgpack file, or every file of a directory."""
    if os.path.isdir(path):
        return [os.path.join(path, n) for n in sorted(os.listdir(path))]
    return [path]


def ttml_input(case, folder, path):
    """A ttml.checkpointing stream of the case's checkpoint, written by the tests' imitation of
    tt-train's Python side (tests/ttml_support.py), in bfloat16 as ttml saves it."""
    import ml_dtypes
    from safetensors import safe_open

    sys.path.insert(0, TESTS)
    import ttml_support

    checkpoint = os.path.join(folder, "checkpoint")
    config = json.load(open(os.path.join(checkpoint, "config.json")))
    tensors = {}
    for name in sorted(os.listdir(checkpoint)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(checkpoint, name), "numpy") as handle:
                for key in handle.keys():
                    tensors[key] = handle.get_tensor(key).astype(np.float32)
    family = CASES[case]["family"]
    if family == "llama":
        model = ttml_support.llama_model(config, tensors, fused=True, order="module")
    elif family == "qwen3":
        model = ttml_support.qwen3_model(config, tensors, "kv", order="module")
    else:
        model = ttml_support.nanogpt_model(config, tensors, order="module")
    del tensors
    ttml_support.write_stream(path, {k: v.astype(ml_dtypes.bfloat16) for k, v in model.items()}, header={"step": 0})


def export_input(case, folder, out_dir, fmt):
    """The tt-train side an export starts from, written once (untimed) and kept: the case's init file
    filled (msgpack) or a model directory built from config.json (flatbuffer) by ttconv itself, or a
    ttml stream (ttml_input)."""
    path = os.path.join(out_dir, f"{case}.tt" + {"msgpack": ".msgpack", "flatbuffer": "", "ttml": ".pkl"}[fmt])
    if os.path.exists(path):
        return path
    if fmt == "ttml" and CASES[case]["family"] == "deepseek":  # ttconv's own ttml checkpoint of it
        subprocess.run([sys.executable, "-m", "ttconv", "deepseek", "-o", path, "--hf_model",
                        os.path.join(folder, "checkpoint"), "--quiet"], check=True)
        return path
    if fmt == "ttml":
        ttml_input(case, folder, path)
        return path
    family = CASES[case]["family"]
    source = (["-i", os.path.join(folder, "init.msgpack")] if fmt == "msgpack"
              else ["--no-init", "--format", "flatbuffer", "--layout", "model"])
    subprocess.run([sys.executable, "-m", "ttconv", family, *source, "-o", path, "--hf_model",
                    os.path.join(folder, "checkpoint"), "--quiet"], check=True)
    return path


def bench_export(case, out_dir, repeat, backend, fmt):
    """ttconv to-hf (default options) from the case's tt-train side against the floor: reading that input,
    writing and fsyncing the output's bytes."""
    folder = generate(case, out_dir)
    tt_path = export_input(case, folder, out_dir, fmt)
    inputs = files_of(tt_path)
    output = os.path.join(out_dir, f"{case}.hf")
    subprocess.run(["cat", *inputs], stdout=subprocess.DEVNULL, check=True)
    cmd = ["to-hf", CASES[case]["family"], tt_path, "--hf_model", os.path.join(folder, "checkpoint"), "-o", output]
    best_tt, best_read, best_write, rss, times, ratios = float("inf"), float("inf"), float("inf"), 0, [], []
    for _ in range(repeat):
        remove(output)
        # the floor reads cached inputs: ttconv gets them cached too (the last floor's writes may have evicted them)
        subprocess.run(["cat", *inputs], stdout=subprocess.DEVNULL, check=True)
        elapsed, peak = run_command(cmd, backend)
        times.append(elapsed)
        out_bytes = size_of(output)
        shards = len([n for n in os.listdir(output) if n.endswith(".safetensors")])
        remove(output)  # before the floor is written: a case needs room on the disk for one output, not two
        # the largest input gives the floor's bytes (dd of a small file would pay per-call overhead instead)
        read, write = io_floor(inputs, out_bytes, output + ".floor", max(inputs, key=os.path.getsize))
        best_tt, best_read, best_write = min(best_tt, elapsed), min(best_read, read), min(best_write, write)
        rss = max(rss, peak)
        ratios.append(elapsed / (read + write))
    sequential, overlapped = best_read + best_write, max(best_read, best_write)
    return {
        "case": case, "format": f"to-hf from {fmt} ({shards} shard{'s' if shards > 1 else ''})", "backend": backend,
        "seconds": best_tt, "median_seconds": sorted(times)[len(times) // 2], "read_seconds": best_read,
        "write_seconds": best_write, "sequential_floor": sequential, "ratio": best_tt / sequential,
        "median_ratio": sorted(ratios)[len(ratios) // 2],
        "overlapped_floor": overlapped, "overlapped_ratio": best_tt / overlapped,
        "peak_rss_mb": rss / 1e6, "output_mb": out_bytes / 1e6, "mb_per_s": out_bytes / 1e6 / best_tt,
        "input_mb": sum(os.path.getsize(p) for p in inputs) / 1e6,
    }


def kernel_bench(rows=4096, cols=4096, heads=32):
    """GB/s (float32 input bytes per second) of RoPE permute + encode (msgpack) and of RoPE permute +
    round + tile (directories) on each backend and in plain numpy."""
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

    def numpy_tile():
        import ml_dtypes

        d = rows // heads
        permuted = src.reshape(heads, 2, d // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)
        halves = permuted.astype(ml_dtypes.bfloat16)
        return halves.reshape(rows // 32, 2, 16, cols // 32, 2, 16).transpose(0, 3, 1, 4, 2, 5).copy()

    d = rows // heads
    order = np.arange(rows).reshape(heads, 2, d // 2).transpose(0, 2, 1).reshape(-1)
    tiled = np.empty(src.size * 2, dtype=np.uint8)
    operations = {"encode": lambda: kernels.encode_rope(src, heads),
                  "tile": lambda: kernels.tile(src, tiled, cols, rows=order)}
    results = {"memcpy": timed(lambda: np.copyto(np.empty_like(src), src)),
               "encode": {"numpy": timed(numpy_path)}, "tile": {"numpy": timed(numpy_tile)}}
    saved = kernels._kernel
    for backend in ("c", "jax"):
        if backend == "c" and saved is None:
            continue
        kernels._kernel = saved if backend == "c" else None
        try:
            for name, operation in operations.items():
                results[name][backend] = timed(operation)
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
    parser.add_argument("--format", action="append", choices=FORMATS, dest="formats",
                        help="output format(s); repeat for both (default: both)")
    parser.add_argument("--layout", action="append", choices=["training", "model"], dest="layouts",
                        help="what a flatbuffer case builds: a training state (its zero moments cost no writes: "
                             "they are holes) or the model only; repeat for both (default: training)")
    parser.add_argument("--export", action="store_true",
                        help="measure ttconv to-hf instead: from a msgpack file (the case's init file filled) and "
                             "from a model directory, both written by ttconv first and kept in --out")
    parser.add_argument("--kernel", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the kernel micro-benchmark (default: yes)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    args.backend = args.backend or ["c"]
    args.formats = args.formats or list(FORMATS)
    args.layouts = args.layouts or ["training"]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")

    def has_msgpack(case):  # no msgpack has Qwen3; the 3B case has no init file
        return CASES[case]["family"] != "qwen3" and CASES[case].get("init", True)

    def has_ttml(case):  # the 3B case has no ttml stream
        return args.export and CASES[case].get("ttml", True)

    def measured(case, fmt):  # DeepSeek is ttml only, both ways; the others are read from ttml only
        if CASES[case]["family"] == "deepseek":
            return fmt == "ttml"
        return (fmt != "msgpack" or has_msgpack(case)) and (fmt != "ttml" or has_ttml(case))

    def layouts(fmt):  # a conversion into directories runs once per layout; nothing else has one
        return args.layouts if fmt == "flatbuffer" and not args.export else [None]

    measure = bench_export if args.export else bench_case
    rows = [measure(case, args.out, args.repeat, backend, fmt, *([] if args.export else [layout]))
            for case in args.cases or CASES for fmt in args.formats for layout in layouts(fmt)
            for backend in args.backend if measured(case, fmt)]
    files = any(r.get("files_seconds") for r in rows)  # directories written: their own files' floor too
    print("| case | format | backend | input MB | output MB | ttconv s | read s | write+fsync s | "
          "ratio to read+write | median ratio (each run to its floor) | ratio to max(read, write) | "
          + ("its files s | median ratio to read + its files | " if files else "") + "peak RSS MB |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if files else "") + "---:|")
    for r in rows:
        own = (f"{r['files_seconds']:.2f} | {r['median_files_ratio']:.2f}x | " if r.get("files_seconds")
               else "– | – | ")
        print(f"| {r['case']} | {r['format']} | {r['backend']} | {r['input_mb']:.0f} | {r['output_mb']:.0f} | "
              f"{r['seconds']:.2f} | "
              f"{r['read_seconds']:.2f} | {r['write_seconds']:.2f} | {r['ratio']:.2f}x | {r['median_ratio']:.2f}x | "
              f"{r['overlapped_ratio']:.2f}x | " + (own if files else "") + f"{r['peak_rss_mb']:.0f} |")
    if args.export:
        print("\nmedian of the runs, ttconv s: " + ", ".join(f"{r['case']} {r['format']} {r['backend']} "
                                                          f"{r['median_seconds']:.2f}" for r in rows))
    for case in args.cases or CASES:
        if case in UPSTREAM and not args.export:
            print(f"\nupstream {case}: {UPSTREAM[case]}")
    if not args.kernel:
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"cases": rows}, f, indent=2)
        return
    kernel = kernel_bench()
    for name, what in (("encode", "RoPE permute + msgpack encode"), ("tile", "RoPE permute + bf16 round + tile")):
        print()
        print(f"| kernel: {what}, 64 MB float32 | GB/s |")
        print("|---|---:|")
        for backend in ("c", "jax", "numpy"):
            if backend in kernel[name]:
                print(f"| {backend} | {kernel[name][backend]:.2f} |")
        if "c" in kernel[name]:
            print(f"\nC / jax throughput: {kernel[name]['c'] / kernel[name]['jax']:.1f}x")
    print(f"\nmemcpy: {kernel['memcpy']:.2f} GB/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cases": rows, "kernel_gb_per_s": kernel}, f, indent=2)


if __name__ == "__main__":
    main()
