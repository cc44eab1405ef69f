"""The Markdown sections of report.md, one function per section (each writes its CSVs and figures)."""
from __future__ import annotations

import math

import pandas as pd

from anchoropt.report.context import Context
from anchoropt.report.figures import plot_cd, plot_history
from anchoropt.report.statistics import (
    ALPHA, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, average_ranks, averages, best_so_far,
    compare_over_datasets, complete_datasets, critical_difference, friedman_test, holm, missing_cells,
    nemenyi, ttests_over_seeds)
from anchoropt.report.tables import METRIC_TITLES, MISSING, md_table, mean_std, num, pval


def header(ctx: Context) -> str:
    """Title and what the records are: methods, datasets, seeds, protocol, objective."""
    def values(col: str, sub: pd.DataFrame) -> str:
        if col not in sub.columns:
            return "not recorded"
        return ", ".join(sorted({str(v) for v in sub[col] if v is not None})) or "not recorded"
    protocol = (f"Protocol: {ctx.protocol}." if ctx.source is None else
                f"Protocol: cross_dataset: trained on every class of **{ctx.source}** (the source), scored on all "
                f"classes of the source and of {len(ctx.scored)} target datasets; averages and tests use the "
                "targets only.")
    lines = ["# Significance report", "",
             f"{len(ctx.df)} result records: {len(ctx.methods)} methods, {len(ctx.datasets)} "
             f"datasets, seeds {', '.join(map(str, ctx.seeds))}. Accuracies and HM in percent; "
             "cells are mean ± sample std (ddof=1) over seeds.", "",
             protocol, "", "Tuning objective per method:", ""]
    lines += [f"- {m}: {values('objective', ctx.df[ctx.df['method'] == m])}" for m in ctx.methods]
    return "\n".join(lines)


def per_dataset_section(ctx: Context) -> str:
    """Per-dataset mean ± std tables, one per metric, datasets as rows and methods as columns."""
    parts = ["## Per-dataset results", "",
             f"{MISSING} marks a missing cell; `{MISSING} (n/N seeds)` a cell with values for "
             "only n of the N seeds (not averaged; see Missing cells)."]
    for metric in ctx.metrics:
        parts += ["", f"### {METRIC_TITLES[metric]} (%)", "",
                  md_table(_display_table(ctx, metric))]
    parts += ["", ctx.csv(ctx.cells, "per_dataset.csv")]
    return "\n".join(parts)


def _display_table(ctx: Context, metric: str) -> pd.DataFrame:
    """Dataset x method strings "mean ± std" for one metric."""
    table = pd.DataFrame({"dataset": [f"{d} (source)" if d == ctx.source else d for d in ctx.datasets]})
    for method in ctx.methods:
        cells = ctx.cells[ctx.cells["method"] == method].set_index("dataset")
        table[method] = [mean_std(cells.at[d, f"{metric}_mean"], cells.at[d, f"{metric}_std"],
                                   cells.at[d, f"{metric}_n"], len(ctx.seeds))
                         for d in ctx.datasets]
    return table


def averages_section(ctx: Context) -> str:
    """Averages over all datasets and, when some are incomplete, over the complete ones."""
    common = [d for d in complete_datasets(ctx.cells, ctx.methods, ctx.metrics) if d in ctx.scored]
    what = ("Two all-dataset averages of HM: **HM of averaged base and novel** = "
            "2·B·N/(B+N) of the average base B and novel N accuracies (as papers report), and "
            "**mean of per-dataset HM**." if ctx.source is None else
            f"Mean accuracy over the target datasets (the source, {ctx.source}, is left out).")
    parts = ["## Averages", "", what + " A method with a missing cell gets no average "
             f"({MISSING}) rather than one over fewer datasets."]
    kind = "datasets" if ctx.source is None else "target datasets"
    scopes = [("all", ctx.scored, f"### Over all {len(ctx.scored)} {kind}")]
    if len(common) < len(ctx.scored):
        scopes.append(("common", common, f"### Over the {len(common)} {kind} where every "
                       f"method is complete ({', '.join(common) or 'none'})"))
    tables = []
    for scope, datasets, title in scopes:
        avg = averages(ctx.cells, datasets, ctx.metrics)
        parts += ["", title, "", md_table(_averages_display(avg))]
        tables.append(avg.reset_index().assign(scope=scope))
    parts += ["", ctx.csv(pd.concat(tables, ignore_index=True), "averages.csv")]
    return "\n".join(parts)


def _averages_display(avg: pd.DataFrame) -> pd.DataFrame:
    complete = [f"{c}/{n}" for c, n in zip(avg["n_complete"], avg["n_datasets"])]
    if "hm_of_averages" not in avg.columns:
        return pd.DataFrame({"method": avg.index, "complete datasets": complete,
                             "mean target accuracy": avg["acc"].map(num)})
    return pd.DataFrame({"method": avg.index, "complete datasets": complete,
                         "base": avg["acc_base"].map(num), "novel": avg["acc_novel"].map(num),
                         "HM of averaged base and novel": avg["hm_of_averages"].map(num),
                         "mean of per-dataset HM": avg["mean_hm"].map(num)})


def paired_section(ctx: Context) -> str:
    """Wilcoxon + Holm + bootstrap over datasets and t-tests over seeds, each method vs baseline."""
    others = [m for m in ctx.methods if m != ctx.baseline]
    parts = [f"## Paired tests against {ctx.baseline}", ""]
    if not others:
        return "\n".join(parts + ["Only one method: nothing to compare."])
    summary = pd.DataFrame([compare_over_datasets(ctx.primary_matrix, m, ctx.baseline) for m in others])
    summary["p_holm"] = holm(summary["p"])
    parts += [f"Δ = method − baseline ({ctx.label} points). " + _pair_explanation(ctx, len(others)), "",
              md_table(_pair_display(ctx, summary, holm_column=True)), "",
              *_exclusion_notes(summary), ctx.csv(summary, "paired_wilcoxon.csv"), "",
              "### Paired t-test over seeds per dataset", "",
              f"`scipy.stats.ttest_rel` on per-seed {ctx.label}, pairs matched by seed, two-sided, "
              f"no multiplicity correction. Δ = method − baseline ({ctx.label} points).", ""]
    ttests = pd.concat([_ttests(ctx, m, ctx.baseline) for m in others])
    parts += [md_table(_ttest_display(ctx, ttests)), "", ctx.csv(ttests, "paired_ttest.csv")]
    return "\n".join(parts)


def _ttests(ctx: Context, method: str, baseline: str) -> pd.DataFrame:
    """``ttests_over_seeds`` on the primary metric of the scored datasets."""
    return ttests_over_seeds(ctx.df, ctx.cells[ctx.cells["dataset"].isin(ctx.scored)], method, baseline, ctx.primary)


def _pair_explanation(ctx: Context, holm_family: int) -> str:
    text = (f"Over {'datasets' if ctx.source is None else 'target datasets'}, on seed-averaged {ctx.label}: "
            "two-sided Wilcoxon signed-rank test "
            "(`scipy.stats.wilcoxon`, zero differences discarded) and a "
            f"{CONFIDENCE:.0%} bootstrap CI of the mean difference (`scipy.stats.bootstrap`, BCa, "
            f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}). Only datasets where both "
            "methods are complete are used.")
    if holm_family:
        text += (f" Wilcoxon p-values are Holm-corrected across the {holm_family} comparison(s)"
                 f" (significant: p (Holm) < {ALPHA}).")
    return text


def _pair_display(ctx: Context, summary: pd.DataFrame, holm_column: bool) -> pd.DataFrame:
    table = pd.DataFrame({
        "method": summary["method"], "vs": summary["baseline"],
        "datasets used": summary["n_datasets"], f"mean Δ {ctx.label}": summary["mean_diff"].map(num),
        f"{CONFIDENCE:.0%} CI": [f"[{num(lo)}, {num(hi)}]"
                                 for lo, hi in zip(summary["ci_low"], summary["ci_high"])],
        "Wilcoxon W": summary["wilcoxon_W"].map(lambda w: num(w, 1)),
        "p": summary["p"].map(pval)})
    if holm_column:
        table["p (Holm)"] = summary["p_holm"].map(pval)
        table["significant"] = ["yes" if p < ALPHA else "no" if pd.notna(p) else MISSING
                                for p in summary["p_holm"]]
    return table


def _exclusion_notes(summary: pd.DataFrame) -> list[str]:
    notes = [f"- {r.method} vs {r.baseline}: {r.n_datasets} datasets used; excluded (missing "
             f"cell): {r.excluded or 'none'}." + (f" {r.note}." if r.note else "")
             for r in summary.itertuples()]
    return notes + [""]


def _ttest_display(ctx: Context, ttests: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"method": ttests["method"].to_numpy(),
                         "dataset": ttests["dataset"].to_numpy(),
                         "seeds": ttests["n_seeds"].to_numpy(),
                         f"mean Δ {ctx.label}": ttests["mean_diff"].map(num).to_numpy(),
                         "t": ttests["t"].map(lambda t: num(t, 3)).to_numpy(),
                         "p": ttests["p"].map(pval).to_numpy(), "note": ttests["note"].to_numpy()})


def friedman_section(ctx: Context) -> str:
    """Friedman test, average ranks, Nemenyi p-values and the CD diagram (3+ methods)."""
    parts = ["## Friedman / Nemenyi", ""]
    if len(ctx.methods) < 3:
        return "\n".join(
            parts + [f"Needs three or more methods; the records have {len(ctx.methods)}."])
    hm = ctx.primary_matrix.dropna()
    excluded = sorted(set(ctx.scored) - set(hm.index))
    parts.append(f"On seed-averaged {ctx.label} over the {len(hm)} datasets where all {len(ctx.methods)} "
                 f"methods are complete; excluded: {', '.join(excluded) or 'none'}.")
    if len(hm) < 2:
        return "\n".join(parts + ["", "Fewer than two complete datasets: no test."])
    return "\n".join(parts + ["", *_friedman_parts(ctx, hm, excluded)])


def _friedman_parts(ctx: Context, hm: pd.DataFrame, excluded: list[str]) -> list[str]:
    """Friedman / Nemenyi results on the complete dataset x method HM table ``hm``."""
    (k, n), (stat, p) = (len(hm.columns), len(hm)), friedman_test(hm)
    ranks, cd, pvals = average_ranks(hm), critical_difference(k, n), nemenyi(hm)
    summary = pd.DataFrame([{"statistic": stat, "p": p, "k": k, "n_datasets": n,
                             "critical_difference": cd, "excluded": ", ".join(excluded)}])
    return [f"Friedman χ² = {num(stat, 3)}, p = {pval(p)} (`scipy.stats.friedmanchisquare`, "
            f"tie-corrected), k = {k}, N = {n}. Nemenyi critical difference "
            f"(α = {ALPHA}) = {cd:.3f} rank.", "", ctx.csv(summary, "friedman.csv"), "",
            f"### Average ranks (1 = highest {ctx.label})", "",
            md_table(pd.DataFrame({"method": ranks.index, "average rank": ranks.map(num)})), "",
            ctx.csv(ranks.rename_axis("method").reset_index(), "average_ranks.csv"), "",
            "### Nemenyi p-values (`scikit_posthocs.posthoc_nemenyi_friedman`)", "",
            md_table(pvals.map(pval).reset_index()), "",
            ctx.csv(pvals, "nemenyi.csv", index=True), "",
            plot_cd(ranks, pvals, cd, ctx.out_dir / "cd_diagram.png", ctx.label)]


def schedule_section(ctx: Context, schedules: tuple[str, str] | None,
                      histories: pd.DataFrame | None) -> str:
    """Paired tests two-stage vs one-stage, and best HM against trials spent per schedule."""
    parts = ["## One-stage vs two-stage", ""]
    if schedules is None and histories is None:
        return "\n".join(parts + ["Not requested (no `schedules` given)."])
    if schedules is not None:
        parts += _schedule_tests(ctx, *schedules)
    if histories is not None:
        parts += _history_parts(ctx, histories)
    return "\n".join(parts)


def _schedule_tests(ctx: Context, one_stage: str, two_stage: str) -> list[str]:
    summary = pd.DataFrame([compare_over_datasets(ctx.primary_matrix, two_stage, one_stage)])
    ttests = _ttests(ctx, two_stage, one_stage)
    return [f"One-stage: **{one_stage}**; two-stage: **{two_stage}**. "
            "Δ = two-stage − one-stage. " + _pair_explanation(ctx, holm_family=0)
            + " A single comparison: no correction.", "",
            md_table(_pair_display(ctx, summary, holm_column=False)), "",
            *_exclusion_notes(summary), ctx.csv(summary, "schedule_wilcoxon.csv"), "",
            "### Paired t-test over seeds per dataset (two-stage vs one-stage)", "",
            md_table(_ttest_display(ctx, ttests)), "", ctx.csv(ttests, "schedule_ttest.csv"), ""]


def _history_parts(ctx: Context, histories: pd.DataFrame) -> list[str]:
    best = best_so_far(histories)
    return ["### Best HM against trials spent", "",
            md_table(_history_display(best)), "", ctx.csv(best, "search_history.csv"), "",
            plot_history(best, ctx.out_dir / "search_history.png")]


def _history_display(best: pd.DataFrame, max_rows: int = 20) -> pd.DataFrame:
    """Best HM so far per schedule at up to ``max_rows`` trial counts (all in the CSV)."""
    wide = best.pivot(index="trials_spent", columns="schedule", values="best_hm")
    step = max(1, math.ceil(len(wide) / max_rows))
    shown = wide.iloc[sorted({0, *range(step - 1, len(wide), step), len(wide) - 1})]
    table = shown.map(num).reset_index()
    return table.rename(columns={"trials_spent": "trials spent"})


def missing_section(ctx: Context) -> str:
    table = missing_cells(ctx.cells, ctx.df, ctx.metrics)
    total = len(ctx.methods) * len(ctx.datasets)
    parts = ["## Missing cells", "",
             f"{len(table)} of {total} (method, dataset) cells are missing or incomplete "
             f"(expected seeds: {', '.join(map(str, ctx.seeds))}). They are shown as {MISSING}, "
             "never filled, and each is left out of every test involving its method."]
    if len(table):
        parts += ["", md_table(table)]
    parts += ["", ctx.csv(table, "missing_cells.csv")]
    return "\n".join(parts)
