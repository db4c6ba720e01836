"""Expert pruning of a small trained Mixtral: perplexity after dropping experts, by how they
are chosen (``pk.drop_experts``).

A random-init ``MixtralForCausalLM`` (byte vocabulary, 8 experts per layer, top-2 routing,
no load-balancing loss, so the router's usage is uneven as in most fine-tuned MoEs) is
trained for ``--steps`` steps on byte-tokenized English from Debian's ``fortunes`` package
(a synthetic Markov text when that is absent; ``benchmarks/llm.py``'s trainer). Fresh copies
then lose 2 and 4 of each layer's 8 experts, chosen by routing frequency (the default),
mean routing probability, at random (median over ``--draws`` draws) and, as the opposite
control, the most routed ones. Calibration: ``--nsamples`` windows of the training text;
perplexity on held-out text. "params" counts all parameters kept (embeddings included),
"prune s" the drop_experts call (calibration forward included).

    .venv/bin/python benchmarks/experts.py            # ~70 s on 2 CPU cores
    .venv/bin/python benchmarks/experts.py --steps 50 --draws 1   # smoke run

Measured (2 CPU cores, 1000 steps, final loss 1.96; dense perplexity 6.61): dropping 2 of 8
experts per layer (params 0.78x) by routing frequency gives 1.03x the dense perplexity, by
mean probability 1.02x, at random 1.27x (median of 5), the most routed 1.99x; dropping 4 of 8
(0.56x params): 1.08x, 1.08x, 1.52x and 2.61x.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from llm import byte_corpus, train
from prunekit.llm import calibration_batches, perplexity
from prunekit.llm.experts import drop_experts, expert_usage, find_moe_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=64)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--draws", type=int, default=5, help="random draws per row")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_ids, test_ids, source = byte_corpus(args.eval_tokens)
    config = MixtralConfig(vocab_size=256, hidden_size=args.hidden,
                           intermediate_size=args.hidden * 2, num_hidden_layers=args.layers,
                           num_attention_heads=4, num_key_value_heads=2,
                           num_local_experts=args.experts, num_experts_per_tok=2,
                           max_position_embeddings=args.seqlen)
    model = MixtralForCausalLM(config)
    start = time.perf_counter()
    loss = train(model, train_ids, args.steps, args.seqlen, batch=16)
    params = sum(p.numel() for p in model.parameters())
    print(f"{source}: Mixtral hidden={args.hidden} layers={args.layers} experts={args.experts} "
          f"({params / 1e6:.2f} M params) trained {args.steps} steps in "
          f"{time.perf_counter() - start:.0f} s, final loss {loss:.3f}")
    calib = calibration_batches(train_ids, nsamples=args.nsamples, seqlen=args.seqlen, seed=1)
    usage = expert_usage(model, calib)
    for path, stats in usage.items():
        print(f"  {path} routing frequency: "
              + " ".join(f"{f:.2f}" for f in stats["frequency"]))

    def ppl(m: torch.nn.Module) -> float:
        return perplexity(m, test_ids, seqlen=args.seqlen)

    paths = [layer.path for layer in find_moe_layers(model)]
    rows = [("dense", "-", ppl(model), params, 0.0)]
    for drop in (2, 4):
        for how in ("frequency", "probability"):
            begin = time.perf_counter()
            result = drop_experts(model, drop, calib=calib, importance=how)  # type: ignore[arg-type]
            rows.append((f"drop {drop}/{args.experts}", f"least {how}", ppl(result.model),
                         result.params_after, time.perf_counter() - begin))
        most = {p: sorted(range(args.experts), key=lambda i, p=p: -usage[p]["frequency"][i])[:drop]
                for p in paths}
        result = drop_experts(model, most, calib=calib)
        rows.append((f"drop {drop}/{args.experts}", "most routed (control)", ppl(result.model),
                     result.params_after, 0.0))
        rng = random.Random(drop)
        draws = [ppl(drop_experts(model, {p: rng.sample(range(args.experts), drop)
                                          for p in paths}, calib=calib).model)
                 for _ in range(args.draws)]
        rows.append((f"drop {drop}/{args.experts}", f"random (median of {args.draws})",
                     statistics.median(draws), result.params_after, 0.0))
    dense = rows[0][2]
    print(f"\n{'experts':<10} {'chosen by':<24} {'perplexity':>10} {'x dense':>8} "
          f"{'params':>9} {'prune s':>8}")
    for label, how, value, kept, seconds in rows:
        print(f"{label:<10} {how:<24} {value:>10.3f} {value / dense:>8.2f} {kept:>9,} "
              f"{seconds:>8.2f}")
    print(f"dense model untouched by the rows above: {ppl(model) == dense}")


if __name__ == "__main__":
    main()
