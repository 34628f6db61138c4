"""The command line of ``benchmarks/serving.py``: flags, the ``--quick`` preset, the markdown
section for ``benchmarks/RESULTS.md``, and where results go (a scratch folder unless
``--update-records``)."""

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence

from marn_rec.serving.benchmark import (
    AOTI,
    EXPORTED,
    FULL,
    GOAL_P99_MS,
    GOAL_RATIO,
    QUICK,
    RECORDS_DIR,
    SCORER,
    ServingBenchConfig,
    run_serving,
)

UPDATE_RECORDS = "--update-records"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default except ``None`` ones (their help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def _sizes(text: str) -> List[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def serving_parser() -> argparse.ArgumentParser:
    d = ServingBenchConfig()
    p = argparse.ArgumentParser(
        description="Serving: the whole MARN vs the scorer (eager, torch.export, AOTInductor) on the same requests, "
        f"and store size / load time per million items. Writes serving.json and serving.md into --out-dir, or "
        f"into {RECORDS_DIR}/ with {UPDATE_RECORDS}.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--preset", default=d.preset, choices=["small", "tiny", "paper"], help="model size (random weights)")
    p.add_argument("--checkpoint-dir", default=None, help="a trained checkpoint instead (its model and synthetic catalogue)")
    p.add_argument("--catalog-items", type=int, default=d.catalog_items, help="catalogue items extracted into the store")
    p.add_argument("--candidates", type=_sizes, default=",".join(map(str, d.candidates)),
                   help="candidates per single-user request, comma-separated")
    p.add_argument("--batch-users", type=int, default=d.batch_users, help="users of the batched request (1: none)")
    p.add_argument("--batch-candidates", type=int, default=d.batch_candidates, help="candidates per user of the batched request")
    p.add_argument("--max-requests", type=int, default=d.max_requests, help="timed requests per case and mode at most")
    p.add_argument("--seconds", type=float, default=d.seconds, help="time budget per case and mode")
    p.add_argument("--store-items", type=lambda s: int(float(s)), default=d.store_items, help="rows of the stores whose size and load time are measured")
    p.add_argument("--no-aoti", action="store_true", help="skip the AOTInductor build (a C++ compile of about a minute)")
    p.add_argument("--threads", type=int, default=d.threads, help="intra-op threads per request stream; 0: torch's default")
    p.add_argument("--seed", type=int, default=d.seed, help="model, catalogue and request seed")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--out-dir", default=d.out_dir, help="serving.json and serving.md go here (a scratch folder)")
    group.add_argument(UPDATE_RECORDS, action="store_true", help=f"write into {RECORDS_DIR}/ instead (not with --quick)")
    p.add_argument("--quick", action="store_true", help="seconds: 2,000 items, 1x10 and 1x100, no AOTInductor")
    return p


def config_from_args(args: argparse.Namespace, argv: Sequence[str]) -> ServingBenchConfig:
    cfg = ServingBenchConfig(
        preset=args.preset, checkpoint_dir=args.checkpoint_dir, catalog_items=args.catalog_items,
        candidates=args.candidates, batch_users=args.batch_users, batch_candidates=args.batch_candidates,
        max_requests=args.max_requests, seconds=args.seconds,
        store_items=args.store_items,
        aoti=not args.no_aoti, threads=args.threads, seed=args.seed,
        out_dir=RECORDS_DIR if args.update_records else args.out_dir,
        command=" ".join(["python benchmarks/serving.py", *(a for a in argv if a != UPDATE_RECORDS)]),
    )
    if args.quick:
        defaults = vars(serving_parser().parse_args([]))
        for key, value in QUICK.items():
            flag = "no_aoti" if key == "aoti" else key
            if flag not in defaults or getattr(args, flag) == defaults[flag]:
                setattr(cfg, key, value)
    return cfg


_LABEL = {FULL: "full MARN", SCORER: "scorer (eager)", EXPORTED: "scorer (torch.export)", AOTI: "scorer (AOTInductor)"}


def _model_line(model: Dict[str, Any]) -> str:
    if "path" in model:
        origin = f"checkpoint {model['path']} (step {model.get('step')})"
    else:
        origin = f"{model.get('preset')} preset, weights {model.get('weights')}"
    return f"{origin}, d={model['hidden_dim']}, T={model['max_length']}"


def render_markdown(results: Dict[str, Any]) -> str:
    """The "## Serving" section of benchmarks/RESULTS.md: command, machine, date, tables, ratios."""
    from marn_rec.benchmarks.report import machine_line

    cfg, m = results["config"], results["machine"]
    out = ["## Serving", "", "```bash", cfg["command"] or "python benchmarks/serving.py", "```", "",
           f"Machine: {machine_line(m)}. Date: {m['date']}. {results['threads']} threads; load average at the start "
           f"{', '.join(f'{x:.1f}' for x in (m.get('load_average') or []))}.", "",
           f"Model: {_model_line(results['model'])}. Store: {results['extraction']['items']:,} catalogue items extracted at "
           f"{results['extraction']['items_per_s']:,.0f} items/s (including synthetic feature generation). Requests: "
           "full histories (T behaviours), candidates from the store; latency per request in one stream (p50 / p99, "
           "ms), requests/s = 1 / mean latency (the tail included). The full model's time excludes assembling its "
           "batch (item features), shown apart.", "",
           "| request | " + " | ".join(_LABEL[k] for k in results["cases"][0]["modes"]) + " | full: batch assembly |",
           "| --- | " + " | ".join("---:" for _ in results["cases"][0]["modes"]) + " | ---: |"]
    for case in results["cases"]:
        cells = [f"{v['p50_ms']:.2f} / {v['p99_ms']:.2f} ms, {v['requests_per_s']:,.0f}/s" for v in case["modes"].values()]
        out.append(f"| {case['case']} | " + " | ".join(cells) + f" | {case['assemble_ms']:.1f} ms |")
    floor = results.get("noise_floor")
    if floor:
        out += ["", f"Noise floor: a fixed CPU workload (20 matmuls of 128 x 128) timed the same way had p50 "
                f"{floor['p50_ms']:.2f} ms and p99 {floor['p99_ms']:.2f} ms during the run: the p99 columns carry the "
                "machine's scheduling tail (other processes on the 2 cores), not only the code's."]
    out += ["", "Where the time goes (medians, ms): " + "; ".join(
        f"{c['case']}: full model {c['modes'][FULL]['p50_ms']:.1f} of which item tower {c['full_tower_ms']:.1f}; "
        f"scorer checks + store lookup + padding {c['scorer_prepare_ms']:.2f}, head {c['scorer_head_ms']:.2f}"
        for c in results["cases"]) + ".", "",
        "Largest |scorer logit - full logit| on the timed requests: " + "; ".join(
        f"{c['case']}: " + ", ".join(f"{k} {v:.1e}" for k, v in c["max_abs_logit_diff"].items()) for c in results["cases"]) + ".",
        "", "Export: " + ", ".join(f"{k} {v:.1f} s" if isinstance(v, float) else f"{k}: {v}" for k, v in results["export"].items()) + ".",
        "", f"Store size and load time per million items (d={results['model']['hidden_dim']}; measured on "
        f"{results['stores'][0]['rows']:,} random rows; cold read after `posix_fadvise(DONTNEED)`):", "",
        "| dtype | MiB per 1M items (matrix + index) | open | read every row, cold |", "| --- | ---: | ---: | ---: |"]
    for s in results["stores"]:
        out.append(f"| {s['dtype']} | {s['bytes_per_million'] / 2**20:.1f} ({s['matrix_bytes_per_million'] / 2**20:.1f} + "
                   f"{(s['bytes_per_million'] - s['matrix_bytes_per_million']) / 2**20:.1f}) | {s['open_ms']:.1f} ms | "
                   f"{s['read_all_s_per_million']:.2f} s |")
    out += ["", "Ratios and goals (scorer >= " f"{GOAL_RATIO:g}x the full model's requests/s at 1x100; p99 < {GOAL_P99_MS:g} ms "
            "at 1x100):", ""] + [f"- {line}" for line in results["ratios"]] + [""]
    return "\n".join(out)


def serving_main(argv: Optional[Sequence[str]] = None) -> int:
    """``benchmarks/serving.py``."""
    from marn_rec.benchmarks.machine import machine_info
    from marn_rec.benchmarks.report import write_outputs
    from marn_rec.serving.cli import _quiet

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = serving_parser()
    args = parser.parse_args(argv)
    if args.update_records and args.quick:
        parser.error(f"{UPDATE_RECORDS}: --quick figures are a smoke test, not records")
    cfg = config_from_args(args, argv)
    with _quiet():
        machine = machine_info()
        results = run_serving(cfg)
    results["machine"] = machine
    print()
    for line in results["ratios"]:
        print(line)
    paths = write_outputs(results, render_markdown(results), cfg.out_dir, "serving")
    print(f"\nfinished in {results['seconds']:.0f} s; wrote {paths['json']}, {paths['markdown']}")
    return 0
