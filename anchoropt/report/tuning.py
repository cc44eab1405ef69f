"""The main job's tuning sections: a search per dataset, equal budgets per schedule, tuned vs defaults.

:class:`Tuning` holds what ``anchoropt run`` read from its search folders; :func:`tuning_sections`
turns it (with the benchmark's records, :class:`~anchoropt.report.context.Context`) into four
report sections: best configuration per dataset with HM against anchor count and pooled
importances; best-so-far curves under equal budgets; tuned vs untuned reference defaults per
schedule; and the closing answers with the job's wall time.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.ticker
import pandas as pd

from anchoropt.escape import markdown, mathtext
from anchoropt.report.context import Context
from anchoropt.report.figures import (COLUMN_WIDTH, PAPER_STYLE, legend_above, new_figure, plot_history, save,
                                       schedule_colour)
from anchoropt.report.statistics import ALPHA, best_so_far, compare_over_datasets, holm
from anchoropt.report.tables import dataset_name, md_table, num, pval, schedule_name

PARAMS = ("n_anchors", "lr", "anchor_lr", "kd_weight", "ce_weight", "n_ctx", "epochs")  # shown where searched


@dataclass(frozen=True)
class Tuning:
    """The searches of a main job.

    ``trials``: one row per finished trial of every search (columns schedule, dataset, trial,
    status, hm (val or test HM of the search objective, percent), hm_se (its standard error from
    the images scored), origin, wall_time_s and the searched parameters). ``searches``: one row
    per search (schedule, dataset, num_trials, sampler, importances_note, and the best trial
    against the defaults: best_trial, best_hm_se, delta_vs_default, p_vs_default (paired
    permutation test, Bonferroni-adjusted), beats_default, vs_default in words). ``importances``:
    schedule, dataset, param, importance (Optuna PED-ANOVA; searches where they were estimable only). ``tuned`` / ``untuned``: schedule ->
    method name in the records. ``objective``, ``scheduler``: of every search.
    ``wall_time_s``: the job's wall time up to the report.
    """

    trials: pd.DataFrame
    searches: pd.DataFrame
    importances: pd.DataFrame
    tuned: dict[str, str]
    untuned: dict[str, str]
    objective: str
    scheduler: str
    wall_time_s: float | None = None


def tuning_sections(ctx: Context, tuning: Tuning) -> list[str]:
    """The four sections (markdown), writing their CSVs and figures into ``ctx.out_dir``."""
    best = best_per_search(tuning.trials, tuning.searches)
    curves = gain_curves(tuning.trials)
    gains = tuned_vs_untuned(ctx, tuning)
    one, two = tuning.tuned["one_stage"], tuning.tuned["two_stage"]
    schedule_test = compare_over_datasets(ctx.primary_matrix, two, one)
    return [_search_section(ctx, tuning, best), _budget_section(ctx, tuning, curves),
            _gain_section(ctx, gains), _answers(ctx, tuning, best, schedule_test, gains)]


def best_per_search(trials: pd.DataFrame, searches: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (schedule, dataset): the best completed trial (``search.outputs.best_row``: never one
    stopped early; its parameters, HM and HM's standard error) and the HM of trial 0 (the
    reference defaults, when it completed); with ``searches``, the search's own paired test of
    the best against the defaults (``delta_vs_default``, ``p_vs_default``, ``beats_default``)."""
    from anchoropt.search.outputs import best_row

    rows = []
    for (schedule, dataset), g in trials.groupby(["schedule", "dataset"], sort=True):
        default = g[(g["trial"] == 0) & (g["status"] == "complete")]["hm"]
        row = {"schedule": schedule, "dataset": dataset, "trials": len(g),
               "stopped": int((g["status"] == "stopped").sum()), "failed": int((g["status"] == "failed").sum()),
               "default_hm": float(default.iloc[0]) if len(default) else math.nan}
        top = best_row(g if "hm_se" in g else g.assign(hm_se=math.nan))
        if top is not None:
            se = pd.to_numeric(top["hm_se"], errors="coerce")
            row |= {"best_trial": int(top["trial"]), "best_hm": float(top["hm"]), "best_hm_se": float(se),
                    **{p: top[p] for p in PARAMS if p in top}}
        rows.append(row)
    best = pd.DataFrame(rows)
    if searches is not None and "beats_default" in searches:
        best = best.merge(searches[["schedule", "dataset", "delta_vs_default", "p_vs_default", "beats_default"]],
                          on=["schedule", "dataset"], how="left")
    return best


def gain_curves(trials: pd.DataFrame) -> pd.DataFrame:
    """Best HM so far minus trial 0's (the defaults') HM, against trials spent, per (schedule,
    dataset), and its mean over datasets (dataset ``mean``). Stopped and failed trials count as
    spent (``statistics.best_so_far``)."""
    frames = []
    for (schedule, dataset), g in trials.groupby(["schedule", "dataset"], sort=True):
        hm = g["hm"].where(g["status"] == "complete")
        curve = best_so_far(pd.DataFrame({"schedule": schedule, "trial_number": g["trial"], "hm": hm}))
        curve["dataset"] = dataset
        reached = curve["best_hm"].dropna()
        curve["gain"] = curve["best_hm"] - (reached.iloc[0] if len(reached) else math.nan)
        frames.append(curve[["schedule", "dataset", "trials_spent", "best_hm", "gain"]])
    per = pd.concat(frames, ignore_index=True)
    mean = per.groupby(["schedule", "trials_spent"], as_index=False)["gain"].mean().assign(dataset="mean")
    return pd.concat([per, mean], ignore_index=True)


def tuned_vs_untuned(ctx: Context, tuning: Tuning) -> pd.DataFrame:
    """``compare_over_datasets`` of each schedule's tuned method against its untuned reference
    defaults on the benchmark's per-dataset test HM, Holm-corrected across the schedules."""
    rows = [compare_over_datasets(ctx.primary_matrix, tuning.tuned[s], tuning.untuned[s]) | {"schedule": s}
            for s in tuning.tuned]
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"])
    return table


def pooled_importances(tuning: Tuning) -> pd.DataFrame:
    """Mean PED-ANOVA importance of each parameter over the searches where it was estimable,
    per schedule and over both (``all``), with the number of searches averaged."""
    imp = tuning.importances
    if imp.empty:
        return pd.DataFrame(columns=["schedule", "param", "importance", "searches"])
    both = imp.assign(schedule="all")
    out = pd.concat([imp, both]).groupby(["schedule", "param"], as_index=False).agg(
        importance=("importance", "mean"), searches=("dataset", "size"))
    return out.sort_values(["schedule", "importance"], ascending=[True, False])


def _search_section(ctx: Context, tuning: Tuning, best: pd.DataFrame) -> str:
    s = tuning.searches
    shown = best.assign(**{c: best[c].map(num) for c in ("default_hm", "best_hm", "best_hm_se", "delta_vs_default")
                           if c in best},
                        schedule=best["schedule"].map(schedule_name), dataset=best["dataset"].map(dataset_name))
    if "p_vs_default" in shown:
        shown["p_vs_default"] = shown["p_vs_default"].map(lambda v: pval(v) if isinstance(v, float) and v == v else "")
        beats = best["beats_default"]
        verdicts = f"{int(beats.eq(True).sum())} of {len(best)}"  # None where no test was made
    else:
        verdicts = None
    for p in ("lr", "anchor_lr"):
        if p in shown:
            shown[p] = shown[p].map(lambda v: f"{v:.2e}" if isinstance(v, float) and not math.isnan(v) else v)
    pooled = pooled_importances(tuning)
    no_imp = s[s["importances_note"].notna()]
    return "\n".join([
        "## Anchor count and learning rates: a search per dataset", "",
        f"Each schedule is searched on each dataset separately ({len(s)} searches, {int(s['num_trials'].max())} "
        f"trials each, objective {markdown(tuning.objective)}: "
        + ("the leak-free pseudo base/novel split of the base classes" if tuning.objective == "val" else "test images")
        + f"; scheduler {markdown(tuning.scheduler)}; sampler {markdown(s['sampler'].iloc[0])}). Trial 0 of every search is the "
        "reference default configuration, so a search's best is never below it on its own objective. "
        "HM below is the search objective's, not the benchmark's test HM. The best trial is the best *completed* "
        "trial: one the scheduler stopped early never counts, in any output. `best_hm_se`: the standard error of "
        "the best trial's HM from the images it was scored on (delta method on binomial accuracies, "
        "`anchoropt.metrics.hm_standard_error`).", "",
        *([f"Does the best beat the defaults beyond noise? A paired permutation test of best − trial 0 on the same "
           f"{tuning.objective} images (`delta_vs_default`, points), one-sided, Bonferroni over the completed trials "
           f"that could have been picked (`p_vs_default`): the best beats the defaults in {verdicts} searches "
           "(`beats_default`; empty where the best is trial 0 or no test could be made).", ""] if verdicts else []),
        md_table(shown.drop(columns=["best_trial"], errors="ignore")), "", ctx.csv(best, "search_best.csv"), "",
        *_anchors_subsection(ctx, tuning),
        "### Parameter importances pooled over datasets", "",
        "Mean Optuna PED-ANOVA importance over the searches where it could be estimated "
        f"({len(s) - len(no_imp)} of {len(s)}; the others: "
        + (markdown("; ".join(sorted(set(no_imp["importances_note"])))) if len(no_imp) else "none") + ").", "",
        md_table(pooled.assign(importance=pooled["importance"].map(lambda v: f"{v:.2f}"),
                               schedule=pooled["schedule"].map(schedule_name))) if len(pooled)
        else "No search had estimable importances.", "", ctx.csv(pooled, "importances_pooled.csv")])


def _budget_section(ctx: Context, tuning: Tuning, curves: pd.DataFrame) -> str:
    t = tuning.trials
    budget = t.groupby("schedule").agg(searches=("dataset", "nunique"), trials=("trial", "size"),
                                       stopped=("status", lambda x: int((x == "stopped").sum())),
                                       failed=("status", lambda x: int((x == "failed").sum())),
                                       trial_seconds=("wall_time_s", "sum")).reset_index()
    mean = curves[curves["dataset"] == "mean"]
    last = mean.groupby("schedule")["gain"].last()
    return "\n".join([
        "## Equal tuning budgets: one-stage vs two-stage", "",
        "Both schedules get the same space, trials per dataset, scheduler and objective; the paired test of the "
        "tuned schedules is in the one-stage vs two-stage section (two-stage − one-stage, test HM).", "",
        md_table(budget.assign(trial_seconds=budget["trial_seconds"].map(lambda v: f"{v:.0f}"),
                               schedule=budget["schedule"].map(schedule_name))), "",
        "Best HM so far minus the defaults' HM (trial 0), mean over datasets, against trials spent: "
        + ", ".join(f"{markdown(schedule_name(s))} {v:+.2f} after all trials" for s, v in last.items()) + ".", "",
        plot_history(mean, ctx.out_dir / "search_best_so_far.png", value="gain",
                     ylabel="best HM so far − defaults' HM\n(points, mean over datasets)",
                     xlabel="trials spent (per dataset)", methods=tuning.untuned), "",
        ctx.csv(curves, "search_best_so_far.csv")])


def _gain_section(ctx: Context, gains: pd.DataFrame) -> str:
    shown = pd.DataFrame({"schedule": gains["schedule"].map(schedule_name), "tuned": gains["method"].map(ctx.name),
                          "defaults": gains["baseline"].map(ctx.name),
                          "datasets": gains["n_datasets"], "mean Δ HM": gains["mean_diff"].map(num),
                          "95% CI": [f"[{num(a)}, {num(b)}]" for a, b in zip(gains["ci_low"], gains["ci_high"])],
                          "Wilcoxon p": gains["p"].map(pval), "Holm p": gains["p_holm"].map(pval)})
    return "\n".join([
        "## Does tuning help? Tuned vs reference defaults", "",
        "Per schedule, the tuned method (each dataset's own search's best configuration) against the same "
        "schedule with the reference defaults, on the benchmark's test HM; Δ = tuned − defaults, paired over "
        "datasets (Wilcoxon signed-rank, bootstrap CI of the mean), Holm across the two schedules.", "",
        md_table(shown), "", ctx.csv(gains, "tuned_vs_defaults.csv")])


def _answers(ctx: Context, tuning: Tuning, best: pd.DataFrame, schedule_test: dict, gains: pd.DataFrame) -> str:
    counts = best.groupby("schedule")["n_anchors"].agg(lambda x: ", ".join(
        f"{int(k)}: {v}" for k, v in x.value_counts().sort_index().items())) if "n_anchors" in best else {}
    lines = ["## The three answers, as measured", ""]
    if tuning.wall_time_s is not None:
        lines.append(f"Main job wall time up to this report: {tuning.wall_time_s / 60:.1f} min "
                     f"({tuning.wall_time_s:.0f} s).")
        lines.append("")
    lines.append("1. **Anchor count and learning rates.** Best n_anchors per dataset (count of datasets): "
                 + "; ".join(f"{markdown(schedule_name(s))}: {c}" for s, c in dict(counts).items()) + ". Per-dataset best configurations "
                 "and pooled importances above.")
    lines.append(f"2. **One- vs two-stage (tuned, equal budgets).** Two-stage − one-stage test HM over "
                 f"{schedule_test['n_datasets']} datasets: mean Δ {num(schedule_test['mean_diff'])} "
                 f"(95% CI [{num(schedule_test['ci_low'])}, {num(schedule_test['ci_high'])}]), Wilcoxon p "
                 f"{pval(schedule_test['p'])}: {verdict(schedule_test, 'two-stage', 'one-stage')}.")
    lines.append("3. **Does tuning help?** Tuned − reference defaults, test HM over datasets: " + "; ".join(
        f"{markdown(schedule_name(r.schedule))}: mean Δ {num(r.mean_diff)} (95% CI [{num(r.ci_low)}, {num(r.ci_high)}], {r.n_datasets} "
        f"datasets), Wilcoxon p {pval(r.p)}, Holm p {pval(r.p_holm)}: "
        f"{verdict({'mean_diff': r.mean_diff, 'p': r.p_holm}, 'tuned', 'the defaults')}"
        for r in gains.itertuples()) + ".")
    return "\n".join(lines)


def verdict(test: dict, method: str, other: str) -> str:
    """The outcome of a paired test in plain words: ``method`` significantly above or below
    ``other`` (p < ``ALPHA``), or no significant difference (also when there is no p)."""
    p, diff = test.get("p"), test.get("mean_diff")
    if p is None or pd.isna(p) or p >= ALPHA or pd.isna(diff):
        return "no significant difference"
    return f"{method} significantly {'above' if diff > 0 else 'below'} {other}"


def _anchors_subsection(ctx: Context, tuning: Tuning) -> list[str]:
    """The HM-against-anchors figure and its caption; nothing where the space did not search
    ``n_anchors`` (a figure of one x value says nothing)."""
    if "n_anchors" not in tuning.trials or tuning.trials["n_anchors"].nunique() < 2:
        return []
    return ["### HM against the number of anchors, all datasets", "",
            "Every trial with an HM, its HM minus its search's trial-0 (defaults) HM, so that datasets of different "
            "difficulty share one axis: completed trials filled, trials stopped early hollow (their HM is of fewer "
            "epochs; they are never best); failed trials have no HM and are left out.", "",
            _plot_hm_vs_anchors(tuning.trials, ctx.out_dir / "hm_vs_anchors.png", tuning.untuned), ""]


def _plot_hm_vs_anchors(trials: pd.DataFrame, path, methods: dict[str, str]) -> str:
    with matplotlib.rc_context(PAPER_STYLE):
        fig, ax = new_figure((COLUMN_WIDTH, 2.4))
        _draw_hm_vs_anchors(ax, trials, methods)
        save(fig, path)
    return f"![HM against the number of anchors]({path.name})"


def _draw_hm_vs_anchors(ax, trials: pd.DataFrame, methods: dict[str, str]) -> None:
    shown = trials[trials["status"].isin(["complete", "stopped"]) & trials["hm"].notna()]
    default = trials[trials["trial"] == 0].set_index(["schedule", "dataset"])["hm"]
    for i, (schedule, g) in enumerate(shown.groupby("schedule")):
        ref = default.reindex(list(zip(g["schedule"], g["dataset"]))).to_numpy()
        x = g["n_anchors"].astype(float).to_numpy() + (-0.15 if i == 0 else 0.15)
        done = (g["status"] == "complete").to_numpy()
        name, colour = mathtext(schedule_name(schedule)), schedule_colour(schedule, methods)
        ax.scatter(x[done], (g["hm"].to_numpy() - ref)[done], s=12, alpha=0.6, label=name, color=colour)
        if (~done).any():
            ax.scatter(x[~done], (g["hm"].to_numpy() - ref)[~done], s=12, alpha=0.6, facecolors="none",
                       edgecolors=colour, label=f"{name}, stopped early")
    ax.axhline(0, color="grey", lw=0.8)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("anchors N")
    ax.set_ylabel("HM − defaults' HM\n(points, search objective)")
    legend_above(ax)
    ax.grid(alpha=0.3)


def read_tuning(results: str | Path, methods: list[str], tuned: dict[str, str] | None = None) -> Tuning | None:
    """The searches of a main job's results folder, as ``anchoropt run`` passes them to the report:
    ``RESULTS/searches/<schedule>/<dataset>/`` (their ``trials.csv`` and ``summary.json``, written at
    the end of every search run), so that ``anchoropt report RESULTS`` rebuilds the same sections.

    ``methods``: the methods of the records. ``tuned``: schedule -> tuned method, as the main job
    recorded it (``RESULTS/job.json``); without it (results of an older anchoropt), the tuned method
    of a schedule is the record method ending in ``<schedule>_tuned``. The untuned method is the
    tuned one's name less ``_tuned`` (the main job's naming, ``pipeline.search_per_dataset``).
    Returns None when ``RESULTS/searches`` holds no finished search or the records lack the tuned
    and untuned methods of both schedules.

    Raises:
        ValueError: a search folder whose trials.csv or summary.json does not read (naming it).
    """
    root = Path(results) / "searches"
    folders = sorted(p.parent for p in root.glob("*/*/summary.json")) if root.is_dir() else []
    trials, searches, importances = [], [], []
    objectives, schedulers = set(), set()
    for folder in folders:
        schedule, dataset = folder.parent.name, folder.name
        try:
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            table = pd.read_csv(folder / "trials.csv")
        except (OSError, ValueError) as err:
            raise ValueError(f"search {folder}: unreadable trials.csv or summary.json ({err})") from None
        trials.append(table.assign(schedule=schedule, dataset=dataset))
        searches.append({"schedule": schedule, "dataset": dataset, "num_trials": summary["num_trials"],
                         "sampler": summary.get("sampler_as_run") or summary.get("sampler"),
                         "importances_note": summary.get("importances_note")})
        importances += [{"schedule": schedule, "dataset": dataset, "param": k, "importance": v}
                        for k, v in (summary.get("importances") or {}).items()]
        objectives.add(summary["objective"])
        schedulers.add(summary.get("scheduler", "none"))
    schedules = sorted({s["schedule"] for s in searches})
    if tuned is None:
        tuned = {s: m for s in schedules for m in methods if m.endswith(f"{s}_tuned")}
    if set(tuned) != {"one_stage", "two_stage"} or set(tuned) != set(schedules) or \
            not {*tuned.values(), *(m[:-len("_tuned")] for m in tuned.values())} <= set(methods):
        return None
    return Tuning(pd.concat(trials, ignore_index=True), pd.DataFrame(searches),
                  pd.DataFrame(importances, columns=["schedule", "dataset", "param", "importance"]),
                  tuned, {s: m[:-len("_tuned")] for s, m in tuned.items()}, "/".join(sorted(objectives)),
                  "/".join(sorted(schedulers)))
