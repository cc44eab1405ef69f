"""The Markdown sections of report.md, one function per section (each writes its CSVs and figures).

A section is ``f(ctx) -> str``; ``writer.write_report`` lists them in order. Every ``—`` a
section prints has its reason next to it (a note column or the line under the table).
"""
from __future__ import annotations

import math
from typing import Mapping

import pandas as pd

from anchoropt.escape import markdown
from anchoropt.report.context import Context
from anchoropt.report.figures import method_colours, plot_cd, plot_history, plot_positions
from anchoropt.report.positions import learned_positions
from anchoropt.report.statistics import (
    ALPHA, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, HM_CONVENTIONS, average_ranks, averages, best_so_far,
    compare_over_datasets, complete_datasets, critical_difference, friedman_test, holm, missing_cells, nemenyi,
    wilcoxon_details, win_tie_loss)
from anchoropt.report.tables import METRIC_TITLES, MISSING, dataset_name, md_table, mean_std, num, pval


def missing_rule(ctx: Context) -> str:
    """The one missing-data rule every table, average and test applies (stated once, in the header)."""
    return (f"**Missing data.** A run counts only when it has every metric of its protocol "
            f"({', '.join(ctx.metrics)}); a run lacking one (null or absent) counts for none of them. "
            f"A (method, dataset) cell needs such a run for every seed ({', '.join(map(str, ctx.seeds))}); "
            f"otherwise it is shown as {MISSING}, never filled, listed under Missing cells, and left out "
            "of every average and test involving its method. Anchor-prompt accuracy is optional and "
            "follows the same rule within its own table.")


def header(ctx: Context) -> str:
    """Title and what the records are: setting, methods, datasets, seeds, tuning, conventions."""
    def values(col: str, sub: pd.DataFrame) -> str:
        if col not in sub.columns:
            return "not recorded"
        return ctx.md(", ".join(sorted({str(v) for v in sub[col] if v is not None and not pd.isna(v)}))
                      or "not recorded")
    protocol = (f"Protocol: {ctx.protocol}." if ctx.source is None else
                f"Protocol: cross_dataset: trained on every class of **{ctx.md(dataset_name(ctx.source))}** (the source), scored on all "
                f"classes of the source and of {len(ctx.scored)} target datasets; averages and tests use the "
                "targets only.")
    setting = (f"Setting (the same for every record; records that differ are refused): shots "
               f"{values('shots', ctx.df)}, backbone {values('backbone', ctx.df)}, pretrained "
               f"{values('pretrained', ctx.df)}.")
    lines = ["# Significance report", "",
             f"{len(ctx.df)} result records: {len(ctx.methods)} methods, {len(ctx.datasets)} "
             f"datasets, seeds {', '.join(map(str, ctx.seeds))}. Accuracies and HM in percent; "
             "cells are mean ± sample std (ddof=1) over seeds.", "", protocol, "", setting, ""]
    if ctx.protocol == "base2novel":
        other = [c for c in HM_CONVENTIONS if c != ctx.hm_convention][0]
        lines += [ctx.hm_note + f" The other convention, {HM_CONVENTIONS[other]}, is `{other}` "
                  "(`anchoropt report --hm-convention`).", ""]
    lines += [missing_rule(ctx), "", "Methods as the tables name them (record names in brackets; the CSVs use the "
              "record names), and what tuned each (untuned, given file, or search scored on val / test):", ""]
    lines += [f"- {markdown(ctx.name(m), line_start=True)} ({markdown(m)}): "
              f"{values('tuning', ctx.df[ctx.df['method'] == m])}" for m in ctx.methods]
    return "\n".join(lines)


def per_dataset_section(ctx: Context) -> str:
    """Per-dataset mean ± std tables, one per metric, datasets as rows and methods as columns."""
    parts = ["## Per-dataset results", "",
             f"{MISSING} marks a missing cell; `{MISSING} (n/N seeds)` a cell with complete runs for "
             "only n of the N seeds (not averaged; see Missing cells)."]
    for metric in ctx.metrics:
        parts += ["", f"### {METRIC_TITLES[metric]} (%)", ""]
        if metric == "hm":
            parts += [ctx.hm_note + (" No ± : an HM of seed means has no seed spread."
                                     if ctx.hm_convention == "seed_averaged" else ""), ""]
        parts.append(md_table(_display_table(ctx, metric)))
    parts += ["", ctx.csv(ctx.cells, "per_dataset.csv")]
    return "\n".join(parts)


def _display_table(ctx: Context, metric: str) -> pd.DataFrame:
    """Dataset x method strings "mean ± std" for one metric."""
    table = pd.DataFrame({"dataset": [f"{dataset_name(d)} (source)" if d == ctx.source else dataset_name(d)
                                      for d in ctx.datasets]})
    for method in ctx.methods:
        cells = ctx.cells[ctx.cells["method"] == method].set_index("dataset")
        table[ctx.name(method)] = [mean_std(cells.at[d, f"{metric}_mean"], cells.at[d, f"{metric}_std"],
                                  cells.at[d, f"{metric}_n"], len(ctx.seeds))
                         for d in ctx.datasets]
    return table


def anchor_section(ctx: Context) -> str:
    """The anchor prompt's own accuracy next to its method's, per dataset (methods with anchors)."""
    parts = ["## Anchor prompt vs method", ""]
    if ctx.anchor_cells.empty:
        return "\n".join(parts + ["No record has anchor-prompt accuracy (`metrics.acc_anchor_*`)."])
    methods = list(dict.fromkeys(ctx.anchor_cells["method"]))
    parts += ["Accuracy of each method's anchor prompt alone (the learned anchors, no soft tokens) next to "
              f"the method's own, means over seeds ({MISSING}: missing cell); Δ = method − anchor prompt "
              f"({ctx.label} points). {ctx.hm_note}".rstrip(), ""]
    own = ctx.cells.set_index(["method", "dataset"])
    anchor = ctx.anchor_cells.set_index(["method", "dataset"])
    rows = []
    for dataset in ctx.datasets:
        for method in methods:
            row = {"dataset": dataset_name(dataset), "method": ctx.name(method)}
            for metric in ctx.metrics:
                title = METRIC_TITLES[metric] if metric != "acc" else "accuracy"
                row[title] = num(own.at[(method, dataset), f"{metric}_mean"])
                row[f"anchor {title}"] = num(anchor.at[(method, dataset), f"{metric}_mean"])
            a, b = own.at[(method, dataset), f"{ctx.primary}_mean"], anchor.at[(method, dataset), f"{ctx.primary}_mean"]
            row[f"Δ {ctx.label}"] = num(a - b)
            rows.append(row)
    parts += [md_table(pd.DataFrame(rows)), "", ctx.csv(ctx.anchor_cells, "anchor_prompt.csv")]
    return "\n".join(parts)


def averages_section(ctx: Context) -> str:
    """Averages over all datasets and, when some are incomplete, over the complete ones."""
    common = [d for d in complete_datasets(ctx.cells, ctx.methods, ctx.metrics) if d in ctx.scored]
    what = ("Two all-dataset averages of HM: **HM of averaged base and novel** = "
            "2·B·N/(B+N) of the average base B and novel N accuracies (as papers report), and "
            f"**mean of per-dataset HM**. {ctx.hm_note}" if ctx.source is None else
            f"Mean accuracy over the target datasets (the source, {ctx.md(ctx.source)}, is left out).")
    parts = ["## Averages", "", what + " A method with a missing cell gets no average "
             f"({MISSING}) rather than one over fewer datasets."]
    kind = "datasets" if ctx.source is None else "target datasets"
    scopes = [("all", ctx.scored, f"### Over all {len(ctx.scored)} {kind}")]
    if len(common) < len(ctx.scored):
        scopes.append(("common", common, f"### Over the {len(common)} {kind} where every "
                       f"method is complete ({ctx.md(', '.join(map(dataset_name, common)) or 'none')})"))
    tables = []
    for scope, datasets, title in scopes:
        avg = averages(ctx.cells, datasets, ctx.metrics)
        parts += ["", title, "", md_table(_averages_display(avg.rename(index=ctx.name)))]
        tables.append(avg.reset_index().assign(scope=scope))
    parts += ["", ctx.csv(pd.concat(tables, ignore_index=True), "averages.csv")]
    return "\n".join(parts)


def _averages_display(avg: pd.DataFrame) -> pd.DataFrame:
    complete = [f"{c}/{n}" for c, n in zip(avg["n_complete"], avg["n_datasets"])]
    note = ["" if c == n else "missing cell(s): no average" for c, n in zip(avg["n_complete"], avg["n_datasets"])]
    if "hm_of_averages" not in avg.columns:
        return pd.DataFrame({"method": avg.index, "complete datasets": complete,
                             "mean target accuracy": avg["acc"].map(num), "note": note})
    return pd.DataFrame({"method": avg.index, "complete datasets": complete,
                         "base": avg["acc_base"].map(num), "novel": avg["acc_novel"].map(num),
                         "HM of averaged base and novel": avg["hm_of_averages"].map(num),
                         "mean of per-dataset HM": avg["mean_hm"].map(num), "note": note})


def paired_section(ctx: Context) -> str:
    """Wilcoxon + Holm + bootstrap over datasets and t-tests over seeds, each method vs baseline."""
    parts = [f"## Paired tests against {ctx.md(ctx.name(ctx.baseline))}", ""]
    summary = ctx.comparisons
    if summary.empty:
        return "\n".join(parts + ["Only one method: nothing to compare."])
    parts += [f"Δ = method − baseline ({ctx.label} points). " + _pair_explanation(ctx, len(summary)), "",
              md_table(_pair_display(ctx, summary, holm_column=True)), "",
              *_exclusion_notes(ctx, summary), ctx.csv(summary, "paired_wilcoxon.csv"), "",
              "### Paired t-test over seeds per dataset", "", _ttest_explanation(ctx), ""]
    ttests = ctx.baseline_ttests
    parts += [md_table(_ttest_display(ctx, ttests)), "", ctx.csv(ttests, "paired_ttest.csv")]
    return "\n".join(parts)


def _ttest_explanation(ctx: Context, delta: str = "method − baseline") -> str:
    return (f"`scipy.stats.ttest_rel` on each run's own {ctx.label}, pairs matched by seed, two-sided, "
            f"no multiplicity correction. Δ = {delta} ({ctx.label} points). A Δ that is the same "
            "on every seed has zero variance: t would be infinite and p zero, which is no evidence, so the "
            "row is flagged (`zero_variance` in the CSV) and shows no t or p.")


def _pair_explanation(ctx: Context, holm_family: int) -> str:
    convention = f" ({HM_CONVENTIONS[ctx.hm_convention]})" if ctx.protocol == "base2novel" else ""
    text = (f"Over {'datasets' if ctx.source is None else 'target datasets'}, on per-dataset {ctx.label}"
            f"{convention}: Wilcoxon signed-rank test, "
            f"{wilcoxon_details(len(ctx.scored))}; and a {CONFIDENCE:.0%} bootstrap CI of the mean difference "
            f"(`scipy.stats.bootstrap`, BCa, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}). Only "
            "datasets where both methods are complete are used.")
    if holm_family:
        text += (f" Wilcoxon p-values are Holm-corrected across the {holm_family} comparison(s)"
                 f" (significant: p (Holm) < {ALPHA}); the smallest reachable Holm p is the smallest "
                 f"reachable p times {holm_family}.")
    return text


def _pair_display(ctx: Context, summary: pd.DataFrame, holm_column: bool) -> pd.DataFrame:
    family = len(summary) if holm_column else 1
    table = pd.DataFrame({
        "method": summary["method"].map(ctx.name), "vs": summary["baseline"].map(ctx.name),
        "datasets used": summary["n_datasets"], "nonzero Δ": summary["n_nonzero"],
        f"mean Δ {ctx.label}": summary["mean_diff"].map(num),
        f"{CONFIDENCE:.0%} CI": [f"[{num(lo)}, {num(hi)}]"
                                 for lo, hi in zip(summary["ci_low"], summary["ci_high"])],
        "Wilcoxon W": summary["wilcoxon_W"].map(lambda w: num(w, 1)),
        "p method": summary["p_method"].replace("", MISSING),
        "p": summary["p"].map(pval), "smallest reachable p": summary["min_p"].map(pval)})
    p_final = summary["p_holm"] if holm_column else summary["p"]
    if holm_column:
        table["p (Holm)"] = summary["p_holm"].map(pval)
    table["significant"] = ["yes" if p < ALPHA else "no" if pd.notna(p) else MISSING for p in p_final]
    table["note"] = [_pair_note(r, family) for r in summary.itertuples()]
    return table


def _pair_note(r, family: int) -> str:
    notes = [r.note] if r.note else []
    if pd.notna(r.min_p) and min(1.0, r.min_p * family) >= ALPHA:
        notes.append(f"p < {ALPHA} unreachable with {r.n_nonzero} nonzero Δ: 'not significant' is certain")
    return "; ".join(notes)


def _exclusion_notes(ctx: Context, summary: pd.DataFrame) -> list[str]:
    notes = [f"- {markdown(ctx.name(r.method), line_start=True)} vs {markdown(ctx.name(r.baseline))}: {r.n_datasets} "
             f"datasets used; excluded (missing cell): {markdown(_datasets_text(r.excluded) or 'none')}."
             for r in summary.itertuples()]
    return notes + [""]


def _ttest_display(ctx: Context, ttests: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"method": ttests["method"].map(ctx.name).to_numpy(),
                         "dataset": ttests["dataset"].map(dataset_name).to_numpy(),
                         "seeds": ttests["n_seeds"].to_numpy(),
                         f"mean Δ {ctx.label}": ttests["mean_diff"].map(num).to_numpy(),
                         "t": ttests["t"].map(lambda t: num(t, 3)).to_numpy(),
                         "p": ttests["p"].map(pval).to_numpy(), "note": ttests["note"].to_numpy()})


def matrix_section(ctx: Context, pairs: Mapping[str, str] | None) -> str:
    """Each method against its base (``pairs``: method -> base, e.g. ``maple_anchoropt: maple``):
    the papers' averages table (each base, then its methods in the order of ``pairs``), Wilcoxon
    over datasets with Holm across the pairs, wins / ties / losses, and t-tests over seeds."""
    parts = ["## Method matrix: each method against its base", ""]
    if not pairs:
        return "\n".join(parts + ["Not requested (no pairs given: suite key `pairs`, or `anchoropt report "
                                  "--pair METHOD=BASE`)."])
    summary = pd.DataFrame([compare_over_datasets(ctx.primary_matrix, m, b) | win_tie_loss(ctx.primary_matrix, m, b)
                            for m, b in pairs.items()])
    summary["p_holm"] = holm(summary["p"])
    ttests = pd.concat([ctx.ttests(m, b) for m, b in pairs.items()], ignore_index=True)
    table = _pair_display(ctx, summary, holm_column=True)
    table.insert(5, "wins / ties / losses", [f"{r.wins} / {r.ties} / {r.losses}" for r in summary.itertuples()])
    table.insert(table.columns.get_loc("note"), f"seeds: t-test p < {ALPHA} (better / worse)",
                 [_ttest_count(ttests, m, b) for m, b in pairs.items()])
    return "\n".join(parts + [
        "### Averages per base (as the papers' tables)", "", _matrix_explanation(ctx), "",
        md_table(_matrix_averages(ctx, pairs)), "",
        "### Paired tests: each method against its base", "",
        f"Δ = method − its base ({ctx.label} points); wins / ties / losses count datasets. "
        + _pair_explanation(ctx, len(summary)), "", md_table(table), "", *_exclusion_notes(ctx, summary),
        ctx.csv(summary, "pairs_wilcoxon.csv"), "",
        "### Paired t-test over seeds per dataset (each method against its base)", "",
        _ttest_explanation(ctx, "method − its base") + " Cells: Δ (p).", "",
        md_table(_ttest_wide(ctx, ttests, pairs)), "", ctx.csv(ttests, "pairs_ttest.csv")])


def _matrix_explanation(ctx: Context) -> str:
    if ctx.source is not None:
        return (f"Mean accuracy over the {len(ctx.scored)} target datasets (the source, {ctx.md(ctx.source)}, left out); "
                f"Δ = method − its base. A method with a missing cell gets no average ({MISSING}).")
    return (f"Over the {len(ctx.scored)} datasets: base and novel = means of the seed-averaged accuracies, HM = "
            "HM of the averaged base and novel (as the papers report); Δ = method − its base (points). A "
            f"method with a missing cell gets no average ({MISSING}).")


def _matrix_averages(ctx: Context, pairs: Mapping[str, str]) -> pd.DataFrame:
    """One row per base, then one per method paired with it, with the all-dataset averages and Δ."""
    avg = averages(ctx.cells, ctx.scored, ctx.metrics)
    columns = {"acc": "mean target accuracy"} if ctx.source is not None else \
        {"acc_base": "base", "acc_novel": "novel", "hm_of_averages": "HM"}
    rows = []
    for base in dict.fromkeys(pairs.values()):
        for method in [base, *(m for m, b in pairs.items() if b == base)]:
            row = {"base method": ctx.name(base), "method": ctx.name(method) if method == base else
                   "+ " + ctx.name(method)}
            row |= {title: num(avg.at[method, col]) for col, title in columns.items()}
            row |= {f"Δ {title}": "" if method == base else num(avg.at[method, col] - avg.at[base, col])
                    for col, title in columns.items()}
            rows.append(row)
    return pd.DataFrame(rows)


def _ttest_count(ttests: pd.DataFrame, method: str, base: str) -> str:
    rows = ttests[(ttests["method"] == method) & (ttests["baseline"] == base) & (ttests["p"] < ALPHA)]
    return f"{int((rows['mean_diff'] > 0).sum())} / {int((rows['mean_diff'] < 0).sum())}"


def _ttest_wide(ctx: Context, ttests: pd.DataFrame, pairs: Mapping[str, str]) -> pd.DataFrame:
    """Dataset x pair: ``Δ (p)`` of the t-test over seeds (``Δ (note)`` where there is no p)."""
    table = pd.DataFrame({"dataset": [dataset_name(d) for d in ctx.scored]})
    for method, base in pairs.items():
        sub = ttests[(ttests["method"] == method) & (ttests["baseline"] == base)].set_index("dataset")
        table[f"{ctx.name(method)} vs {ctx.name(base)}"] = [
            f"{num(sub.at[d, 'mean_diff'])} ({pval(sub.at[d, 'p'])})" if pd.notna(sub.at[d, "p"]) else
            f"{num(sub.at[d, 'mean_diff'])} ({sub.at[d, 'note'] or MISSING})" for d in ctx.scored]
    return table


def friedman_section(ctx: Context) -> str:
    """Friedman test, average ranks, Nemenyi p-values and the CD diagram (3+ methods)."""
    parts = ["## Friedman / Nemenyi", ""]
    if len(ctx.methods) < 3:
        return "\n".join(
            parts + [f"Needs three or more methods; the records have {len(ctx.methods)}."])
    hm = ctx.primary_matrix.dropna()
    excluded = sorted(set(ctx.scored) - set(hm.index))
    parts.append(f"On per-dataset {ctx.label} over the {len(hm)} datasets where all {len(ctx.methods)} "
                 f"methods are complete; excluded: {ctx.md(', '.join(map(dataset_name, excluded)) or 'none')}. "
                 f"{ctx.hm_note}".rstrip())
    if len(hm) < 2:
        return "\n".join(parts + ["", "Fewer than two complete datasets: no test."])
    return "\n".join(parts + ["", *_friedman_parts(ctx, hm, excluded)])


def _friedman_parts(ctx: Context, hm: pd.DataFrame, excluded: list[str]) -> list[str]:
    """Friedman / Nemenyi results on the complete dataset x method HM table ``hm``."""
    (k, n), (stat, p) = (len(hm.columns), len(hm)), friedman_test(hm)
    ranks, cd, pvals = average_ranks(hm), critical_difference(k, n), nemenyi(hm)
    all_tie = pd.isna(stat)
    reason = ("every method ties on every dataset (all ranks equal): the tie-corrected Friedman statistic "
              "is 0/0, so there is nothing to test" if all_tie else "")
    summary = pd.DataFrame([{"statistic": stat, "p": p, "k": k, "n_datasets": n,
                             "critical_difference": cd, "excluded": ", ".join(excluded), "note": reason}])
    result = (f"Friedman χ² = {num(stat, 3)}, p = {pval(p)}" + (f" ({MISSING}: {reason})" if all_tie else "")
              + f" (`scipy.stats.friedmanchisquare`, tie-corrected), k = {k}, N = {n}. Nemenyi critical "
              f"difference (α = {ALPHA}) = {cd:.3f} rank.")
    groups = _rank_groups(ctx, ranks, pvals)
    return [result, "", ctx.csv(summary, "friedman.csv"), "",
            f"### Average ranks (1 = highest {ctx.label})", "",
            "Ties get the average rank. Groups: methods joined by a bar in the CD diagram (every pair "
            f"with Nemenyi p ≥ {ALPHA}).", "",
            md_table(pd.DataFrame({"method": ranks.index.map(ctx.name), "average rank": ranks.map(num),
                                   "not different from (Nemenyi)": [groups[m] for m in ranks.index]})), "",
            ctx.csv(ranks.rename_axis("method").reset_index(), "average_ranks.csv"), "",
            "### Nemenyi p-values (`scikit_posthocs.posthoc_nemenyi_friedman`)", "",
            md_table(pvals.map(pval).rename(index=ctx.name, columns=ctx.name).rename_axis("method").reset_index()), "",
            ctx.csv(pvals, "nemenyi.csv", index=True), "",
            _cd_embed(ctx, ranks, pvals, cd)]


def _cd_embed(ctx: Context, ranks: pd.Series, pvals: pd.DataFrame, cd: float) -> str:
    """The CD diagram with display names (the ranks and groups of the tables above)."""
    names = {m: ctx.name(m) for m in ranks.index}
    colours = method_colours(ctx.methods)
    return plot_cd(ranks.rename(index=names), pvals.rename(index=names, columns=names), cd,
                   ctx.out_dir / "cd_diagram.png", ctx.label, {names[m]: colours[m] for m in ranks.index})


def _datasets_text(datasets: str) -> str:
    """A comma-separated list of dataset names as the tables name them."""
    return ", ".join(dataset_name(d.strip()) for d in datasets.split(",") if d.strip())


def _rank_groups(ctx: Context, ranks: pd.Series, pvals: pd.DataFrame) -> dict[str, str]:
    return {m: ", ".join(ctx.name(o) for o in ranks.index if o != m and pvals.at[m, o] >= ALPHA) or "none"
            for m in ranks.index}


def positions_section(ctx: Context) -> str:
    """The learned position matrices W per dataset (the paper's Figure 4), from ``prompts.pt``."""
    parts = ["## Learned positions (Figure 4)", ""]
    positions = learned_positions(ctx.df)
    if positions.empty:
        return "\n".join(parts + ["No record has learned tensors with a position matrix next to it "
                                  "(`<record>.prompts.pt`, or `prompts.pt` beside `record.json`)."])
    shown = positions.assign(share=[s.round(4).tolist() for s in positions["share"]])
    return "\n".join(parts + [
        "Argmax position matrix W of each AnchorOPT run (row i = prompt position i, one-hot on the token "
        "placed there; V = soft tokens, A = anchors), as the share of seeds placing each token at each "
        "position.", "", plot_positions(positions, {m: ctx.name(m) for m in ctx.methods},
                                        ctx.out_dir / "positions.png"),
        "", ctx.csv(shown, "positions.csv")])


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
    ttests = ctx.ttests(two_stage, one_stage)
    return [f"One-stage: **{ctx.md(ctx.name(one_stage))}**; two-stage: **{ctx.md(ctx.name(two_stage))}**. "
            "Δ = two-stage − one-stage. " + _pair_explanation(ctx, holm_family=0)
            + " A single comparison: no correction.", "",
            md_table(_pair_display(ctx, summary, holm_column=False)), "",
            *_exclusion_notes(ctx, summary), ctx.csv(summary, "schedule_wilcoxon.csv"), "",
            "### Paired t-test over seeds per dataset (two-stage vs one-stage)", "",
            _ttest_explanation(ctx, "two-stage − one-stage"), "",
            md_table(_ttest_display(ctx, ttests)), "", ctx.csv(ttests, "schedule_ttest.csv"), ""]


def _history_parts(ctx: Context, histories: pd.DataFrame) -> list[str]:
    best = best_so_far(histories)
    return ["### Best HM against trials spent", "",
            f"Failed or pruned trials count as spent; {MISSING}: no trial of that schedule has an HM yet.", "",
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
             f"(expected seeds: {', '.join(map(str, ctx.seeds))}), under the missing-data rule in the header."]
    if len(table):
        parts += ["", md_table(table.assign(method=table["method"].map(ctx.name),
                                            dataset=table["dataset"].map(dataset_name)))]
    parts += ["", ctx.csv(table, "missing_cells.csv")]
    return "\n".join(parts)
