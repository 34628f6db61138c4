"""The paper's Figures 4 and 6 from our runs, and the reachable ceiling (marn_rec.training.figures).

    # Figure 4: mean l2-norm of MAF's attention per modality and category group, of a checkpoint
    python examples/paper_figures.py fig4 --checkpoint runs/taobao_synthetic --out fig4.png
    # Figure 6(a): adversarial loss over training, from a run's metrics.jsonl
    python examples/paper_figures.py fig6a --metrics runs/taobao_synthetic/metrics.jsonl --out fig6a.png
    # Figure 6(b): AUC against lambda0 (one training run per value)
    python examples/paper_figures.py fig6b --out-dir runs/lambda_sweep --steps 800 \\
        --lambdas 0.01 0.05 0.2 1.8
    # Where APGRU's candidate attention looks (not a paper figure); --data for prepared data
    python examples/paper_figures.py attention --data data/ml-100k/prepared \\
        --checkpoint MARN=runs/ablation_movielens/MARN_seed1 --out attention.png
    # Table 3 beside the reference on the true item factors, Tables 4 and 5 as the paper measures them
    python examples/paper_figures.py ceiling --out-dir runs/ceiling --steps 800 \\
        --models BaseModel+IDs BaseModel+CONC MARN

Training subcommands run single-process groups on the synthetic stream (``--jobs`` side by side)
and evaluate ``--cold-set-batches`` batches of per-user cold candidate sets for Table 5.
"""

import json
import os
import sys
from typing import Optional, Sequence

from marn_rec.config import ABLATIONS, PRESETS
from marn_rec.training.cli import CheckedArgumentParser, synthetic_overrides, writable_dir_problem
from marn_rec.training.evaluation import TABLE5_RECALL_AT
from marn_rec.training.loop import TrainConfig


def _training_args(p: CheckedArgumentParser, steps: int) -> None:
    p.add_argument("--out-dir", required=True, help="every run's directory and the results")
    p.add_argument("--preset", default="small", choices=list(PRESETS), help="model sizes")
    p.add_argument("--steps", type=int, default=steps, help="training steps of every run")
    p.add_argument("--batch-size", type=int, default=256, help="samples per step")
    p.add_argument("--eval-every", type=int, default=None, help="steps between evaluations "
                   "(default: --steps // 8, for the curves)")
    p.add_argument("--eval-batches", type=int, default=16, help="ordinary evaluation batches")
    p.add_argument("--cold-set-batches", type=int, default=16,
                   help="evaluation batches of per-user cold candidate sets (Table 5; 0: none)")
    p.add_argument("--cold-set-size", type=int, default=200, help="cold candidates per set")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (one process each)")
    p.add_argument("--synthetic", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="knobs of the synthetic stream (SyntheticTaobaoConfig fields), e.g. "
                        "missing_image_prob=0.3")


def _base(a, model: str, seed: int) -> TrainConfig:
    return TrainConfig(
        preset=a.preset, model=model, seed=seed, steps=a.steps, batch_size=a.batch_size,
        eval_every=a.eval_every or max(1, a.steps // 8), eval_batches=a.eval_batches,
        out_dir=a.out_dir, recall_at=TABLE5_RECALL_AT, resume="never", progress=False,
        data_overrides={"num_cold_set_batches": a.cold_set_batches, "cold_set_size": a.cold_set_size,
                        **synthetic_overrides(a.synthetic)},
    )


def parser() -> CheckedArgumentParser:
    p = CheckedArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="figure", required=True)
    f4 = sub.add_parser("fig4", help="MAF attention norms per modality and category group")
    f4.add_argument("--checkpoint", required=True, help="a training OUT_DIR or checkpoint directory")
    f4.add_argument("--out", required=True, help="PNG to write (and the numbers beside it, .json)")
    f4.add_argument("--per-group", type=int, default=10_000, help="random items per category group")
    f4.add_argument("--seed", type=int, default=0, help="seed of the item draw")
    f4.add_argument("--by", default="category", choices=("category", "image_quality"),
                    help="rows: category groups (the paper's), or items by image quality")
    att = sub.add_parser("attention", help="APGRU's candidate attention by distance from the latest "
                         "behaviour, of checkpoints")
    att.add_argument("--data", default=None, help="the prepared directory the checkpoints trained on "
                     "(default: the synthetic stream of their meta.json, its evaluation batches)")
    att.add_argument("--checkpoint", required=True, nargs="+", metavar="LABEL=PATH",
                     help="checkpoints (training OUT_DIRs or checkpoint directories), each labelled")
    att.add_argument("--split", default="test", help="with --data: the split to read")
    att.add_argument("--out", required=True, help="PNG to write (and the numbers beside it, .json)")
    f6a = sub.add_parser("fig6a", help="adversarial loss over training")
    f6a.add_argument("--metrics", required=True, help="a run's metrics.jsonl")
    f6a.add_argument("--out", required=True, help="PNG to write (and the curves beside it, .json)")
    f6b = sub.add_parser("fig6b", help="AUC against lambda0")
    _training_args(f6b, steps=800)
    f6b.add_argument("--model", default="MARN", choices=list(ABLATIONS), help="configuration")
    f6b.add_argument("--seed", type=int, default=0, help="data and initial weights")
    f6b.add_argument("--lambdas", type=float, nargs="+", default=None,
                     help="lambda0 values (default: 0.01 0.02 0.05 0.1 0.2 0.5 1.0 1.8)")
    ceiling = sub.add_parser("ceiling", help="Table 3 beside the true-factor reference")
    _training_args(ceiling, steps=800)
    ceiling.add_argument("--models", nargs="*", default=["BaseModel+IDs", "BaseModel+CONC", "MARN"],
                         choices=list(ABLATIONS), metavar="MODEL",
                         help="Table 3 configurations (none: the reference alone)")
    ceiling.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed and model")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    from marn_rec.training import figures

    p = parser()
    a = p.parse_args(argv)
    if a.figure == "fig4":
        result = figures.attention_norms_from_checkpoint(a.checkpoint, a.per_group, a.seed, by=a.by)
        figures.plot_attention_heatmap(result, a.out)
        with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
            json.dump(result, f, indent=1)
        probe = result["group_probe"]
        print("a linear read-out of the groups from s_m alone (what eq. 3's gate sees), held-out "
              f"accuracy (chance {probe['chance']:.3f}): "
              + ", ".join(f"{m} {probe[m]:.3f}" for m in result["modalities"]))
        print(f"written: {a.out}, {os.path.splitext(a.out)[0] + '.json'}")
        return
    if a.figure == "attention":
        from marn_rec.training.attention_profile import attention_profile_from_checkpoint, plot_attention_profile

        labelled = [c.partition("=") for c in a.checkpoint]
        bad = [c for c, sep, path in labelled if not sep or not c or not path]
        if bad:
            p.error(f"--checkpoint: expected LABEL=PATH, got {bad[0]!r}")
        profiles = {label: attention_profile_from_checkpoint(path, a.data, a.split)
                    for label, _, path in labelled}
        plot_attention_profile(profiles, a.out)
        with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
            json.dump(profiles, f, indent=1)
        for label, r in profiles.items():
            print(f"{label}: latest behaviour {r['latest_weight']:.3f} (uniform {r['uniform_latest_weight']:.3f}), "
                  f"normalised entropy {r['entropy']:.3f}, {r['samples']} samples")
        print(f"written: {a.out}, {os.path.splitext(a.out)[0] + '.json'}")
        return
    if a.figure == "fig6a":
        figures.plot_adversarial_loss(a.metrics, a.out)
        curves = os.path.splitext(a.out)[0] + ".json"
        with open(curves, "w") as f:
            json.dump(figures.adversarial_curves(a.metrics), f)
        print(f"written: {a.out}, {curves}")
        return
    for flag, value in (("--steps", a.steps), ("--batch-size", a.batch_size),
                        ("--eval-batches", a.eval_batches), ("--jobs", a.jobs)):
        if value < 1:
            p.error(f"{flag} must be a positive integer, got {value}")
    problem = writable_dir_problem(a.out_dir)
    if problem:
        p.error(f"--out-dir: {problem}")
    from marn_rec.data.synthetic import SyntheticTaobao

    try:  # every option checked before anything trains
        base = _base(a, "MARN", 0)
        base.data_config(1).check_fits(base.model_config())
        SyntheticTaobao(base.data_config(1))
    except (ValueError, TypeError) as e:
        p.error(str(e))
    if a.figure == "fig6b":
        lambdas = a.lambdas or figures.PAPER_LAMBDAS
        results = figures.lambda_sweep(_base(a, a.model, a.seed), lambdas, a.jobs)
        png = os.path.join(a.out_dir, "fig6b.png")
        figures.plot_lambda_sweep(results, png)
        for r in results:
            print(f"lambda0 {r['lambda0']:g}: " + (f"diverged: {r['diverged']}" if r["diverged"]
                                                 else f"auc {r['auc']:.4f} (bayes {r.get('bayes_auc', float('nan')):.4f})"))
        print(f"written: {png}, {os.path.join(a.out_dir, figures.SWEEP_RESULTS)}")
        return
    runs = []
    for seed in a.seeds:
        for model in a.models:
            cfg = _base(a, model, seed)
            runs.append((TrainConfig(**{**cfg.__dict__, "out_dir": os.path.join(
                a.out_dir, f"{model.replace('+', '_')}_seed{seed}")}), False))
        # The reference shares BaseModel's head and CONC's batches (marn_rec.models.reference).
        cfg = _base(a, "BaseModel+CONC", seed)
        runs.append((TrainConfig(**{**cfg.__dict__, "out_dir": os.path.join(
            a.out_dir, f"Reference_seed{seed}")}), True))
    path = os.path.join(a.out_dir, "results.jsonl")
    if os.path.exists(path):
        os.remove(path)
    results = figures.train_runs(runs, a.jobs, path)
    table = figures.ceiling_tables(results)
    with open(os.path.join(a.out_dir, "ceiling.md"), "w") as f:
        f.write("python " + " ".join(sys.argv) + "\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
