"""Paper Table 3: every configuration, the same budget, several seeds, on the synthetic stream or a
prepared directory of real data.

- :mod:`~marn_rec.training.ablation.runner`: which configurations apply to the data, and the runs
  (one single-process training each, ``jobs`` side by side);
- :mod:`~marn_rec.training.ablation.statistics`: mean ± std per configuration, paired differences
  by seed with 95% t-intervals over seeds;
- :mod:`~marn_rec.training.ablation.convergence`: whether each configuration's AUC has plateaued
  (the trend of its evaluations over the last half of the budget);
- :mod:`~marn_rec.training.ablation.report`: markdown tables and PNG plots (means, paired
  differences, learning curves).
"""

from marn_rec.training.ablation.convergence import plateau_rows, plateau_table, projected_gain
from marn_rec.training.ablation.report import (
    all_differences,
    differences_table,
    level_and_recall_tables,
    markdown_table,
    merge_results,
    plot,
    plot_curves,
    plot_differences,
    read_results,
    read_skipped,
    report_text,
    write_report,
)
from marn_rec.training.ablation.runner import applicable_models, read_curve, run_dir, run_study
from marn_rec.training.ablation.statistics import (
    METRICS,
    detectable_difference,
    paired_differences,
    seeds_to_detect,
    student_t_quantile,
    summarize,
    t_interval,
    welch_interval,
)

__all__ = [
    "METRICS",
    "all_differences",
    "applicable_models",
    "detectable_difference",
    "differences_table",
    "level_and_recall_tables",
    "markdown_table",
    "seeds_to_detect",
    "merge_results",
    "paired_differences",
    "plateau_rows",
    "plateau_table",
    "plot",
    "plot_curves",
    "plot_differences",
    "projected_gain",
    "read_curve",
    "read_results",
    "read_skipped",
    "report_text",
    "run_dir",
    "run_study",
    "student_t_quantile",
    "summarize",
    "t_interval",
    "welch_interval",
    "write_report",
]
