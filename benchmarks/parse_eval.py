"""Score the prompt parsers against gold bindings.

Usage: .venv/bin/python benchmarks/parse_eval.py GOLD.jsonl [--errors CONFIG] [--source SOURCE]

Prints precision / recall / F1 / exact match per source, for the hand-annotated subset and overall, for both
modes with every installed spaCy model, and for the built-in fallback parser. Scoring follows
``shared/data/README.md`` (see ``parsers/scoring.py``). ``--errors robust:en_core_web_sm`` lists the prompts
that configuration gets wrong.

Speed: the process is pinned to one CPU core (where the OS allows it), every model is loaded before timing,
and a last section prints ms/prompt for robust mode with the default model after the model load (mean,
median, p95, max over the gold prompts; spaCy runs single-threaded).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from devkit.comfy_env import register_pack_package


def _load_package():
    """Import ``parsers`` as ``binding_guidance.parsers`` without running the pack's root ``__init__``."""
    register_pack_package()
    import importlib

    return importlib.import_module("binding_guidance.parsers")


def _configs(parsers, models: list[str] | None) -> list[tuple[str, str, str]]:
    """(label, mode, spacy_model) for every installed model in both modes, then the fallback."""
    names = (
        models
        if models is not None
        else [m for m in parsers.SPACY_MODEL_CHOICES[:-1] if m in parsers.available_spacy_models()]
    )
    configs = []
    for name in names:
        for mode in ("faithful", "robust"):
            configs.append((f"{mode}:{name}", mode, name))
    configs.append(("fallback", "robust", "fallback"))
    return configs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gold", type=Path, help="gold JSONL file (e.g. shared/data/parse_dev.jsonl)")
    ap.add_argument("--models", nargs="*", default=None, help="spaCy models to run (default: all installed)")
    ap.add_argument("--errors", default=None, help="print wrong prompts of one config, e.g. robust:en_core_web_sm")
    ap.add_argument("--source", default=None, help="with --errors: only this source (or 'hand-annotated')")
    args = ap.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):  # one CPU core, the setting of the speed target
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    parsers = _load_package()
    from binding_guidance.parsers.scoring import is_hand_annotated, load_gold, score_prompt, score_records

    records = load_gold(args.gold)
    configs = _configs(parsers, args.models)
    print(f"gold: {args.gold} ({len(records)} prompts, {sum(map(is_hand_annotated, records))} hand-annotated)")
    print(f"spaCy models installed: {', '.join(parsers.available_spacy_models()) or 'none'}")
    for _, mode, model in configs:  # load every model before timing anything
        parsers.parse_bindings("a red car", mode=mode, spacy_model=model)
    summary = []
    for label, mode, model in configs:
        t0 = time.perf_counter()
        results = [parsers.parse_bindings(r["prompt"], mode=mode, spacy_model=model) for r in records]
        elapsed = time.perf_counter() - t0
        preds = [p.as_gold() for p in results]
        totals = score_records(records, preds)
        ran = sorted({p.parser for p in results})
        print(f"\n== {label}  (parser: {', '.join(ran)}; {1000 * elapsed / len(records):.1f} ms/prompt)")
        print(f"{'source':<36}{'n':>5}{'P':>8}{'R':>8}{'F1':>8}{'EM':>8}")
        keys = [*sorted(k for k in totals if k not in ("hand-annotated", "all")), "hand-annotated", "all"]
        for key in keys:
            t = totals.get(key)
            if t is None:
                continue
            print(f"{key:<36}{t.n:>5}{t.precision:>8.3f}{t.recall:>8.3f}{t.f1:>8.3f}{t.em:>8.3f}")
        hand, every = totals.get("hand-annotated"), totals["all"]
        summary.append((label, hand, every))
        if args.errors == label:
            print(f"\n-- wrong prompts for {label}")
            for rec, pred in zip(records, preds, strict=True):
                if args.source and args.source not in (
                    rec["source"],
                    "hand-annotated" if is_hand_annotated(rec) else None,
                ):
                    continue
                s = score_prompt(pred, rec["bindings"])
                if not s.exact:
                    print(f"[{rec['id']}] {rec['prompt']}")
                    print(f"   gold: {[(b['noun'], b['modifiers']) for b in rec['bindings'] if b['modifiers']]}")
                    print(f"   pred: {[(b['noun'], b['modifiers']) for b in pred if b['modifiers']]}")
    _print_speed(parsers, records)
    print("\n== summary (pair F1 / EM)")
    print(f"{'config':<36}{'hand F1':>9}{'hand EM':>9}{'all F1':>9}{'all EM':>9}")
    for label, hand, every in summary:
        hf = f"{hand.f1:>9.3f}{hand.em:>9.3f}" if hand else f"{'-':>9}{'-':>9}"
        print(f"{label:<36}{hf}{every.f1:>9.3f}{every.em:>9.3f}")
    return 0


def _print_speed(parsers, records: list[dict]) -> None:
    """ms/prompt of robust mode with the default model, after the model load, per prompt."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = parsers.SPACY_MODEL_CHOICES[0]
    times = []
    for rec in records:
        t0 = time.perf_counter()
        parsed = parsers.parse_bindings(rec["prompt"], mode="robust", spacy_model=model)
        times.append(1000 * (time.perf_counter() - t0))
    q = statistics.quantiles(times, n=20)[-1] if len(times) > 1 else times[0]
    print(f"\n== speed: robust, {parsed.parser}, after model load, {cores} CPU core(s), {len(times)} prompts")
    print(
        f"ms/prompt: mean {statistics.fmean(times):.1f}, median {statistics.median(times):.1f}, "
        f"p95 {q:.1f}, max {max(times):.1f}  (target <= 20 ms)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
