"""``anchoropt eval RUN_DIR``: a saved run scored again without training, on its own dataset (the run's
own base/novel accuracies exactly) and on a cross-dataset target, as records the report accepts."""
import json

import pytest

from anchoropt.config import load_config
from anchoropt.records import load_records
from tests.conftest import EUROSAT_CLASSES
from tests.helpers import TINY, make_split_dataset, write_descriptions

DTD_CLASSES = ["banded", "dotted", "striped", "woven"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A CoOp+AnchorOPT run (W at argmax) trained on the tiny EuroSAT of a root that also holds a DTD."""
    from anchoropt.train import train

    root = tmp_path_factory.mktemp("xd")
    make_split_dataset(root, "eurosat", "2750", "split_zhou_EuroSAT.json", EUROSAT_CLASSES)
    make_split_dataset(root, "dtd", "images", "split_zhou_DescribableTextures.json", DTD_CLASSES, seed=1)
    write_descriptions(root / "eurosat_prompts_full.json", EUROSAT_CLASSES)
    cfg = load_config(overrides=dict(dataset="eurosat", data_root=str(root), backbone=TINY, pretrained="",
                                     method="anchoropt", position_eval="argmax", descriptions_dir=str(root),
                                     cache_dir=str(root / "cache"), shots=4, epochs=2, anchor_epochs=2,
                                     train_views=1, batch_size=8, device="cpu"))
    run = root / "run"
    record = train(cfg, out_dir=run)
    return run, record


def _main(capsys, *argv):
    from anchoropt.cli import main

    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_reproduces_the_runs_own_base_and_novel_accuracies(saved_run, capsys):
    run, trained = saved_run
    code, out, err = _main(capsys, "eval", run)
    assert code == 0, err
    path = run / "eval" / "eurosat.test.json"
    assert f"record: {path}" in out
    record = json.loads(path.read_text())
    for key in ("acc_base", "acc_novel", "hm", "acc_anchor_base", "acc_anchor_novel"):
        assert record["metrics"][key] == trained["metrics"][key], key  # exactly: same tensors, same rule
    assert 0 <= record["metrics"]["acc_all"] <= 100
    assert record["evaluation_of"]["run"] == str(run.resolve())
    assert record["evaluation_of"]["metrics"] == trained["metrics"]
    assert (record["method"], record["dataset"], record["seed"]) == ("anchoropt_two_stage", "eurosat", 1)
    table = load_records(path)  # the report accepts it
    assert table.loc[0, "hm"] == pytest.approx(trained["metrics"]["hm"])


def test_eval_scores_a_cross_dataset_target(saved_run, capsys, tmp_path):
    run, _ = saved_run
    out_file = tmp_path / "dtd.json"
    code, out, err = _main(capsys, "eval", run, "dataset=dtd", "--out", out_file)
    assert code == 0, err
    record = json.loads(out_file.read_text())
    assert (record["protocol"], record["role"], record["source"], record["dataset"]) == \
        ("cross_dataset", "target", "eurosat", "dtd")
    m = record["metrics"]
    assert m["acc"] == m["acc_all"] and all(0 <= m[k] <= 100 for k in ("acc_base", "acc_novel", "acc_anchor"))
    table = load_records(out_file)
    assert table.loc[0, "protocol"] == "cross_dataset" and table.loc[0, "acc"] == pytest.approx(m["acc"])


def test_eval_refuses_keys_that_change_the_trained_method(saved_run, capsys):
    run, _ = saved_run
    code, _, err = _main(capsys, "eval", run, "n_ctx=8")
    assert code == 2 and err.count("\n") == 1 and "n_ctx: an evaluation scores the saved run as it was trained" in err
    code, _, err = _main(capsys, "eval", run.parent / "nothing")
    assert code == 2 and "run folder not found" in err
