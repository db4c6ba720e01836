"""Perplexity of a small LLaMA after one-shot pruning: dense vs magnitude / Wanda / SparseGPT.

    .venv/bin/python benchmarks/llm.py                 # defaults below, ~5 min on 2 CPU cores
    .venv/bin/python benchmarks/llm.py --steps 100 --layers 2   # quicker

A random-init ``LlamaForCausalLM`` (from config; needs ``transformers``) is first trained
for ``--steps`` steps on byte-tokenized English from Debian's ``fortunes`` package, or on
a synthetic Markov-chain text when that is absent, so its weights carry signal. Each
method then prunes a fresh copy at 50 % and 70 % unstructured (plain, + OWL, + block-wise
reconstruction "rec", + both), 2:4, 4:8 and 2:4 + rec, using ``--nsamples`` calibration
windows of ``--seqlen`` tokens from the training split; perplexity is measured on a
held-out split. One table is printed. Not a test.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import time

import torch
from torch import nn

from prunekit.errors import DataError
from prunekit.llm import calibration_batches, default_texts, perplexity, prune_llm


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    try:
        texts, source = default_texts(), "fortunes"
    except DataError:
        texts, source = markov_text(120_000, seed=0), "synthetic Markov text"
    random.Random(0).shuffle(texts)
    ids = byte_ids(texts)
    split = int(0.9 * ids.numel())
    train_ids, test_ids = ids[:split], ids[split:][: args.eval_tokens]
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
        f"{source}: {ids.numel()} byte tokens; LLaMA hidden={args.hidden} layers={args.layers} "
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


if __name__ == "__main__":
    main()
