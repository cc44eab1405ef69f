"""What a search shows: ``trials.csv`` / ``trials.parquet``, ``best_config.yaml``, ``importances.csv``,
``importances.png``, ``history.png``, ``hm_vs_anchors.png`` and ``summary.json``, all (re)written from the ledger and study."""
from __future__ import annotations

import dataclasses
import math
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from anchoropt.config import make_config
from anchoropt.escape import write_csv
from anchoropt.search.ledger import open_storage, read_results
from anchoropt.search.spec import SearchSpec


@dataclass
class SearchResult:
    """What a search produced. ``trials`` has one row per finished trial (``trials.csv``)."""

    out_dir: Path
    objective: str
    num_trials: int
    n_complete: int  # finished without error (early-stopped ones included)
    n_failed: int
    best_trial: int | None
    best_hm: float | None
    best_params: dict[str, Any]
    best_config: dict[str, Any] | None
    trials: pd.DataFrame = field(repr=False)
    wall_time_s: float = 0.0
    n_stopped: int = 0  # stopped early by the ASHA scheduler
    sampler: str = ""  # as it ran (TPE's random start-up stated against the budget)
    reproducibility: str = ""
    importances: dict[str, float] | None = None  # parameter -> share of HM variance (PED-ANOVA)
    importances_note: str | None = None  # why no importances were written
    notes: list[str] = field(default_factory=list)
    best_hm_se: float | None = None  # standard error (points) of the best trial's objective
    vs_default: dict[str, Any] | None = None  # the best trial against the default one (:func:`versus_default`)

    @property
    def n_done(self) -> int:
        return self.n_complete + self.n_failed

    def summary(self) -> str:
        lines = [f"search {self.out_dir}: {self.n_done}/{self.num_trials} trials done "
                 f"({self.n_complete} complete"
                 f"{f' ({self.n_stopped} stopped early by ASHA)' if self.n_stopped else ''}, "
                 f"{self.n_failed} failed), objective {self.objective}, "
                 f"{self.wall_time_s:.1f} s"]
        if self.best_trial is None:
            lines.append("no trial completed: no best configuration")
        else:
            params = "  ".join(f"{k}={_fmt(v)}" for k, v in self.best_params.items())
            lines.append(f"best HM {self.best_hm:.2f}{_se(self.best_hm_se)} (trial {self.best_trial}): {params}")
            if self.vs_default:
                lines.append(self.vs_default["words"])
            lines.append(f"best config: {self.out_dir / 'best_config.yaml'}")
        lines.append(f"sampler {self.sampler}; {self.reproducibility}")
        lines += [f"note: {n}" for n in self.notes]  # (why no importances: in summary.json)
        if self.n_done < self.num_trials:
            lines.append(f"incomplete: resume with  anchoropt search --resume {self.out_dir}")
        return "\n".join(lines)


def write_outputs(out_dir: str | Path, spec: SearchSpec | None = None, study=None,
                  rows: list[dict] | None = None) -> SearchResult:
    """(Re)write the trials table, best configuration, importances and plots of a search folder."""
    out_dir = Path(out_dir)
    spec = spec or SearchSpec.read(out_dir)
    rows = read_results(out_dir) if rows is None else rows
    if study is None:
        import optuna
        study = optuna.load_study(study_name=spec.study_name, storage=open_storage(spec, out_dir))
    table = trials_table(rows, spec)
    write_csv(table, out_dir / "trials.csv")
    _parquet_safe(table).to_parquet(out_dir / "trials.parquet", index=False)

    best = best_row(table)
    best_trial = best_hm = best_cfg = best_se = vs_default = None
    best_params: dict = {}
    if best is not None:
        best_trial, best_hm = int(best["trial"]), float(best["hm"])
        best_se = None if pd.isna(best["hm_se"]) else float(best["hm_se"])
        best_params = next(r["params"] for r in rows if r["trial"] == best_trial)
        vs_default = versus_default(rows, spec, best_trial)
        # Scored on test by default: the search objective stays in the header and in search.json.
        best_cfg = {**make_config({**spec.base, **best_params}, source="best trial").to_dict(),
                    "eval_split": "test"}
        _write_best_config(out_dir / "best_config.yaml", best_cfg, spec, best_trial, best, done=len(table),
                           vs_default=vs_default)
    else:
        (out_dir / "best_config.yaml").unlink(missing_ok=True)  # never an earlier run's best beside none
    importances, importances_note = _importances(study, out_dir)
    _plot_importances(importances or {}, importances_note, out_dir / "importances.png", spec)
    _plot_history(table, out_dir / "history.png", spec)
    _plot_hm_vs_anchors(table, out_dir / "hm_vs_anchors.png", spec)
    n_failed = int((table["status"] == "failed").sum())
    result = SearchResult(out_dir=out_dir, objective=spec.objective, num_trials=spec.num_trials,
                          n_complete=len(table) - n_failed, n_failed=n_failed, best_trial=best_trial,
                          best_hm=best_hm, best_params=best_params, best_config=best_cfg, trials=table,
                          n_stopped=int((table["status"] == "stopped").sum()), sampler=spec.sampler_description,
                          reproducibility=spec.reproducibility, importances=importances,
                          importances_note=importances_note, notes=spec.notes + [n for run in spec.runs for n in run.get("notes", [])],
                          best_hm_se=best_se, vs_default=vs_default)
    from anchoropt.io import save_json
    save_json({"objective": spec.objective, "num_trials": spec.num_trials, "done": result.n_done,
               "complete": result.n_complete, "stopped": result.n_stopped, "failed": n_failed,
               "best_trial": best_trial, "best_hm": best_hm, "best_hm_se": best_se, "best_params": best_params,
               "vs_default": vs_default,
               "importances": importances, "importances_note": importances_note, "sampler": spec.sampler,
               "sampler_options": spec.sampler_options, "sampler_as_run": spec.sampler_description,
               "seed": spec.seed, "max_concurrent": spec.max_concurrent, "reproducibility": spec.reproducibility,
               "scheduler": spec.scheduler, "runs": len(spec.runs), "notes": result.notes},
              out_dir / "summary.json")
    return result


def best_row(table: pd.DataFrame) -> pd.Series | None:
    """The best trial of a :func:`trials_table`: highest HM among completed trials, the lowest
    trial number on ties; None when none completed. A trial the scheduler stopped early is never
    best: its HM is of fewer epochs than the configuration it would name (the one rule of every
    output: progress bar, summary, ``search show``, plots, report)."""
    pool = table[(table["status"] == "complete") & table["hm"].notna()].sort_values("trial")
    return pool.loc[pool["hm"].idxmax()] if len(pool) else None


# TrainConfig keys that decide which val images a trial scores: two trials agreeing on them scored the same
IMAGE_KEYS = ("data_root", "dataset", "shots", "seed", "eval_split", "val_shots", "val_partitions", "val_folds",
              "val_seeds")


def versus_default(rows: list[dict], spec: SearchSpec, best_trial: int) -> dict[str, Any]:
    """Does the best trial beat the default configuration (the trial enqueued as ``default
    config``, trial 0) beyond the objective's noise? A paired permutation test on the val images
    both scored (:func:`anchoropt.report.statistics.paired_hm_test`), its p Bonferroni-adjusted for
    the completed trials that could have been picked as best (the best was chosen on these very
    images). Returns ``default_trial``, ``delta`` (points), ``p``, ``p_adjusted``, ``compared``,
    ``beats_default`` (bool, or None when no test could be made) and ``words``, one sentence."""
    from anchoropt.report.statistics import ALPHA, paired_hm_test

    default = next((r for r in rows if r.get("origin") == "default config"), None)
    out: dict[str, Any] = {"default_trial": None if default is None else default["trial"], "best_trial": best_trial,
                           "delta": None, "p": None, "p_adjusted": None, "compared": None, "beats_default": None}
    if default is None:
        return out | {"words": "no paired test against the defaults: the default config was not a trial"}
    if default["trial"] == best_trial:
        return out | {"beats_default": False, "words": f"the best trial is the default config (trial {best_trial}): "
                                                       "the search found nothing better on its objective"}
    best = next(r for r in rows if r["trial"] == best_trial)
    if default["status"] != "complete":
        return out | {"words": f"no paired test against the defaults: trial {default['trial']} (default config) "
                               f"is {default['status']}"}
    cfg = {t: {**spec.base, **r["params"]} for t, r in (("default", default), ("best", best))}
    differ = [k for k in IMAGE_KEYS if cfg["default"].get(k) != cfg["best"].get(k)]
    if differ or not all(r.get("correct_base") and r.get("correct_novel") for r in (default, best)):
        why = f"they differ in {', '.join(differ)}" if differ else "their per-image results were not recorded"
        return out | {"words": f"no paired test against the defaults: trials {best_trial} and {default['trial']} did "
                               f"not score the same images ({why})"}
    test = paired_hm_test((best["correct_base"], best["correct_novel"]),
                          (default["correct_base"], default["correct_novel"]))
    compared = sum(r["status"] == "complete" and r["trial"] != default["trial"] for r in rows)
    p_adj = min(1.0, test["p"] * max(1, compared))
    beats = p_adj < ALPHA
    images = len(best["correct_base"]) + len(best["correct_novel"])
    words = (f"trial {best_trial} {'beats' if beats else 'does not beat'} the default config (trial "
             f"{default['trial']}) beyond noise: {test['delta']:+.2f} HM points on the same {images} {spec.objective} "
             f"images, paired permutation p {test['p']:.3g}, Bonferroni over {compared} completed trials "
             f"{p_adj:.3g} ({'<' if beats else '>='} {ALPHA})")
    return out | {"delta": test["delta"], "p": test["p"], "p_adjusted": p_adj, "compared": compared,
                  "beats_default": beats, "words": words}


def trials_table(rows: list[dict], spec: SearchSpec) -> pd.DataFrame:
    """One row per finished trial: trial, status, metrics (``hm_se``: standard error of ``hm`` from the
    ``n_base`` + ``n_novel`` images scored, :func:`anchoropt.metrics.hm_standard_error`), error, times,
    objective, then the parameters."""
    names = spec.search_space.names
    cols = ["trial", "status", "hm", "hm_se", "acc_base", "acc_novel", "n_base", "n_novel", "epochs_done", "error",
            "origin", "wall_time_s",
            "train_s", "report_s", "objective", "run", "tune_trial_id"]
    records = []
    for r in rows:
        rec = {c: r.get(c) for c in cols}
        for name in names:
            rec[name] = r.get("params", {}).get(name)
        records.append(rec)
    table = pd.DataFrame.from_records(records, columns=cols + names)
    for c in ("hm", "hm_se", "acc_base", "acc_novel", "n_base", "n_novel", "wall_time_s", "train_s", "report_s"):
        table[c] = pd.to_numeric(table[c], errors="coerce")
    return table


def _parquet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Columns mixing Python types (e.g. a categorical of numbers and strings) become strings."""
    table = table.copy()
    for c in table.columns:
        kinds = {type(v) for v in table[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1 and not kinds <= {int, float}:
            table[c] = table[c].map(lambda v: None if v is None else str(v))
    return table


def _write_best_config(path: Path, cfg: dict, spec: SearchSpec, trial: int, row, done: int,
                       vs_default: dict | None = None) -> None:
    how = "leak-free pseudo base/novel split of the base classes" if spec.objective == "val" \
        else "base/novel test images"
    header = [f"# Best configuration of the search {path.parent}",
              f"# objective: {spec.objective} ({how}, SPEC section 8)",
              f"# trial {trial}: HM {row['hm']:.2f}{_se(row['hm_se'])} (base {_fmt(row['acc_base'])}, novel "
              f"{_fmt(row['acc_novel'])}),"
              f" {done} of {spec.num_trials} trials done"
              + ("" if done >= spec.num_trials else f" (unfinished: anchoropt search --resume {path.parent})")
              + f", origin {row.get('origin') or 'unknown'}",
              *([f"# against the defaults: {vs_default['words']}"] if vs_default else []),
              f"# sampler {spec.sampler_description}",
              f"# reproducibility: {spec.reproducibility}",
              "# Use: anchoropt train --config best_config.yaml  (scores on the test images)"]
    from anchoropt.io import write_text
    text = "\n".join(header) + "\n" + yaml.safe_dump(cfg, sort_keys=False)
    write_text(text, path)


def _importances(study, out_dir: Path) -> tuple[dict[str, float] | None, str | None]:
    """Importances (Optuna's PED-ANOVA) of the parameters over the completed trials, written to
    ``importances.csv``; or (None, why) with no file when they cannot be estimated: fewer than two
    completed trials, or an objective that never varied (every share would be a made-up equal one)."""
    import optuna
    from optuna.trial import TrialState

    path = out_dir / "importances.csv"
    path.unlink(missing_ok=True)  # never leave an earlier run's table beside a reason for none
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(values) < 2:
        return None, f"no parameter importances: {len(values)} completed trial(s), at least 2 needed"
    if max(values) - min(values) < 1e-9:
        return None, (f"no parameter importances: the objective never varied (HM {values[0]:.2f} in all "
                      f"{len(values)} completed trials)")
    # PED-ANOVA: Optuna's fANOVA default would pull in scikit-learn for this one table
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    try:
        with warnings.catch_warnings():  # few trials: PED-ANOVA warns that its quantiles coincide
            warnings.simplefilter("ignore")
            result = {k: float(v) for k, v in
                      optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
    except (RuntimeError, ValueError, ZeroDivisionError) as err:
        return None, f"no parameter importances: Optuna's PED-ANOVA could not estimate them ({err})"
    write_csv(pd.DataFrame({"param": list(result), "importance": list(result.values())}), path)
    return result, None


def _plot_importances(importances: dict[str, float], note: str | None, path: Path, spec: SearchSpec) -> None:
    """Horizontal bars of ``importances.csv``, the most important parameter on top; ``note`` (why
    there are none) instead of bars when there are none. One column of a paper wide
    (:mod:`anchoropt.report.figures`, as every figure), in the searched method's colour."""
    import matplotlib

    from anchoropt.report.figures import COLUMN_WIDTH, PAPER_STYLE, method_colour, new_figure, save

    with matplotlib.rc_context(PAPER_STYLE):
        fig, ax = new_figure((COLUMN_WIDTH, 0.9 + 0.3 * max(1, len(importances))))
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color=method_colour(_method(spec)))
        if not importances:
            ax.text(0.5, 0.5, textwrap.fill(note or "no parameter importances", 45), ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_yticks([])
            ax.set_xticks([])
        else:
            ax.set_xlabel("importance (Optuna PED-ANOVA, sums to 1)")
        ax.set_title(f"parameter importances for HM, objective {spec.objective}")
        save(fig, path)


def _plot_history(table: pd.DataFrame, path: Path, spec: SearchSpec) -> None:
    """Every trial's objective against its number: completed ones with ± SE bars, stopped ones
    hollow at their last epoch's HM (both in the searched method's colour), failed ones as grey
    crosses; best so far over completed trials only (:func:`best_row`'s rule), black; the caption
    says what the curve leaves out. One column of a paper wide."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    from anchoropt.report.figures import COLUMN_WIDTH, PAPER_STYLE, method_colour, new_figure, save

    colour = method_colour(_method(spec))
    with matplotlib.rc_context(PAPER_STYLE):
        fig, ax = new_figure((COLUMN_WIDTH, 2.4))
        t = table.sort_values("trial")
        done, stopped = _by_status(t)
        ax.errorbar(done["trial"], done["hm"], yerr=done["hm_se"].fillna(0).to_numpy(), fmt="o", ms=3, capsize=1.5,
                    elinewidth=0.8, color=colour, label="completed (± SE)")
        if len(stopped):
            ax.scatter(stopped["trial"], stopped["hm"], s=14, facecolors="none", edgecolors=colour,
                       label="stopped early")
        if len(done):
            ax.step(done["trial"], done["hm"].cummax(), where="post", color="black", lw=1,
                    label="best so far")
        failed = t[t["status"] == "failed"]
        if len(failed):
            shown = pd.concat([done["hm"], stopped["hm"]])
            ax.scatter(failed["trial"], [shown.min() if len(shown) else 0.0] * len(failed), marker="x",
                       color="#595959", label="failed")
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"HM (%), objective {spec.objective}")
        ax.set_title("optimisation history")
        _legend_and_caption_below(ax, _caption(done, stopped) + f", {len(failed)} failed (x, no HM)")
        save(fig, path)


def _method(spec: SearchSpec, schedule: str | None = None) -> str:
    """The method a search tunes (under ``schedule``, default the base's), as records name it
    (``TrainConfig.run_name``): its colour's key. Read without validating the base, so that a plot
    never fails on a setting (an anchors file since moved)."""
    from anchoropt.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in spec.base.items() if k in names})
    return dataclasses.replace(cfg, schedule=schedule or cfg.schedule).run_name


def _legend_and_caption_below(ax, caption: str) -> None:
    """The legend, then ``caption`` in small print, under the x axis label and left-aligned with the
    axes (so that neither hides a point), the figure a column wide at most."""
    from anchoropt.report.figures import COLUMN_WIDTH, fit_width

    renderer = ax.figure.canvas.get_renderer()
    bottom = ax.xaxis.label.get_window_extent(renderer).y0
    _, y = ax.transAxes.inverted().transform((0, bottom))
    for ncol in (2, 1):  # two columns where they fit in the column's width
        legend = ax.legend(loc="upper left", bbox_to_anchor=(0, y - 0.02), borderaxespad=0, ncol=ncol,
                           frameon=False, handletextpad=0.3, columnspacing=1.0)
        if legend.get_window_extent(renderer).x1 <= COLUMN_WIDTH * ax.figure.dpi:
            break
    ax.annotate(textwrap.fill(caption, 60), xy=(0, 0), xycoords=("axes fraction", legend), xytext=(0, -2),
                textcoords="offset points", ha="left", va="top", fontsize=6)
    fit_width(ax.figure, COLUMN_WIDTH)


def _by_status(t: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(completed, stopped-early) trials with an HM."""
    has = t["hm"].notna()
    return t[has & (t["status"] == "complete")], t[has & (t["status"] == "stopped")]


def _caption(done: pd.DataFrame, stopped: pd.DataFrame) -> str:
    return (f"{len(done)} completed, {len(stopped)} stopped early by the scheduler (hollow: never best, their HM "
            f"is of fewer epochs)")


def _plot_hm_vs_anchors(table: pd.DataFrame, path: Path, spec: SearchSpec) -> None:
    """HM of every trial with one against its anchor count, per searched schedule (if any) in
    that schedule's method's colour; completed filled, stopped early hollow. One column wide."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    from anchoropt.report.figures import COLUMN_WIDTH, PAPER_STYLE, method_colour, new_figure, save
    from anchoropt.report.tables import schedule_name

    t = table[table["hm"].notna() & (table["status"] != "failed")].copy()
    n = t["n_anchors"] if "n_anchors" in t else pd.Series([spec.base["n_anchors"]] * len(t), index=t.index)
    t["n_anchors_"] = n.fillna(spec.base["n_anchors"]).astype(float)
    with matplotlib.rc_context(PAPER_STYLE):
        fig, ax = new_figure((COLUMN_WIDTH, 2.4))
        groups = t.groupby(t["schedule"].fillna(spec.base["schedule"])) if "schedule" in t and t["schedule"].notna().any() \
            else [(None, t)]
        for sched, g in groups:
            done, stopped = _by_status(g)
            name = "" if sched is None else f"{schedule_name(sched)}: "
            colour = method_colour(_method(spec, sched))
            ax.scatter(done["n_anchors_"], done["hm"], s=12, color=colour, label=f"{name}completed")
            if len(stopped):
                ax.scatter(stopped["n_anchors_"], stopped["hm"], s=12, facecolors="none", edgecolors=colour,
                           label=f"{name}stopped early")
        ax.set_xlabel("n_anchors")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"HM (%), objective {spec.objective}")
        ax.set_title("HM against the number of anchors")
        done, stopped = _by_status(t)
        failed = int((table["status"] == "failed").sum())
        _legend_and_caption_below(ax, _caption(done, stopped) + f"; {failed} failed trial(s) left out (no HM)")
        save(fig, path)


def _se(v) -> str:
    """`` ± SE`` of an HM, or nothing when unknown."""
    return "" if v is None or pd.isna(v) else f" ± {v:.2f} SE"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
