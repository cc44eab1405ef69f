"""Read-only views of a search folder: ``anchoropt search show DIR`` and ``anchoropt search --dry-run``.

Nothing here writes a file or starts Ray: :func:`show` reads ``search.json``, ``results.jsonl``
and (for importances) ``summary.json``; :func:`plan` says what a new or resumed search would run.
"""
from __future__ import annotations

import json
from pathlib import Path

from anchoropt.search.ledger import open_storage, read_results
from anchoropt.search.outputs import _fmt, _se, best_row, trials_table, versus_default
from anchoropt.search.spec import SearchSpec

TOP = 10  # trials listed by show


def show(out_dir: str | Path) -> str:
    """A search's state from its ledger: trials done, best trial and parameters, importances (as of
    the last write of the outputs), and the best trials by HM. Raises SearchError for a non-search folder."""
    out_dir = Path(out_dir).expanduser().resolve()
    spec = SearchSpec.read(out_dir)
    rows = read_results(out_dir)
    table = trials_table(rows, spec)
    failed, stopped = int((table["status"] == "failed").sum()), int((table["status"] == "stopped").sum())
    lines = [f"search {out_dir}: {len(rows)}/{spec.num_trials} trials done ({len(rows) - failed} complete"
             f"{f' ({stopped} stopped early)' if stopped else ''}, {failed} failed), objective {spec.objective}, sampler {spec.sampler} seed {spec.seed}, "
             f"scheduler {spec.scheduler}, {len(spec.runs)} run(s)",
             *space_lines(spec)]
    best = best_row(table)
    if best is None:
        lines.append("no trial completed yet")
    else:
        params = next(r["params"] for r in rows if r["trial"] == int(best["trial"]))
        lines.append(f"best HM {best['hm']:.2f}{_se(best['hm_se'])} (trial {int(best['trial'])}, base "
                     f"{best['acc_base']:.2f}, novel {best['acc_novel']:.2f}): "
                     + "  ".join(f"{k}={_fmt(v)}" for k, v in params.items()))
        lines.append(versus_default(rows, spec, int(best["trial"]))["words"])
        if (out_dir / "best_config.yaml").is_file():
            lines.append(f"best config: {out_dir / 'best_config.yaml'}")
    summary = out_dir / "summary.json"
    if summary.is_file():
        importances = json.loads(summary.read_text()).get("importances") or {}
        if importances:
            lines.append("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
    if len(rows) < spec.num_trials:
        lines.append(f"incomplete: resume with  anchoropt search --resume {out_dir}")
    if len(table):
        cols = ["trial", "status", "hm", "hm_se", "acc_base", "acc_novel", *spec.search_space.names]
        rank = table.assign(_rank=table["status"].map({"complete": 0, "stopped": 1}).fillna(2))
        top = rank.sort_values(["_rank", "hm"], ascending=[True, False], na_position="last").head(TOP)[cols]
        lines.append(f"trials by HM, completed first (stopped ones never count as best; top {min(TOP, len(table))} "
                     f"of {len(table)}):")
        lines += ["  " + ln for ln in top.to_string(index=False, float_format=lambda v: f"{v:.4g}").splitlines()]
    return "\n".join(lines)


def plan(spec: SearchSpec, out_dir: Path, resume: bool) -> str:
    """What running the search would do: for a new one its request, for a resume the trials done,
    the ones in flight when it stopped (re-run first with their parameters) and the ones to run."""
    if not resume:
        head = (f"dry run: a new search in {out_dir} would run {spec.num_trials} trial(s) "
                f"(sampler {spec.sampler} seed {spec.seed}, objective {spec.objective}, scheduler {spec.scheduler}, "
                f"{_fmt(spec.cpus_per_trial)} CPU / {_fmt(spec.gpus_per_trial)} GPU per trial"
                f"{f', at most {spec.max_concurrent} at once' if spec.max_concurrent else ''})")
        base = "  ".join(f"{k}={spec.base[k]}" for k in ("dataset", "method", "schedule", "shots", "epochs",
                                                           "backbone") if k in spec.base)
        return "\n".join([head, *space_lines(spec), f"  base config: {base}"])
    rows = read_results(out_dir)
    done = {r["trial"] for r in rows}
    lines = [f"dry run: search {out_dir}: {len(rows)}/{spec.num_trials} trials done "
             f"({sum(r['status'] == 'failed' for r in rows)} failed); "
             f"{max(0, spec.num_trials - len(rows))} to run"]
    flying = _in_flight(spec, out_dir, done)
    if flying:
        lines.append(f"  {len(flying)} trial(s) in flight when it stopped ({', '.join(map(str, flying))}): "
                     "re-run first with the same parameters")
    return "\n".join([*lines, *space_lines(spec)])


def space_lines(spec: SearchSpec) -> list[str]:
    """One line per parameter of the stored space: ``name: int 1..8 (log)``, choices, fixed value, condition."""
    lines = [f"  space {spec.space_source}:"]
    for p in spec.search_space.params:
        if p.type == "fixed":
            what = f"fixed {p.value!r}"
        elif p.type == "categorical":
            what = f"one of {', '.join(map(str, p.choices))}"
        else:
            what = f"{p.type} {_fmt(p.low)}..{_fmt(p.high)}{' log' if p.log else ''}" \
                   f"{f' step {_fmt(p.step)}' if p.step else ''}"
        when = f"  when {', '.join(f'{k} in {list(v)}' for k, v in p.when.items())}" if p.when else ""
        lines.append(f"    {p.name}: {what}{when}")
    return lines


def _in_flight(spec: SearchSpec, out_dir: Path, done: set[int]) -> list[int]:
    """Study trials still RUNNING with no ledger line: what the driver had in flight when it stopped."""
    if not spec.storage and not (out_dir / "study.journal").is_file():
        return []
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=spec.study_name, storage=open_storage(spec, out_dir))
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number not in done]
