"""What a search shows: ``trials.csv`` / ``trials.parquet``, ``best_config.yaml``, ``importances.csv``,
``importances.png``, ``history.png``, ``hm_vs_anchors.png`` and ``summary.json``, all (re)written from the ledger and study."""
from __future__ import annotations

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
            lines.append(f"best HM {self.best_hm:.2f} (trial {self.best_trial}): {params}")
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
    best_trial = best_hm = best_cfg = None
    best_params: dict = {}
    if best is not None:
        best_trial, best_hm = int(best["trial"]), float(best["hm"])
        best_params = next(r["params"] for r in rows if r["trial"] == best_trial)
        # Scored on test by default: the search objective stays in the header and in search.json.
        best_cfg = {**make_config({**spec.base, **best_params}, source="best trial").to_dict(),
                    "eval_split": "test"}
        _write_best_config(out_dir / "best_config.yaml", best_cfg, spec, best_trial, best, done=len(table))
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
                          importances_note=importances_note, notes=spec.notes + [n for run in spec.runs for n in run.get("notes", [])])
    from anchoropt.io import save_json
    save_json({"objective": spec.objective, "num_trials": spec.num_trials, "done": result.n_done,
               "complete": result.n_complete, "stopped": result.n_stopped, "failed": n_failed,
               "best_trial": best_trial, "best_hm": best_hm, "best_params": best_params,
               "importances": importances, "importances_note": importances_note, "sampler": spec.sampler,
               "sampler_options": spec.sampler_options, "sampler_as_run": spec.sampler_description,
               "seed": spec.seed, "max_concurrent": spec.max_concurrent, "reproducibility": spec.reproducibility,
               "scheduler": spec.scheduler, "runs": len(spec.runs), "notes": result.notes},
              out_dir / "summary.json")
    return result


def best_row(table: pd.DataFrame) -> pd.Series | None:
    """The best trial of a :func:`trials_table`: highest HM among completed trials (early-stopped
    ones only when none completed); None when no trial has an HM."""
    ok = table[table["status"].isin(["complete", "stopped"]) & table["hm"].notna()]
    pool = ok[ok["status"] == "complete"] if (ok["status"] == "complete").any() else ok
    return pool.loc[pool["hm"].idxmax()] if len(pool) else None


def trials_table(rows: list[dict], spec: SearchSpec) -> pd.DataFrame:
    """One row per finished trial: trial, status, metrics, error, times, objective, then the parameters."""
    names = spec.search_space.names
    cols = ["trial", "status", "hm", "acc_base", "acc_novel", "epochs_done", "error", "origin", "wall_time_s",
            "train_s", "report_s", "objective", "run", "tune_trial_id"]
    records = []
    for r in rows:
        rec = {c: r.get(c) for c in cols}
        for name in names:
            rec[name] = r.get("params", {}).get(name)
        records.append(rec)
    table = pd.DataFrame.from_records(records, columns=cols + names)
    for c in ("hm", "acc_base", "acc_novel", "wall_time_s", "train_s", "report_s"):
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


def _write_best_config(path: Path, cfg: dict, spec: SearchSpec, trial: int, row, done: int) -> None:
    how = "leak-free pseudo base/novel split of the base classes" if spec.objective == "val" \
        else "base/novel test images"
    header = [f"# Best configuration of the search {path.parent}",
              f"# objective: {spec.objective} ({how}, SPEC section 8)",
              f"# trial {trial}: HM {row['hm']:.2f} (base {_fmt(row['acc_base'])}, novel {_fmt(row['acc_novel'])}),"
              f" {done} of {spec.num_trials} trials done"
              + ("" if done >= spec.num_trials else f" (unfinished: anchoropt search --resume {path.parent})")
              + f", origin {row.get('origin') or 'unknown'}",
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
    there are none) instead of bars when there are none."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.45 * max(1, len(importances))))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="C0")
    if not importances:
        ax.text(0.5, 0.5, textwrap.fill(note or "no parameter importances", 50), ha="center", va="center",
                transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlabel("importance (Optuna PED-ANOVA, sums to 1)")
    ax.set_title(f"parameter importances for HM, objective {spec.objective}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_history(table: pd.DataFrame, path: Path, spec: SearchSpec) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    t = table.sort_values("trial")
    ok = t[t["hm"].notna() & (t["status"] != "failed")]
    ax.scatter(ok["trial"], ok["hm"], s=18, label="trial HM")
    if len(ok):
        ax.step(ok["trial"], ok["hm"].cummax(), where="post", color="C1", label="best so far")
    failed = t[t["status"] == "failed"]
    if len(failed):
        low = ok["hm"].min() if len(ok) else 0.0
        ax.scatter(failed["trial"], [low] * len(failed), marker="x", color="C3", label="failed")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"HM (%), objective {spec.objective}")
    ax.set_title("optimisation history")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_hm_vs_anchors(table: pd.DataFrame, path: Path, spec: SearchSpec) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    t = table[table["hm"].notna() & (table["status"] != "failed")].copy()
    n = t["n_anchors"] if "n_anchors" in t else pd.Series([spec.base["n_anchors"]] * len(t), index=t.index)
    t["n_anchors_"] = n.fillna(spec.base["n_anchors"]).astype(float)
    fig, ax = plt.subplots(figsize=(6, 4))
    if "schedule" in t and t["schedule"].notna().any():
        for i, (sched, g) in enumerate(t.groupby(t["schedule"].fillna(spec.base["schedule"]))):
            ax.scatter(g["n_anchors_"], g["hm"], s=20, color=f"C{i}", label=str(sched))
        ax.legend(fontsize=8)
    else:
        ax.scatter(t["n_anchors_"], t["hm"], s=20)
    ax.set_xlabel("n_anchors")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"HM (%), objective {spec.objective}")
    ax.set_title("HM against the number of anchors")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
