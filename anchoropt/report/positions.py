"""The learned position matrices W of AnchorOPT runs (SPEC section 4; the paper's Figure 4).

A run's learned tensors (``prompts.pt``, written by ``anchoropt.train.train`` with ``out_dir``)
hold ``position`` logits ``P [M+N, M+N]`` over the soft tokens ``ctx [M, d]`` followed by the
anchors ``anchors [N, d]``. At evaluation (``position_eval="argmax"``) row i of
``W = one_hot(argmax_j P[i, j])`` picks the token placed at prompt position i.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def prompts_file(record_path: str | Path) -> Path | None:
    """The learned-tensor file of a record, if present: ``DIR/prompts.pt`` next to
    ``DIR/record.json`` (``anchoropt train --out DIR``), else ``<record without .json>.prompts.pt``
    (a benchmark cell's ``seed1.json`` -> ``seed1.prompts.pt``)."""
    path = Path(record_path)
    for candidate in (path.parent / "prompts.pt" if path.name == "record.json" else None,
                      path.with_suffix(".prompts.pt")):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def argmax_positions(tensors: dict) -> tuple[np.ndarray, int]:
    """(W [M+N, M+N] one-hot float array, M) from one run's learned tensors (``position`` and
    ``ctx``). ValueError if ``position`` is absent or not square."""
    if "position" not in tensors:
        raise ValueError("no 'position' tensor (not an AnchorOPT run)")
    logits = np.asarray(tensors["position"].float().numpy())
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"'position' has shape {tuple(logits.shape)}, expected square [M+N, M+N]")
    w = np.zeros_like(logits)
    w[np.arange(len(logits)), logits.argmax(axis=1)] = 1.0
    n_ctx = int(tensors["ctx"].shape[0]) if "ctx" in tensors else len(logits)
    return w, n_ctx


def learned_positions(df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, dataset): the share of seeds whose argmax W places token j at position i.

    ``df``: records with a ``path`` column. Reads ``prompts_file`` of every record that has one
    (``torch.load(weights_only=True)``); runs without a ``position`` tensor are skipped.
    Returns columns method, dataset, n_seeds, seeds, n_ctx, share (``[M+N, M+N]`` array, rows
    positions, columns tokens V1..VM, A1..AN; each row sums to 1). ValueError naming the file
    for an unreadable file or seeds of one cell disagreeing on the shape.
    """
    found: dict[tuple[str, str], list] = {}
    for row in df.itertuples():
        file = prompts_file(row.path) if isinstance(getattr(row, "path", None), str) else None
        if file is None:
            continue
        tensors = _load(file)
        if "position" not in tensors:
            continue
        try:
            w, n_ctx = argmax_positions(tensors)
        except ValueError as err:
            raise ValueError(f"{file}: {err}") from None
        runs = found.setdefault((row.method, row.dataset), [])
        if runs and runs[0][1].shape != w.shape:
            raise ValueError(f"{file}: position matrix {w.shape} differs from the cell's other seeds {runs[0][1].shape}")
        runs.append((row.seed, w, n_ctx))
    rows = [{"method": m, "dataset": d, "n_seeds": len(runs), "seeds": " ".join(str(r[0]) for r in runs),
             "n_ctx": runs[0][2], "share": np.mean([r[1] for r in runs], axis=0)}
            for (m, d), runs in found.items()]
    return pd.DataFrame(rows, columns=["method", "dataset", "n_seeds", "seeds", "n_ctx", "share"])


def _load(file: Path) -> dict:
    import torch  # only when a report has learned tensors to show
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file
        raise ValueError(f"{file}: unreadable learned tensors: {' '.join(str(err).split())[:200]}") from None
