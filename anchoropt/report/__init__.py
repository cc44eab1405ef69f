"""Significance reports over benchmark result records.

Inputs are the JSON result records of ``docs/INTERFACES.md`` (one per method, dataset and seed);
accuracies and HM are in percent throughout. One report covers one setting: records that differ in
protocol, shots, backbone or pretrained weights (or eval split) are refused
(``anchoropt.records.check_comparable``). Base-to-novel records are compared on HM, cross-dataset
records on the accuracy of the target datasets (the source dataset is shown but enters no average
and no test). ``load_records`` (:mod:`anchoropt.records`) turns them into a table and
``write_report`` (``writer``) writes ``report.md``, ``report.html``, ``tables.tex``, one CSV per
table and PNG figures.

Statistics (SPEC section 8 for the metrics):

* HM of one run: ``2 * base * novel / (base + novel)``, read from the record's ``metrics.hm``.
* Per (method, dataset) cell: mean and sample standard deviation (``ddof=1``) over seeds; the
  cell's HM is by default the HM of the seed-averaged base and novel (the convention of the CoOp,
  CoCoOp, MaPLe and AnchorOPT tables), optionally the mean of the per-seed HMs, and every table
  says which.
* Two all-dataset averages, always labelled: the "HM of averaged base and novel" (as papers
  report) and the "mean of per-dataset HM"; cross-dataset: the mean target accuracy.
* Against a baseline: paired Wilcoxon signed-rank test over datasets on per-dataset HM (or target
  accuracy) (``scipy.stats.wilcoxon``; method, zero handling, SciPy version and the smallest
  reachable p stated) with Holm's step-down correction across the comparisons
  (``statsmodels.stats.multitest.multipletests(method="holm")``); paired t-test over seeds per
  dataset (``scipy.stats.ttest_rel``; a zero-variance difference is flagged, never a p); 95%
  bootstrap confidence interval of the mean difference over datasets (``scipy.stats.bootstrap``,
  BCa, fixed seed).
* Three or more methods: Friedman test (``scipy.stats.friedmanchisquare``), Nemenyi post-hoc
  (``scikit_posthocs.posthoc_nemenyi_friedman``), critical difference
  ``q_alpha * sqrt(k (k + 1) / (6 N))`` (Demsar 2006, q_alpha from
  ``scipy.stats.studentized_range``) and a CD diagram
  (``scikit_posthocs.critical_difference_diagram``); rank 1 = highest HM.

Missing data (one rule, ``statistics.complete_runs``): a run counts only when it has every metric
of its protocol; a (method, dataset) cell needs such a run for every seed seen anywhere in the
records, otherwise it is shown as missing, never filled, listed in "Missing cells" and left out of
every average and test involving its method.

Modules: ``statistics`` (every number), ``tables`` (cell formatting, display names, Markdown),
``latex`` (tables.tex), ``figures`` (PNG plots), ``positions`` (learned position matrices from
``prompts.pt``), ``context`` (what sections share), ``sections`` (one function per report.md
section), ``writer`` (assembles the files).
"""
from anchoropt.records import load_records, protocol_of
from anchoropt.report.statistics import (
    average_ranks, averages, best_so_far, bootstrap_ci, cell_stats, compare_over_datasets,
    complete_datasets, critical_difference, friedman_test, holm, metric_matrix, missing_cells, nemenyi,
    ttests_over_seeds, wilcoxon_test)
from anchoropt.report.writer import write_report

__all__ = ["average_ranks", "averages", "best_so_far", "bootstrap_ci", "cell_stats", "compare_over_datasets",
           "complete_datasets", "critical_difference", "friedman_test", "holm", "load_records",
           "metric_matrix", "missing_cells", "nemenyi", "protocol_of", "ttests_over_seeds", "wilcoxon_test",
           "write_report"]
