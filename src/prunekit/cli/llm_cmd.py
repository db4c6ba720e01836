"""``prunekit llm``: prune a Hugging Face model directory — layers, heads/FFN, then weights.

Stages run in this order, each optional: drop the ``--layers`` least influential blocks,
drop the ``--experts`` least-routed experts of every mixture-of-experts layer (a count, or a
fraction such as 0.25), remove ``--heads`` / ``--ffn`` fractions of every layer's heads and
FFN neurons (config updated), then sparsify the remaining Linear weights with ``--method``
at ``--sparsity`` (or ``--pattern 2:4``). Calibration windows come from ``--calib`` (a text
file; Debian's fortunes when omitted). The result is written with ``save_pretrained`` so that
``from_pretrained`` reloads it, or with ``prunekit.save`` where the config cannot describe
it (``--prunekit-format``).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError, check_fraction
from prunekit.report.table import Column, make_console, print_table

_METHODS = ("magnitude", "wanda", "sparsegpt")

_COLUMNS = (
    Column("stage", "stage", justify="left"),
    Column("params", "params", "{:,}"),
    Column("nonzero", "non-zeros", "{:,}"),
    Column("quality", "quality", justify="right"),
    Column("seconds", "s", "{:.1f}"),
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "llm",
        help="prune a Hugging Face model directory (layers, heads, FFN, Wanda/SparseGPT)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="directory written by save_pretrained()")
    p.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    p.add_argument("--method", choices=_METHODS, default="wanda",
                   help="weight pruning solver (default wanda)")
    p.add_argument("--sparsity", type=float,
                   help="fraction of each block's Linear weights to zero, e.g. 0.5")
    p.add_argument("--pattern", default="unstructured",
                   help="unstructured (default) or N:M such as 2:4 (fixes the sparsity)")
    p.add_argument("--owl", action="store_true", help="outlier-weighted layer-wise sparsity")
    p.add_argument("--reconstruct", action="store_true",
                   help="refit after pruning: least squares after --heads/--ffn, block-wise "
                        "reconstruction after --sparsity")
    p.add_argument("--heads", type=float, default=0.0, help="fraction of heads to remove")
    p.add_argument("--ffn", type=float, default=0.0, help="fraction of FFN neurons to remove")
    p.add_argument("--layers", type=int, default=0,
                   help="number of least influential layers to remove")
    p.add_argument("--experts", type=_count_or_fraction, default=0,
                   help="experts to remove from every MoE layer: a count (2) or a fraction "
                        "(0.25), the least routed on the calibration text")
    p.add_argument("--calib", help="calibration text file (default: Debian's fortunes)")
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per window (default 256)")
    p.add_argument("--eval", dest="eval_file",
                   help="text file to score before/after: perplexity for causal LMs, "
                        "embedding cosine to the dense model (one sentence a line) for encoders")
    p.add_argument("--prunekit-format", action="store_true",
                   help="save with prunekit.save (plan + safetensors) where the HF config "
                        "cannot describe the pruned widths (e.g. BERT/GPT-2 heads)")
    p.add_argument("--stream", action="store_true",
                   help="weight pruning only, one block in memory at a time (models larger "
                        "than RAM; safetensors causal LMs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_run)


def _count_or_fraction(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a count of experts (2) or a fraction (0.25)") from None


def _check_args(args: argparse.Namespace) -> None:
    check_fraction("--heads", args.heads)
    check_fraction("--ffn", args.ffn)
    if args.sparsity is not None:
        check_fraction("--sparsity", args.sparsity)
    if args.layers < 0:
        raise ConfigError(f"--layers {args.layers}: must be >= 0 (the number of layers to drop)")
    if args.experts < 0 or (isinstance(args.experts, float) and args.experts >= 1):
        raise ConfigError(f"--experts {args.experts}: a count >= 0 or a fraction in [0, 1)")
    for flag, value in (("--nsamples", args.nsamples), ("--seqlen", args.seqlen)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: must be a positive integer")
    if args.pattern != "unstructured" and args.sparsity is None:
        from prunekit.llm.solvers import parse_pattern

        nm = parse_pattern(args.pattern)
        args.sparsity = nm.sparsity if nm is not None else None
    if args.sparsity is None and not (args.heads or args.ffn or args.layers or args.experts):
        raise ConfigError("nothing to prune: pass --sparsity (or --pattern 2:4), --heads, "
                          "--ffn, --layers or --experts")
    if args.stream:
        given = [flag for flag, on in (("--heads", args.heads), ("--ffn", args.ffn),
                                       ("--layers", args.layers),
                                       ("--experts", args.experts), ("--eval", args.eval_file),
                                       ("--prunekit-format", args.prunekit_format)) if on]
        if given:
            raise ConfigError(f"--stream prunes weights only; drop {', '.join(given)} (run "
                              "them without --stream, on a model that fits in memory)")
        if args.sparsity is None:
            raise ConfigError("--stream needs --sparsity (or --pattern 2:4)")
    for flag, on in (("--layers", args.layers), ("--experts", args.experts)):
        if args.prunekit_format and on:
            raise ConfigError(f"{flag} with --prunekit-format: the structured plan cannot "
                              f"record dropped {flag[2:]}; run {flag} on its own first")


def _read_text(path: str, flag: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{flag} {path!r} does not exist; pass a UTF-8 text file")
    text = file.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ConfigError(f"{flag} {path!r} is empty")
    return text


class _Quality:
    """Before/after score on ``--eval``: perplexity (causal LM) or embedding cosine (encoder)."""

    def __init__(self, model: nn.Module, tokenizer: Any, text: str, seqlen: int) -> None:
        head = getattr(model, "get_output_embeddings", None)
        self.causal = callable(head) and head() is not None
        self.tokenizer, self.seqlen = tokenizer, seqlen
        if self.causal:
            from prunekit.llm.calibration import tokenize

            self.ids = tokenize([text], tokenizer)
        else:
            self.sentences = [line.strip() for line in text.splitlines() if line.strip()]
            self.dense = copy.deepcopy(model)

    def __call__(self, model: nn.Module) -> str:
        if self.causal:
            from prunekit.llm.perplexity import perplexity

            return f"ppl {perplexity(model, self.ids, seqlen=self.seqlen):.2f}"
        from prunekit.llm.hf_fidelity import embedding_fidelity

        cosine = embedding_fidelity(self.dense, model, self.tokenizer, self.sentences)
        return f"cos {cosine:.4f}"


def _run(args: argparse.Namespace) -> int:
    from prunekit.io.checkpoint import save
    from prunekit.llm.api import prune_llm
    from prunekit.llm.depth import drop_layers
    from prunekit.llm.experts import drop_experts
    from prunekit.llm.hf import prune_hf
    from prunekit.llm.hf_io import load_pretrained, save_pretrained
    from prunekit.metrics.profile import count_params

    _check_args(args)
    if args.stream:
        return _run_streaming(args)
    model, tokenizer = load_pretrained(args.model, tokenizer=args.tokenizer)
    calib = _calibration(args, tokenizer)
    quality = (_Quality(model, tokenizer, _read_text(args.eval_file, "--eval"), args.seqlen)
               if args.eval_file else None)

    rows: list[dict[str, Any]] = []

    def row(stage: str, seconds: float) -> None:
        params, nonzero = count_params(model)
        rows.append({"stage": stage, "params": params, "nonzero": nonzero, "seconds": seconds,
                     "quality": quality(model) if quality is not None else "-"})

    row("dense", 0.0)
    structured: Any = None  # prune_hf's result: model + plan, for prunekit.save
    if args.layers:
        start = time.perf_counter()
        dropped = drop_layers(model, args.layers, calib=torch.cat(calib), inplace=True)
        row(f"drop layers {list(dropped.removed)}", time.perf_counter() - start)
    if args.experts:
        start = time.perf_counter()
        experts = drop_experts(model, args.experts, calib=calib, inplace=True)
        per_layer = len(next(iter(experts.removed.values())))
        row(f"drop {per_layer} experts per MoE layer", time.perf_counter() - start)
    if args.heads or args.ffn:
        start = time.perf_counter()
        result = prune_hf(model, {"input_ids": calib[0]}, heads=args.heads, ffn=args.ffn,
                          calib=torch.cat(calib), reconstruct=args.reconstruct,
                          require_reloadable=not args.prunekit_format)
        structured, model = result, result.model
        row(f"heads {args.heads:g} ffn {args.ffn:g}" + (" +LS" if args.reconstruct else ""),
            time.perf_counter() - start)
    if args.sparsity is not None:
        start = time.perf_counter()
        prune_llm(model, calib, method=args.method, sparsity=args.sparsity,
                  pattern=args.pattern, owl=args.owl, reconstruct=args.reconstruct)
        extras = "".join(s for s, on in ((" +owl", args.owl), (" +rec", args.reconstruct)) if on)
        row(f"{args.method} {args.pattern} {args.sparsity:g}{extras}",
            time.perf_counter() - start)

    print_table(f"prunekit llm: {args.model}", _COLUMNS, rows)
    console = make_console()
    if args.prunekit_format:
        save(structured or model, args.out, sparse=args.sparsity is not None)
        console.print(f"saved to {args.out}: reload with prunekit.load(dir, "
                      "AutoModel*.from_config(the original config))")
    else:
        save_pretrained(model, args.out, tokenizer=tokenizer)
        console.print(f"saved to {args.out}: reload with from_pretrained({args.out!r})")
    return 0


def _calibration(args: argparse.Namespace, tokenizer: Any) -> list[torch.Tensor]:
    from prunekit.llm.calibration import calibration_batches, default_texts

    if tokenizer is None:
        raise ConfigError(f"--model {args.model!r} holds no tokenizer; pass --tokenizer DIR")
    texts = [_read_text(args.calib, "--calib")] if args.calib else default_texts()
    return calibration_batches(texts, tokenizer=tokenizer, nsamples=args.nsamples,
                               seqlen=args.seqlen, seed=args.seed)


def _run_streaming(args: argparse.Namespace) -> int:
    from prunekit.llm.hf_io import load_tokenizer
    from prunekit.llm.streaming import prune_checkpoint

    calib = _calibration(args, load_tokenizer(args.tokenizer or args.model))
    console = make_console()

    def progress(done: int, total: int) -> None:
        console.print(f"block {done}/{total} pruned and written")

    result = prune_checkpoint(args.model, args.out, calib, method=args.method,
                              sparsity=args.sparsity, pattern=args.pattern, owl=args.owl,
                              reconstruct=args.reconstruct, progress=progress)
    console.print(f"{args.method} {args.pattern}: {result.sparsity:.1%} of the block weights "
                  f"zero, {result.seconds:.1f} s; saved to {args.out}: reload with "
                  f"from_pretrained({args.out!r})")
    return 0
