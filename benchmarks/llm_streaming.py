"""Streaming vs in-memory pruning of a checkpoint of several GB: wall time and peak memory.

    PYTHONPATH=src .venv/bin/python benchmarks/llm_streaming.py            # ~3.8 GB fp32, see below
    PYTHONPATH=src .venv/bin/python benchmarks/llm_streaming.py --layers 4 --hidden 1024  # quick

A random LLaMA checkpoint (``synthetic_checkpoint``: one shard per block, written a block
at a time) is generated in a temporary directory, then pruned with Wanda at 50 % in child
processes, one at a time, each reporting its wall time and peak RSS (``VmHWM``):

* ``stream``: ``prune_checkpoint(src, out, calib)``, glibc's malloc as it comes;
* ``stream, mmap>=1M``: the same with ``MALLOC_MMAP_THRESHOLD_=1048576`` (tensors of 1 MiB
  and more are mmapped and returned on free: no heap fragmentation);
* ``in memory``: ``from_pretrained`` + ``prune_llm`` + ``strip`` + ``save_pretrained``;
* both again under ``RLIMIT_DATA`` = checkpoint size / 3 (``--limit``). ``RLIMIT_DATA`` caps
  private writable memory (heap, anonymous mmaps), which is where tensors live; unlike
  ``RLIMIT_AS`` it does not count read-only file maps or torch's reserved address space, and
  no cgroup is needed. The in-memory run is expected to fail there.

Finally the streamed shards are compared tensor by tensor with the in-memory result.
One run with the defaults (~16 min in all, 2 CPU cores shared with other jobs, so the
seconds are noisy; 1 torch thread per child):

    checkpoint 3.55 GiB (16 blocks of 196 MiB, fp32); calibration activations 2.0 MiB;
    RLIMIT_DATA 1.18 GiB
    run                               seconds   peak RSS    growth  growth/block
    stream                               70.4     0.95 G    0.59 G          3.1x
    stream, mmap>=1M                    131.8     0.74 G    0.38 G          2.0x
    in memory                           132.0     7.92 G    7.56 G         39.5x
    stream, mmap>=1M, RLIMIT_DATA       153.2     0.74 G    0.38 G          2.0x
    in memory, RLIMIT_DATA                7.0  failed: RuntimeError: unable to mmap 205538320
                                               bytes from file .../src/... (truncated)
    streamed == in-memory: 147/147 tensors identical

"growth" is peak RSS minus the RSS after imports. The table above was measured with
``ru_maxrss`` — which Linux carries over from the forking parent, so its peaks are upper
bounds — and against ``ru_maxrss`` after imports, which sits ~100 MB (0.5 block here) above
the current RSS, so its growth figures are low by about that; the script now takes the
current RSS (Linux's ``/proc/self/status``), with which tests/llm/test_streaming.py's 51 MB
blocks measure 2.3x streamed with mmap>=1M. In memory holds the model plus ``prune_llm``'s
rollback copy of every pruned weight (about 2x the checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CHILD = """
import json, resource, sys, time, torch, transformers
torch.set_num_threads(1)
from prunekit.llm import prune_checkpoint, prune_llm
from prunekit.sparse.masks import strip
transformers.LlamaForCausalLM  # model code imported before the baseline
mode, src, out, nsamples, seqlen, vocab = sys.argv[1:7]
calib = torch.randint(0, int(vocab), (int(nsamples), int(seqlen)),
                      generator=torch.Generator().manual_seed(0))
status = open("/proc/self/status").read()  # current RSS: ru_maxrss would hide the import peak
base = int(status.split("VmRSS:")[1].split()[0]) * 1024
start = time.perf_counter()
if mode == "stream":
    prune_checkpoint(src, out, calib, method="wanda", sparsity=0.5)
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    prune_llm(model, calib, method="wanda", sparsity=0.5)
    strip(model)
    model.save_pretrained(out)
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps({"seconds": time.perf_counter() - start, "base": base, "peak": peak}))
"""


def run_child(
    mode: str,
    src: Path,
    out: Path,
    args: argparse.Namespace,
    *,
    limit: int | None,
    env: dict,
    keep: bool = False,
) -> dict:
    """Prune ``src`` into ``out`` in a child process ("stream" or "memory"); its report."""

    def set_limit() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    argv = [sys.executable, "-c", CHILD, mode, str(src), str(out)]
    argv += [str(args.nsamples), str(args.seqlen), str(args.vocab)]
    start = time.perf_counter()
    proc = subprocess.run(
        argv, env=env, preexec_fn=set_limit, capture_output=True, text=True, check=False
    )
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        last = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:]
        return {"failed": (last or ["?"])[0][:90], "seconds": time.perf_counter() - start}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(streamed: Path, reference: Path) -> tuple[int, int]:
    """(tensors equal, tensors compared) between two checkpoints, one block at a time."""
    from prunekit.llm.shards import load_tensors, read_checkpoint

    a, b = read_checkpoint(streamed), read_checkpoint(reference)
    groups: dict[str, list[str]] = {}
    for name in a:
        parts = name.split(".")
        groups.setdefault(".".join(parts[:3]) if parts[1:2] == ["layers"] else name, []).append(
            name
        )
    same = total = 0
    for names in groups.values():
        x = load_tensors(a[n] for n in names)
        y = load_tensors(b[n] for n in names if n in b)
        for n in names:
            total += 1
            same += int(n in y and torch.equal(x[n], y[n]))
    return same, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--nsamples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=64)
    parser.add_argument("--limit", type=float, default=1 / 3, help="RLIMIT_DATA / checkpoint")
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    args = parser.parse_args()

    import transformers

    from prunekit.llm.streaming import synthetic_checkpoint

    work = Path(tempfile.mkdtemp(prefix="prunekit-stream-", dir=args.dir))
    try:
        config = transformers.LlamaConfig(
            hidden_size=args.hidden,
            intermediate_size=args.intermediate,
            num_hidden_layers=args.layers,
            num_attention_heads=args.hidden // 128,
            vocab_size=args.vocab,
        )
        free = shutil.disk_usage(work).free
        h, m = args.hidden, args.intermediate
        block = (4 * h * h + 3 * h * m + 2 * h) * 4
        size_guess = block * args.layers + 2 * args.vocab * h * 4
        if free < 3 * size_guess:
            sys.exit(f"{work}: {free / 1e9:.1f} GB free, need {3 * size_guess / 1e9:.1f} GB")
        start = time.perf_counter()
        size = synthetic_checkpoint(config, work / "src")
        made = time.perf_counter() - start
        acts = args.nsamples * args.seqlen * h * 4
        limit = int(size * args.limit)
        print(
            f"checkpoint {size / 2**30:.2f} GiB ({args.layers} blocks of {block / 2**20:.0f} MiB,"
            f" fp32; written in {made:.0f} s); calibration activations {acts / 2**20:.1f} MiB;"
            f" RLIMIT_DATA {limit / 2**30:.2f} GiB"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        mmap_env = {**env, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
        runs = [
            ("stream", "stream", None, env),
            ("stream, mmap>=1M", "stream", None, mmap_env),
            ("in memory", "memory", None, env),
            ("stream, mmap>=1M, RLIMIT_DATA", "stream", limit, mmap_env),
            ("in memory, RLIMIT_DATA", "memory", limit, env),
        ]
        rows = []
        for label, mode, lim, run_env in runs:
            keep = mode == "memory" and lim is None  # the reference for the comparison
            out = work / ("out-memory" if keep else "out")
            report = run_child(mode, work / "src", out, args, limit=lim, env=run_env, keep=keep)
            rows.append((label, report))
            print(f"  done: {label}", flush=True)
        print(f"\n{'run':32} {'seconds':>8} {'peak RSS':>10} {'growth':>9} {'growth/block':>13}")
        for label, r in rows:
            if "failed" in r:
                print(f"{label:32} {r['seconds']:8.1f}  failed: {r['failed']}")
                continue
            growth = r["peak"] - r["base"]
            print(
                f"{label:32} {r['seconds']:8.1f} {r['peak'] / 2**30:8.2f} G "
                f"{growth / 2**30:7.2f} G {growth / block:12.1f}x"
            )
        kept = work / "out-keep"
        run_child("stream", work / "src", kept, args, limit=None, env=mmap_env, keep=True)
        same, total = compare(kept, work / "out-memory")
        print(f"streamed == in-memory: {same}/{total} tensors identical")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
