"""What a search has done: ``results.jsonl`` (the ledger) and the Optuna study storage.

The ledger holds one line per finished trial, appended and fsync'ed by the driver the moment Tune
reports the trial complete or failed (:class:`ResultsLog`); it is what a resume trusts. The
study (``study.journal``, or an RDB URL) is Optuna's view, brought into agreement with the ledger
by :func:`reconcile` after an interruption.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from ray import tune

from anchoropt.search.spec import SearchError, SearchSpec, check_persistent, now
from anchoropt.search.trial import NUMBER_KEY, ORIGIN_KEY, outcome

FINISHED = ("complete", "stopped", "failed")
LOST = "lost"  # the trial's actor or node died: not a result; re-queued with the same parameters
REQUEUED = "requeued"  # a lost trial whose parameters were enqueued again
STALE_LOCK_S = 5


def open_storage(spec: SearchSpec, out_dir: Path):
    """The Optuna storage of a search: its RDB URL, else the journal file ``out_dir/study.journal``.

    Raises:
        SearchError: a storage that keeps the study in memory only (not resumable).
    """
    import optuna

    if spec.storage:
        check_persistent(spec.storage)
        return optuna.storages.RDBStorage(spec.storage)
    journal = optuna.storages.journal
    path = str(out_dir / "study.journal")
    # a driver killed (-9) while appending leaves the lock behind: writers hold it for milliseconds, so
    # a lock older than a few seconds is stale (Optuna's default waits 30 s before breaking it)
    lock = journal.JournalFileSymlinkLock(path, grace_period=STALE_LOCK_S)
    return optuna.storages.JournalStorage(journal.JournalFileBackend(path, lock_obj=lock))


def repair_journal(path: Path) -> str | None:
    """Make a journal file readable again after a kill; returns what was done, in words, or None.

    A record cut by a kill (no final newline) is moved to ``<journal>.torn``; otherwise Optuna
    would append the next record to it and every later read would fail. A journal damaged
    anywhere else is moved aside whole to ``<journal>.damaged`` (the study is then rebuilt from
    the ledger by :func:`rebuild_study`).
    """
    if not path.is_file():
        return None
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    body, torn = data[:cut], data[cut:]
    for number, line in enumerate(body.splitlines(), start=1):
        try:
            json.loads(line)
        except ValueError:
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)
            return f"{path}: record {number} unreadable: journal moved to {aside.name}"
    if not torn:
        return None
    with open(path.with_name(path.name + ".torn"), "ab") as fh:
        fh.write(torn + b"\n")
    from anchoropt.io import write_bytes
    write_bytes(body, path)
    return f"{path}: cut a record torn by a kill ({len(torn)} bytes, kept in {path.name}.torn)"


def rebuild_study(study, rows: list[dict], spec: SearchSpec) -> str:
    """Refill an empty study from the ledger, trial numbers kept: a completed trial is told its
    HM, a stopped one its last HM as PRUNED, a failed one FAIL; a number missing from the ledger
    (in flight when the storage was lost) becomes a FAIL marked ``lost``. Enqueued configurations
    that never ran are enqueued again. Returns what was done, in words."""
    from optuna.trial import TrialState

    by_number = {r["trial"]: r for r in rows}
    space = spec.search_space
    for number in range(max(by_number) + 1):
        row = by_number.get(number)
        if row is not None:
            study.enqueue_trial(row["params"], user_attrs={"origin": row.get("origin") or "rebuilt"})
        trial = study.ask()
        space.define_by_run(trial)
        trial.set_user_attr("rebuilt_from_ledger", True)
        if row is None:
            trial.set_user_attr("lost", True)
            study.tell(trial, state=TrialState.FAIL)
        elif row["status"] == "complete" and _finite(row.get("hm")):
            study.tell(trial, row["hm"], state=TrialState.COMPLETE)
        elif row["status"] == "stopped" and _finite(row.get("hm")):
            trial.report(row["hm"], int(row.get("epochs_done") or 0))
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)
    ran = {r.get("origin") for r in rows}
    for entry in spec.enqueued:
        if entry["origin"] not in ran:
            study.enqueue_trial(entry["params"], user_attrs={"origin": entry["origin"]})
    return f"study storage lost or unreadable: rebuilt {len(rows)} trials from results.jsonl"


def check_study_matches(study, rows: list[dict], where: str) -> None:
    """The study must hold every trial the ledger records (it is written first, at each draw).

    Raises:
        SearchError: one line naming the storage, its trial count and the ledger's last trial.
    """
    if rows and len(study.trials) <= rows[-1]["trial"]:
        raise SearchError(f"{where} holds {len(study.trials)} trials but results.jsonl records trial "
                          f"{rows[-1]['trial']}: it is not this search's study; move it away and resume to "
                          f"rebuild the study from results.jsonl")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def append_row(path: Path, row: dict) -> None:
    """Append one JSON line and fsync it (a kill leaves at most this line cut)."""
    line = json.dumps(row, default=str, allow_nan=True) + "\n"
    with open(path, "a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _ledger_rows(out_dir: str | Path) -> list[dict]:
    """Every readable line of ``results.jsonl`` that names a trial, in file order."""
    path = Path(out_dir) / "results.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by kill -9
                continue
            if isinstance(row, dict) and row.get("trial") is not None:
                rows.append(row)
    return rows


def read_results(out_dir: str | Path) -> list[dict]:
    """Finished trials of a search folder, one per Optuna trial number (the last line wins)."""
    rows = {int(r["trial"]): r for r in _ledger_rows(out_dir) if r.get("status") in FINISHED}
    return [rows[k] for k in sorted(rows)]


def lost_trials(out_dir: str | Path) -> dict[int, str]:
    """Trials lost to infrastructure failures that hold no result: trial number -> the last ledger
    status of it, ``lost`` (to re-queue) or ``requeued`` (its parameters are queued again)."""
    found = {int(r["trial"]): r["status"] for r in _ledger_rows(out_dir) if r.get("status") in (LOST, REQUEUED)}
    finished = {r["trial"] for r in read_results(out_dir)}
    return {n: status for n, status in found.items() if n not in finished}


def reconcile(study, storage, out_dir: Path, spec: SearchSpec) -> list[dict]:
    """Bring the study and the ledger into agreement after an interruption.

    - a study trial still RUNNING whose result is in the ledger: told its logged outcome;
    - a RUNNING trial missing from the ledger (in flight when the driver died): marked failed with
      ``interrupted`` and its parameters enqueued, so the next run re-runs it first;
    - a trial the ledger marks lost (its actor or node died): its parameters enqueued once (the
      ledger then says ``requeued``), as an interrupted one's;
    - a finished study trial missing from the ledger (killed between Optuna and the ledger):
      logged from the study.
    Returns the finished rows (one per trial number)."""
    from optuna.trial import TrialState

    rows = {r["trial"]: r for r in read_results(out_dir)}
    lost = lost_trials(out_dir)
    study_id = storage.get_study_id_from_name(spec.study_name)
    for t in study.get_trials(deepcopy=False):
        row = rows.get(t.number)
        if t.number in lost:
            if lost[t.number] == LOST:
                if t.state == TrialState.RUNNING:
                    study.tell(t.number, state=TrialState.FAIL)
                study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number}, skip_if_exists=False)
                append_row(out_dir / "results.jsonl", {"trial": t.number, "status": REQUEUED, "finished": now()})
        elif t.state == TrialState.RUNNING:
            if row is not None:
                if row["status"] == "complete" and _finite(row.get("hm")):
                    study.tell(t.number, row["hm"], state=TrialState.COMPLETE)
                else:
                    study.tell(t.number, state=TrialState.FAIL)
            else:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
                storage.set_trial_user_attr(trial_id, "interrupted", True)
                study.tell(t.number, state=TrialState.FAIL)
                study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number}, skip_if_exists=False)
        elif t.state in (TrialState.COMPLETE, TrialState.FAIL) and row is None and \
                not t.user_attrs.get("interrupted"):
            row = {"trial": t.number, "tune_trial_id": None, "run": None,
                   "status": "complete" if t.state == TrialState.COMPLETE else "failed",
                   "hm": t.value, "acc_base": None, "acc_novel": None, "epochs_done": None,
                   "error": None if t.state == TrialState.COMPLETE else "failed (recovered from the study)",
                   "wall_time_s": None, "train_s": None, "objective": spec.objective,
                   "params": _params_of(t, spec), "finished": now()}
            append_row(out_dir / "results.jsonl", row)
            rows[t.number] = row
    return [rows[k] for k in sorted(rows)]


def _params_of(t, spec: SearchSpec) -> dict:
    """The parameters of a study trial, fixed values of the space included."""
    from optuna.trial import FixedTrial
    return spec.search_space.define_by_run(FixedTrial(dict(t.params)))


class ResultsLog(tune.Callback):
    """Tune callback (in the driver): append one ledger line per finished trial."""

    def __init__(self, path: Path, spec: SearchSpec, run_index: int):
        self.path, self.spec, self.run_index = path, spec, run_index
        self.starts: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.starts.setdefault(trial.trial_id, time.time())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._write(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        from anchoropt.raytools import is_infrastructure_error, trial_error, trial_error_message

        lost = is_infrastructure_error(trial_error(trial))
        self._write(trial, trial_error_message(trial), status=LOST if lost else None)

    def _write(self, trial, error: str | None, status: str | None = None) -> None:
        config = dict(trial.config)
        params = {k: v for k, v in config.items() if not k.startswith("_")}
        last = dict(trial.last_result or {})
        if status is None:
            status, reason = outcome(last, error is not None)
            error = error or reason
        end = time.time()
        start = self.starts.get(trial.trial_id, end)
        row = {"trial": config.get(NUMBER_KEY), "tune_trial_id": trial.trial_id, "run": self.run_index,
               "status": status, "hm": _num(last.get("hm")) if status in ("complete", "stopped") else None,
               "acc_base": _num(last.get("acc_base")) if status in ("complete", "stopped") else None,
               "acc_novel": _num(last.get("acc_novel")) if status in ("complete", "stopped") else None,
               "epochs_done": last.get("epoch"), "error": error, "origin": config.get(ORIGIN_KEY),
               "wall_time_s": round(end - start, 3), "started_at": round(start, 3), "finished_at": round(end, 3),
               "train_s": _round(last.get("train_s")), "report_s": _round(last.get("report_s")),
               "objective": self.spec.objective, "params": params, "finished": now()}
        append_row(self.path, row)


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _round(v, digits: int = 3) -> float | None:
    v = _num(v)
    return None if v is None else round(v, digits)
