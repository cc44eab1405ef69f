"""A search that knows its objective's noise (issue 24): per-trial standard error from the images
scored, a paired test of the best trial against the defaults on the same images, pooled val
repeats (class partitions, folds of the shots, seeds, val shots), ASHA rungs that wait for the
warm-up, and one best trial (never an early-stopped one) in every output."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml


def test_hm_standard_error_matches_a_simulation_of_the_images():
    from anchoropt.metrics import hm_standard_error

    rng = np.random.default_rng(0)
    b, n, nb, nn = 0.8, 0.5, 24, 20
    hm = [200 * x * y / (x + y) for x, y in zip(rng.binomial(nb, b, 20000) / nb, rng.binomial(nn, n, 20000) / nn)]
    assert hm_standard_error(80.0, 50.0, nb, nn) == pytest.approx(np.std(hm), rel=0.1)
    assert hm_standard_error(80.0, 50.0, 4 * nb, 4 * nn) == pytest.approx(hm_standard_error(80.0, 50.0, nb, nn) / 2)
    assert math.isnan(hm_standard_error(80.0, 50.0, 0, nn))


def test_paired_test_tells_a_real_gain_from_noise():
    from anchoropt.report.statistics import paired_hm_test

    same = ("1" * 15 + "0" * 9, "1" * 10 + "0" * 10)
    better = ("1" * 22 + "0" * 2, "1" * 18 + "0" * 2)
    assert paired_hm_test(better, same)["p"] < 0.01
    assert paired_hm_test(better, same)["delta"] > 20
    one_image = ("1" * 16 + "0" * 8, same[1])  # one more base image right: noise
    assert paired_hm_test(one_image, same)["p"] > 0.2
    with pytest.raises(ValueError, match="different images"):
        paired_hm_test(("1" * 5, "1"), same)


def test_pooled_scores_count_every_image_of_every_repeat():
    import torch

    from anchoropt.metrics import hm_standard_error, pool_scores

    runs = [{"acc_base": 50.0, "acc_novel": 100.0, "hm": 66.7, "correct_base": torch.tensor([True, False]),
             "correct_novel": torch.tensor([True])},
            {"acc_base": 100.0, "acc_novel": 0.0, "hm": 0.0, "correct_base": torch.tensor([True, True]),
             "correct_novel": torch.tensor([False])}]
    pooled = pool_scores(runs)
    assert pooled["acc_base"] == 75.0 and pooled["acc_novel"] == 50.0 and pooled["hm"] == pytest.approx(60.0)
    assert pooled["n_base"] == 4 and pooled["n_novel"] == 2 and pooled["correct_base"] == "1011"
    assert pooled["hm_se"] == pytest.approx(hm_standard_error(75.0, 50.0, 4, 2))


def test_val_repeats_score_more_images_and_never_train_on_a_scored_one(tiny_cfg, tiny_backbone):
    from anchoropt.task import build_task, val_repeats

    one = build_task(tiny_cfg(eval_split="val"), tiny_backbone)
    assert [len(one.evals[k].labels) for k in ("base", "novel")] == [4, 2]  # 2 + 1 classes x 2 val images
    cfg = tiny_cfg(eval_split="val", val_partitions=2, val_folds=2, val_seeds=2)
    repeats = val_repeats(cfg)
    assert len(repeats) == 8 and {r.seed for r in repeats} == {1, 2} and {r.partition for r in repeats} == {0, 1}
    tasks = [build_task(cfg, tiny_backbone, repeat=r) for r in repeats[:2]]  # seed 1, partition 0, folds 0 and 1
    for task in tasks:
        trained = {d.impath for d in task.train_items}
        scored = {d.impath for k in ("base", "novel") for d in task.evals[k].items}
        assert not trained & scored
        assert len(task.evals["base"].labels) == 4 + 2 * 2  # val + the held-out half of 4 shots of 2 classes
        assert len(task.evals["novel"].labels) == 2 + 4  # val + all 4 shots of the pseudo-novel class
    held = [{d.impath for d in t.evals["base"].items} for t in tasks]
    assert held[0] != held[1]
    other = build_task(cfg, tiny_backbone, repeat=repeats[2])  # partition 1: another pseudo-novel class
    assert other.classnames != tasks[0].classnames
    assert val_repeats(tiny_cfg(eval_split="test", val_partitions=3)) == val_repeats(tiny_cfg())  # test: one run


def test_a_val_run_reports_its_noise_pooled_over_repeats(tiny_cfg):
    from anchoropt.train import train

    got = []
    record = train(tiny_cfg(eval_split="val", val_partitions=2, epochs=2), report=got.append)
    assert [m["epoch"] for m in got] == [1, 2]  # one report per epoch, pooled over both partitions
    last = got[-1]
    assert last["n_base"] == 8 and last["n_novel"] == 4 and len(last["correct_base"]) == 8
    assert last["hm_se"] > 0 and record["metrics"]["hm_se"] == pytest.approx(last["hm_se"])
    from anchoropt.metrics import hm_standard_error
    # an image scored in both partitions counts once in the standard error (fewer distinct images: larger SE)
    if 0 < last["acc_base"] < 100 and last["acc_novel"] > 0:
        assert last["hm_se"] > hm_standard_error(last["acc_base"], last["acc_novel"], 8, 4)
    assert "correct_base" not in record["metrics"]


def test_val_shots_takes_more_val_images_where_the_split_has_them(eurosat_root):
    from anchoropt.data import build_dataset, fewshot_splits

    data = build_dataset(str(eurosat_root), "eurosat")  # 2 val images per class
    assert fewshot_splits(data, 4, 1) == fewshot_splits(data, 4, 1, val_shots=0)
    assert len(fewshot_splits(data, 1, 1)[1]) == 6 and len(fewshot_splits(data, 1, 1, val_shots=2)[1]) == 12


def test_asha_has_no_rung_before_the_warm_up_ends():
    from anchoropt.search.driver import asha_rungs

    def spec(epochs, warmup):
        return SimpleNamespace(max_epochs=epochs, base={"warmup_epochs": warmup})

    assert asha_rungs(spec(10, 1)) == {"max_t": 10, "grace_period": 3, "reduction_factor": 2}
    assert asha_rungs(spec(10, 5))["grace_period"] == 6
    assert asha_rungs(spec(100, 1))["grace_period"] == 25
    assert asha_rungs(spec(2, 5))["grace_period"] == 2  # never beyond the end


def test_progress_bar_never_shows_a_stopped_trial_as_best():
    from anchoropt.progress import TrialProgress
    from anchoropt.search.trial import outcome

    bar = TrialProgress("search", 2, counts=lambda last: outcome(last, False)[0] == "complete")
    bar.on_trial_complete(0, [], SimpleNamespace(last_result={"hm": 90.0, "epoch": 3, "epochs": 10}))
    assert bar.best is None
    bar.on_trial_complete(0, [], SimpleNamespace(last_result={"hm": 60.0, "epoch": 10, "epochs": 10}))
    assert bar.best == 60.0
    bar.close()


def _peaking(log: str):
    """A worker_setup: the k-th trial started gets 17, 18, 14, 14, ... of 24 base images right at
    every epoch before the last and 12 + k at the last, 10 of 20 novel ones throughout (so trials 2+
    are stopped at the first rung, keeping an HM above the completed trials' final ones)."""
    def setup():
        import anchoropt.train as training

        def train(cfg, out_dir=None, report=None):
            with open(log, "a+") as fh:
                fh.seek(0)
                order = len(fh.read().splitlines())
                fh.write("x\n")
            for epoch in range(1, cfg.epochs + 1):
                right = (12 + order) if epoch == cfg.epochs else [17, 18][order] if order < 2 else 14
                base, novel = "1" * right + "0" * (24 - right), "1" * 10 + "0" * 10
                acc_b, acc_n = 100 * right / 24, 50.0
                report({"epoch": epoch, "loss": 0.1, "acc_base": acc_b, "acc_novel": acc_n,
                        "hm": 2 * acc_b * acc_n / (acc_b + acc_n), "n_base": 24, "n_novel": 20, "hm_se": 5.0,
                        "correct_base": base, "correct_novel": novel})
            return {"metrics": {}}
        training.train = train
    return setup


@pytest.mark.ray
def test_one_best_trial_everywhere_and_its_test_against_the_defaults(ray_session, tiny_cfg, tmp_path):
    from anchoropt.search.driver import run_search
    from anchoropt.search.show import show

    out = tmp_path / "s"
    space = {"params": {"lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True}}}
    base = tiny_cfg(epochs=8, anchor_epochs=1, train_views=1).to_dict()
    result = run_search(space, out, 5, base, sampler="random", scheduler="asha", max_concurrent=1,
                        worker_setup=_peaking(str(tmp_path / "order.log")))
    table = pd.read_csv(out / "trials.csv")
    stopped = table[table["status"] == "stopped"]
    assert len(stopped) and (stopped["epochs_done"] >= 2).all()  # no rung inside the 1-epoch warm-up
    done = table[table["status"] == "complete"]
    best = int(done.loc[done["hm"].idxmax(), "trial"])
    assert stopped["hm"].max() > done["hm"].max()  # the trap: a stopped trial's early HM is higher
    summary = json.loads((out / "summary.json").read_text())
    assert result.best_trial == summary["best_trial"] == best
    assert (table["hm_se"] == 5.0).all() and (table["n_base"] == 24).all()
    header = (out / "best_config.yaml").read_text()
    assert f"# trial {best}: HM" in header and "± 5.00 SE" in header
    verdict = summary["vs_default"]
    assert verdict["default_trial"] == 0 and verdict["beats_default"] is False  # 1 base image per trial: noise
    assert "does not beat the default config (trial 0)" in header and "paired permutation p" in header
    shown = show(out)
    assert f"(trial {best}," in shown and "does not beat" in shown
    first = shown.split("completed first")[1].splitlines()[2].split()
    assert int(first[0]) == best and first[1] == "complete"
    yaml.safe_load(header)  # still a loadable config
