"""Cross-dataset protocol (SPEC section 8): train on every class of a source, score source and targets."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

from anchoropt.benchmark import plan_cells, run_benchmark
from anchoropt.config import ConfigError, load_config
from anchoropt.data import DataError
from anchoropt.prompts import clip_logits
from anchoropt.report import load_records, write_report
from anchoropt.search.driver import run_search
from anchoropt.search.spec import SearchError
from anchoropt.suite import load_suite
from anchoropt.task import build_task
from anchoropt.methods import AnchorOPT
from anchoropt.train import Trainer, cached_backbone, train
from tests.conftest import EUROSAT_CLASSES, TINY
from tests.helpers import make_split_dataset, write_descriptions

DTD_CLASSES = ["banded", "dotted", "striped", "woven"]


@pytest.fixture(scope="module")
def xd_root(tmp_path_factory):
    """EuroSAT (6 classes, the source) and DTD (4 classes, a target) in one data root."""
    root = tmp_path_factory.mktemp("xd")
    make_split_dataset(root, "eurosat", "2750", "split_zhou_EuroSAT.json", EUROSAT_CLASSES)
    make_split_dataset(root, "dtd", "images", "split_zhou_DescribableTextures.json", DTD_CLASSES, seed=1)
    write_descriptions(root / "eurosat_prompts_full.json", EUROSAT_CLASSES)
    return root


def _cfg(root, tmp_path, **overrides):
    values = dict(dataset="eurosat", data_root=str(root), backbone=TINY, pretrained="", protocol="cross_dataset",
                  targets="dtd", descriptions_dir=str(root), cache_dir=str(tmp_path / "cache"), shots=4, epochs=2,
                  anchor_epochs=2, train_views=1, batch_size=8, device="cpu")
    return load_config(overrides={**values, **overrides})


def test_trains_on_all_source_classes_and_scores_targets_with_the_ensemble(xd_root, tmp_path):
    cfg = _cfg(xd_root, tmp_path)
    backbone = cached_backbone(cfg.backbone, cfg.pretrained, cfg.quick_gelu, "cpu", cfg.preprocess)
    task = build_task(cfg, backbone)
    assert task.classnames == EUROSAT_CLASSES and sorted(set(task.train_labels.tolist())) == list(range(6))
    assert list(task.evals) == ["eurosat", "dtd"]
    assert (task.evals["eurosat"].seen, task.evals["dtd"].seen) == (True, False)
    assert task.evals["dtd"].classnames == DTD_CLASSES and task.evals["dtd"].template == "{} texture."
    trainer = Trainer(cfg, backbone, task, torch.device("cpu"))
    method = AnchorOPT(trainer)
    learner, anchor = method.prompt, method.anchor
    metrics = trainer.evaluate(method)
    assert "hm" not in metrics and "acc_base" not in metrics
    for name, ensemble in (("eurosat", False), ("dtd", True)):
        ev = task.evals[name]
        with torch.no_grad():
            prompt = clip_logits(ev.features, learner(trainer.encoder, trainer.tokens(
                ev.classnames, learner.n_block, learner.rest), anchor.anchors), trainer.logit_scale)
            anch = clip_logits(ev.features, anchor(trainer.encoder, trainer.tokens(
                ev.classnames, cfg.n_anchors, anchor.rest)), trainer.logit_scale)
        logits = (prompt + anch) / 2 if ensemble else prompt
        assert metrics[f"acc_{name}"] == pytest.approx(100 * (logits.argmax(-1) == ev.labels).float().mean().item())


def test_run_record_and_bad_input(xd_root, tmp_path):
    record = train(_cfg(xd_root, tmp_path, method="coop"))
    assert record["protocol"] == "cross_dataset" and set(record["metrics"]) == {"acc_eurosat", "acc_dtd"}
    with pytest.raises(DataError, match="needs targets"):
        train(_cfg(xd_root, tmp_path, targets=""))
    with pytest.raises(DataError, match="source 'eurosat' is also listed"):
        train(_cfg(xd_root, tmp_path, targets="dtd,eurosat"))
    with pytest.raises(DataError, match="oxford_pets"):
        train(_cfg(xd_root, tmp_path, targets="oxford_pets"))
    with pytest.raises(ConfigError, match="eval_split must be test"):
        _cfg(xd_root, tmp_path, eval_split="val")
    with pytest.raises(ConfigError, match="targets='dtd' needs protocol=cross_dataset"):
        _cfg(xd_root, tmp_path, protocol="base2novel")
    with pytest.raises(SearchError, match="protocol=base2novel"):
        run_search({"lr": {"type": "float", "low": 0.001, "high": 0.01}}, tmp_path / "s", num_trials=1,
                   base=_cfg(xd_root, tmp_path))


def _suite(tmp_path, root, **extra) -> Path:
    suite = {"name": "xd", "protocol": "cross_dataset", "source": "eurosat", "datasets": ["dtd"], "seeds": [1, 2],
             "config": {"data_root": str(root), "backbone": TINY, "pretrained": "none", "descriptions_dir": str(root),
                        "cache_dir": str(tmp_path / "cache"), "shots": 4, "epochs": 2, "anchor_epochs": 2,
                        "train_views": 1, "device": "cpu"},
             "methods": {"zeroshot": {"method": "zeroshot"}, "coop": {"method": "coop"},
                         "two": {"method": "anchoropt", "schedule": "two_stage"}}, **extra}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_suite_needs_a_source_outside_the_targets(xd_root, tmp_path):
    with pytest.raises(ConfigError, match="suite.yaml: protocol cross_dataset needs 'source"):
        load_suite(_suite(tmp_path, xd_root, source=None))
    with pytest.raises(ConfigError, match="needs 'source"):
        load_suite(_suite(tmp_path, xd_root, datasets=["dtd", "eurosat"]))
    with pytest.raises(ConfigError, match="unknown protocol 'few_shot'"):
        load_suite(_suite(tmp_path, xd_root, protocol="few_shot"))
    with pytest.raises(DataError, match="unknown dataset 'dtdd'.*did you mean dtd"):  # before Ray starts
        run_benchmark(load_suite(_suite(tmp_path, xd_root, datasets=["dtdd"])), tmp_path / "r")
    assert not (tmp_path / "r").exists()
    cells = plan_cells(load_suite(_suite(tmp_path, xd_root)), tmp_path / "r")
    assert len(cells) == 6 and {c.dataset for c in cells} == {"eurosat"}
    assert all(sorted(c.record_paths) == ["dtd", "eurosat"] and c.config["targets"] == "dtd" for c in cells)


@pytest.mark.ray
def test_benchmark_writes_a_record_per_scored_dataset_and_reports_targets(xd_root, tmp_path, ray_session):
    suite = load_suite(_suite(tmp_path, xd_root))
    results = tmp_path / "results"
    assert run_benchmark(suite, results, max_concurrent=2) == {"done": 6, "failed": 0, "skipped": 0}
    records = [json.loads(p.read_text()) for p in sorted(results.rglob("seed*.json"))]
    assert len(records) == 12
    assert {(r["dataset"], r["role"]) for r in records} == {("eurosat", "source"), ("dtd", "target")}
    assert all(r["protocol"] == "cross_dataset" and set(r["metrics"]) <= {"acc", "acc_anchor"} for r in records)
    assert run_benchmark(suite, results) == {"done": 0, "failed": 0, "skipped": 6}
    report = write_report(load_records(results), tmp_path / "report", baseline="coop").read_text()
    assert "trained on every class of **EuroSAT**" in report and "EuroSAT (source)" in report  # display names
    assert "Over all 1 target datasets" in report and "mean Δ target accuracy" in report


def _xd_records(tmp_path, table: dict) -> pd.DataFrame:
    """Write cross-dataset records {(method, dataset, seed): acc} (source 'src') and load them."""
    for (method, dataset, seed), acc in table.items():
        record = {"record_version": 1, "method": method, "dataset": dataset, "seed": seed, "protocol": "cross_dataset",
                  "source": "src", "role": "source" if dataset == "src" else "target", "scored_on": "test",
                  "metrics": {"acc": acc}}
        path = tmp_path / "rec" / method / dataset / f"seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    return load_records(tmp_path / "rec")


def test_report_averages_and_tests_the_targets_only(tmp_path):
    rng = np.random.default_rng(0)
    targets = [f"t{i}" for i in range(6)]
    acc = {(m, d, s): float(rng.uniform(20, 80)) for m in ("a", "b", "c") for d in ["src", *targets] for s in (1, 2)}
    acc[("b", "src", 1)] = acc[("b", "src", 2)] = 99.0  # the source must not enter averages or tests
    df = _xd_records(tmp_path, acc)
    out = tmp_path / "out"
    write_report(df, out, baseline="a")
    mean = {m: np.mean([(acc[(m, d, 1)] + acc[(m, d, 2)]) / 2 for d in targets]) for m in "abc"}
    averages = pd.read_csv(out / "averages.csv").set_index("method")
    assert averages.loc[["a", "b", "c"], "acc"].to_numpy() == pytest.approx([mean["a"], mean["b"], mean["c"]])
    diffs = [(acc[("b", d, 1)] + acc[("b", d, 2)] - acc[("a", d, 1)] - acc[("a", d, 2)]) / 2 for d in targets]
    wilcoxon = pd.read_csv(out / "paired_wilcoxon.csv").set_index("method")
    assert wilcoxon.loc["b", "p"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert wilcoxon.loc["b", "n_datasets"] == 6
    assert set(pd.read_csv(out / "paired_ttest.csv")["dataset"]) == set(targets)


def test_report_refuses_mixed_protocols(tmp_path):
    _xd_records(tmp_path, {("a", "src", 1): 50.0, ("a", "t0", 1): 40.0})
    b2n = {"record_version": 1, "method": "a", "dataset": "eurosat", "seed": 1, "protocol": "base2novel",
           "metrics": {"acc_base": 50.0, "acc_novel": 40.0, "hm": 44.4}}
    (tmp_path / "rec" / "b2n.json").write_text(json.dumps(b2n))
    with pytest.raises(ValueError, match="records of different protocols cannot share a report: base2novel"):
        load_records(tmp_path / "rec")
