"""The shipped suites (benchmarks/*.yaml): every one plans valid cells, and the real-data suites hold
the reference settings of all twelve methods (issue 11, item 5), typed here from the reference's
docs/AnchorOPT.md and docs/ATPrompt.md tables and its scripts, independently of the YAML."""
import pytest

from anchoropt.benchmark import plan_cells
from anchoropt.config import TrainConfig
from anchoropt.suite import load_suite, method_values
from tests.helpers import REPO_ROOT

SUITES = REPO_ROOT / "benchmarks"
ORDER = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
         "sun397", "dtd", "eurosat", "ucf101"]  # the row order of the reference's tables


def _table(text: str, keys: tuple[str, ...]) -> dict[str, dict]:
    """A reference table pasted row by row (datasets in ORDER), as {dataset: {key: value}}."""
    rows = [[float(v) for v in line.split("|")[1:]] for line in text.strip().splitlines()]
    assert len(rows) == len(ORDER)
    return {d: dict(zip(keys, row)) for d, row in zip(ORDER, rows)}


STAGE2 = ("n_ctx", "epochs", "ce_weight", "kd_weight", "kd_temperature")
# docs/AnchorOPT.md, "Stage II: <base>+AnchorOPT" (NCTX | EPOCH | CE | KD | KD_Temp; DePT: NCTX | EPOCH | CE | W)
COOP_ANCHOROPT = _table("""
ImageNet | 6 | 20 | 100 | 1000 | 1
Caltech | 4 | 100 | 100 | 1000 | 2
Pets | 4 | 100 | 100 | 1000 | 1
Cars | 8 | 100 | 100 | 100 | 4
Flowers | 4 | 100 | 100 | 100 | 2
Food | 4 | 20 | 100 | 1000 | 4
Aircraft | 4 | 100 | 100 | 1 | 4
SUN | 8 | 20 | 100 | 1 | 2
DTD | 4 | 100 | 100 | 10 | 4
EuroSAT | 4 | 100 | 1 | 0 | 1
UCF | 8 | 100 | 100 | 1000 | 1""", STAGE2)
COCOOP_ANCHOROPT = _table("""
ImageNet | 4 | 10 | 100 | 100 | 4
Caltech | 4 | 20 | 10 | 1000 | 4
Pets | 4 | 20 | 10 | 100 | 2
Cars | 4 | 20 | 100 | 100 | 4
Flowers | 4 | 20 | 10 | 100 | 4
Food | 4 | 20 | 10 | 100 | 4
Aircraft | 4 | 20 | 10 | 100 | 0.5
SUN | 8 | 10 | 10 | 1000 | 2
DTD | 4 | 20 | 10 | 100 | 4
EuroSAT | 4 | 20 | 100 | 100 | 0.5
UCF | 4 | 20 | 10 | 100 | 0.1""", STAGE2)
MAPLE_ANCHOROPT = _table("""
ImageNet | 8 | 5 | 1 | 100 | 1
Caltech | 8 | 10 | 10 | 1000 | 2
Pets | 8 | 10 | 1 | 10 | 0.5
Cars | 4 | 20 | 10 | 0 | 1
Flowers | 4 | 20 | 10 | 100 | 2
Food | 8 | 10 | 1 | 100 | 1
Aircraft | 4 | 10 | 1 | 10 | 4
SUN | 4 | 20 | 10 | 1000 | 4
DTD | 4 | 20 | 1 | 10 | 4
EuroSAT | 4 | 20 | 1 | 1 | 2
UCF | 8 | 10 | 1 | 1 | 2""", STAGE2)  # Cars: KD 0 with T 0.0 in the table; no KD term is computed, T stays 1
DEPT_ANCHOROPT = _table("""
ImageNet | 4 | 10 | 10 | 0.5
Caltech | 4 | 10 | 10 | 0.5
Pets | 4 | 10 | 10 | 0.5
Cars | 8 | 20 | 10 | 0.6
Flowers | 8 | 10 | 10 | 0.9
Food | 4 | 10 | 10 | 0.5
Aircraft | 4 | 20 | 10 | 0.6
SUN | 8 | 10 | 10 | 0.6
DTD | 8 | 10 | 10 | 0.8
EuroSAT | 8 | 20 | 10 | 0.9
UCF | 8 | 10 | 10 | 0.8""", ("n_ctx", "epochs", "ce_weight", "dept_weight"))
# anchor_weights/<Dataset>/log.txt: OPTIM.MAX_EPOCH, ANCHOR_MSE_WEIGHT, ANCHOR_CE_WEIGHT, PROMPT_CE_WEIGHT
STAGE1 = _table("""
ImageNet | 10 | 1000 | 0 | 100
Caltech | 100 | 1000 | 1 | 1000
Pets | 100 | 1000 | 1 | 1000
Cars | 40 | 100 | 1 | 1000
Flowers | 100 | 1000 | 1 | 1000
Food | 20 | 1000 | 1 | 1000
Aircraft | 20 | 1000 | 1 | 100
SUN | 20 | 1000 | 1 | 1000
DTD | 100 | 1000 | 1 | 1000
EuroSAT | 100 | 1000 | 1 | 100
UCF | 100 | 1000 | 1 | 1000""", ("anchor_epochs", "mse_weight", "stage1_ce_weight", "stage1_prompt_ce_weight"))


def _atp(groups: dict[tuple, list[str]], keys: tuple[str, ...]) -> dict[str, dict]:
    """docs/ATPrompt.md's sentences ("for datasets A, B we set EPO=x, NCTX=y") as {dataset: values}."""
    out = {d: dict(zip(keys, values)) for values, datasets in groups.items() for d in datasets}
    assert sorted(out) == sorted(ORDER)
    return out


OTHERS = [d for d in ORDER if d not in ("imagenet", "dtd")]
COOP_ATP = _atp({(2, 10): ["imagenet"], (4, 100): ["dtd"], (2, 100): OTHERS}, ("n_ctx", "epochs"))
COCOOP_ATP = _atp({(2,): ["imagenet", "caltech101", "oxford_pets", "food101", "fgvc_aircraft", "sun397", "dtd"],
                   (4,): ["ucf101"], (6,): ["stanford_cars", "oxford_flowers", "eurosat"]}, ("n_ctx",))
MAPLE_ATP = _atp({(4, 10): ["caltech101", "oxford_pets", "oxford_flowers", "eurosat"],
                  (4, 5): ["imagenet", "stanford_cars", "food101", "sun397", "dtd"],
                  (2, 5): ["fgvc_aircraft", "ucf101"]}, ("n_ctx", "epochs"))
# DePT+ATPrompt: ImageNet is not in the text: the script's NCTX 2 and the default w 0.7
DEPT_ATP = _atp({(4, 0.6): ["caltech101", "dtd"], (4, 0.5): ["ucf101"],
                 (4, 0.7): ["eurosat", "fgvc_aircraft", "food101", "oxford_flowers", "sun397"],
                 (2, 0.6): ["stanford_cars"], (2, 0.7): ["oxford_pets", "imagenet"]}, ("n_ctx", "dept_weight"))

# (method, per-dataset table or None, values on every dataset); sources: the config file and script each names
BASE2NEW = [
    ("coop", None, dict(n_ctx=16, epochs=200, lr=0.002, batch_size=32, ctx_init="")),
    ("coop_atp", COOP_ATP, dict(lr=0.002, batch_size=32, ctx_init="", n_att=0)),
    ("coop_anchoropt_two_stage", COOP_ANCHOROPT, dict(lr=0.002, batch_size=32, ctx_init="", schedule="two_stage")),
    ("coop_anchoropt_one_stage", COOP_ANCHOROPT, dict(lr=0.002, batch_size=32, ctx_init="", schedule="one_stage")),
    ("cocoop", None, dict(ctx_init="a photo of a", epochs=10, lr=0.002, batch_size=1)),
    ("cocoop_atp", COCOOP_ATP, dict(epochs=10, lr=0.002, batch_size=1, ctx_init="", n_att=0)),
    ("cocoop_anchoropt", COCOOP_ANCHOROPT, dict(lr=0.002, batch_size=1, ctx_init="")),
    ("maple", None, dict(n_ctx=2, ctx_init="a photo of a", epochs=5, lr=0.0035, batch_size=4, prompt_depth=9)),
    ("maple_atp", MAPLE_ATP, dict(lr=0.0035, batch_size=4, prompt_depth=9, ctx_init="", n_att=0)),
    ("maple_anchoropt", MAPLE_ANCHOROPT, dict(lr=0.0035, batch_size=4, prompt_depth=9, ctx_init="")),
    ("dept", None, dict(n_ctx=4, epochs=20, lr=0.0035, batch_size=4, dept_weight=0.7, ctx_init="")),
    ("dept_atp", DEPT_ATP, dict(epochs=10, lr=0.0035, batch_size=4, ctx_init="", n_att=0)),
    ("dept_anchoropt", DEPT_ANCHOROPT, dict(lr=0.0035, batch_size=4, kd_weight=0, ctx_init="")),
]
CROSS = [  # scripts/<base>/*_xd_train.sh, docs/ATPrompt.md; no script: the base-to-novel ImageNet settings
    ("coop", dict(n_ctx=16, epochs=200, lr=0.002, batch_size=32)),
    ("coop_atp", dict(n_ctx=4, epochs=10, lr=0.002, batch_size=32)),
    ("coop_anchoropt_two_stage", dict(n_ctx=4, epochs=20, ce_weight=1, kd_weight=1, kd_temperature=1)),
    ("coop_anchoropt_one_stage", dict(n_ctx=4, epochs=20, ce_weight=1, kd_weight=1, kd_temperature=1)),
    ("cocoop", dict(ctx_init="a photo of a", epochs=5, batch_size=1, lr=0.002)),
    ("cocoop_atp", dict(n_ctx=4, epochs=5, batch_size=1, ctx_init="")),
    ("cocoop_anchoropt", dict(COCOOP_ANCHOROPT["imagenet"], batch_size=1)),
    ("maple", dict(n_ctx=2, ctx_init="a photo of a", epochs=3, batch_size=4, lr=0.0026, prompt_depth=3)),
    ("maple_atp", dict(n_ctx=2, n_att=4, epochs=2, batch_size=4, lr=0.0026, prompt_depth=3, ctx_init="")),
    ("maple_anchoropt", dict(MAPLE_ANCHOROPT["imagenet"], batch_size=4, lr=0.0035, prompt_depth=9)),
    ("dept", dict(n_ctx=4, epochs=20, batch_size=4, lr=0.0035, dept_weight=0.7)),
    ("dept_atp", dict(DEPT_ATP["imagenet"], epochs=10, batch_size=4, lr=0.0035)),
    ("dept_anchoropt", dict(DEPT_ANCHOROPT["imagenet"], kd_weight=0, batch_size=4, lr=0.0035)),
]
PAIRS = {"coop_atp": "coop", "coop_anchoropt_two_stage": "coop", "cocoop_atp": "cocoop",
         "cocoop_anchoropt": "cocoop", "maple_atp": "maple", "maple_anchoropt": "maple", "dept_atp": "dept",
         "dept_anchoropt": "dept"}


def _values(suite, method, dataset):
    return {**TrainConfig().to_dict(), **method_values(suite, method, dataset)[0]}


@pytest.mark.parametrize("name", sorted(p.name for p in SUITES.glob("*.yaml")))
def test_every_shipped_suite_plans_valid_cells(name, tmp_path):
    suite = load_suite(SUITES / name)
    cells = plan_cells(suite, tmp_path / "r")  # make_config validates every method's every key
    assert len(cells) == len(suite.methods) * len(suite.trained_datasets) * len(suite.seeds)


def test_base2new_suite_holds_every_methods_reference():
    suite = load_suite(SUITES / "base2new_11.yaml")
    assert sorted(m for m, _, _ in BASE2NEW) == sorted(m for m in suite.methods if m != "zeroshot_clip")
    assert suite.pairs == PAIRS
    for method, table, fixed in BASE2NEW:
        for dataset in suite.datasets:
            v = _values(suite, method, dataset)
            expected = {**(table or {}).get(dataset, {}), **fixed}
            assert {k: v[k] for k in expected} == pytest.approx(expected), (method, dataset)
            assert (v["shots"], v["backbone"], v["crop_scale"], v["flip"]) == (16, "ViT-B-16", 0.08, True)
            # the anchors are the same for every +AnchorOPT: Stage I from the shared per_dataset
            assert {k: v[k] for k in STAGE1[dataset]} == STAGE1[dataset], (method, dataset)
            assert (v["anchor_lr"], v["anchor_batch_size"], v["n_descriptions"]) == \
                (0.002, 32, 5 if dataset == "imagenet" else 10)
            assert (v["stage1_mode"], v["stage1_gumbel_tau"], v["stage1_n_ctx"]) == ("joint", 2.0, 4)


def test_cross_dataset_suite_holds_every_methods_reference():
    suite = load_suite(SUITES / "cross_dataset_11.yaml")
    assert sorted(m for m, _ in CROSS) == sorted(m for m in suite.methods if m != "zeroshot_clip")
    assert suite.pairs == PAIRS
    for method, expected in CROSS:
        v = _values(suite, method, "imagenet")
        assert {k: v[k] for k in expected} == pytest.approx(expected), method
        assert (v["anchor_epochs"], v["mse_weight"], v["n_descriptions"]) == (10, 1000, 5)


def _median(table: dict[str, dict], key: str) -> float:
    values = sorted(row[key] for row in table.values())
    return values[len(values) // 2]  # 11 datasets: the middle one


def test_toy_methods_suite_takes_each_reference_recipe_and_table_medians():
    suite = load_suite(SUITES / "toy11_methods.yaml")
    cars = dict(MAPLE_ANCHOROPT["stanford_cars"], kd_temperature=0.0)  # the table's own T (unused at KD 0)
    maple_table = {**MAPLE_ANCHOROPT, "stanford_cars": cars}
    medians = {
        "coop_atp": {"n_ctx": _median(COOP_ATP, "n_ctx")},
        "coop_anchoropt": {k: _median(COOP_ANCHOROPT, k) for k in ("n_ctx", "ce_weight", "kd_weight", "kd_temperature")},
        "cocoop_atp": {"n_ctx": _median(COCOOP_ATP, "n_ctx")},
        "cocoop_anchoropt": {k: _median(COCOOP_ANCHOROPT, k) for k in ("n_ctx", "ce_weight", "kd_weight",
                                                                        "kd_temperature")},
        "maple_atp": {"n_ctx": _median(MAPLE_ATP, "n_ctx")},
        "maple_anchoropt": {k: _median(maple_table, k) for k in ("n_ctx", "ce_weight", "kd_weight", "kd_temperature")},
        "dept_atp": {k: _median(DEPT_ATP, k) for k in ("n_ctx", "dept_weight")},
        "dept_anchoropt": {k: _median(DEPT_ANCHOROPT, k) for k in ("n_ctx", "ce_weight", "dept_weight")},
    }
    recipe = {"coop": dict(lr=0.002, batch_size=32), "cocoop": dict(lr=0.002, batch_size=1),
              "maple": dict(lr=0.0035, batch_size=4, prompt_depth=3), "dept": dict(lr=0.0035, batch_size=4)}
    vanilla = {"coop": dict(n_ctx=16, ctx_init=""), "cocoop": dict(ctx_init="a photo of a"),
               "maple": dict(n_ctx=2, ctx_init="a photo of a"), "dept": dict(n_ctx=4, ctx_init="", dept_weight=0.7)}
    assert sorted(suite.methods) == sorted(["zeroshot", *vanilla, *medians])
    assert suite.pairs == {m: m.split("_")[0] for m in medians}
    for dataset in suite.datasets:
        for base in recipe:
            group = [base, f"{base}_atp", f"{base}_anchoropt"]
            values = {m: _values(suite, m, dataset) for m in group}
            assert len({v["epochs"] for v in values.values()}) == 1, base  # equal budgets within a base
            for m, v in values.items():
                expected = {**recipe[base], **vanilla.get(m, {}), **medians.get(m, {})}
                assert {k: v[k] for k in expected} == pytest.approx(expected), (m, dataset)
                assert (v["backbone"], v["pretrained"], v["shots"], v["anchor_epochs"]) == ("ToyCLIP-ViT", "toy", 16, 10)
        assert _values(suite, "dept_anchoropt", dataset)["kd_weight"] == 0


def test_toy_stage1_suite_changes_stage1_only():
    """Issue 23: benchmarks/toy11_stage1.yaml measures four Stage I variants of CoOp+AnchorOPT next
    to CoOp; each variant differs from the released Stage I (`anchoropt`) in stage1_* keys only."""
    suite = load_suite(SUITES / "toy11_stage1.yaml")
    assert suite.baseline == "anchoropt" and len(suite.datasets) == 11 and suite.seeds == [1, 2, 3]
    assert _values(suite, "coop", "toy_shape")["method"] == "coop"
    changed = {}
    for dataset in suite.datasets:
        released = _values(suite, "anchoropt", dataset)
        for method in ("stage1_ce", "stage1_joint", "stage1_best_val"):
            values = _values(suite, method, dataset)
            changed[method] = {k for k in values if values[k] != released[k]}
    assert changed == {"stage1_ce": {"stage1_ce_weight"}, "stage1_joint": {"stage1_ce_weight", "stage1_mode"},
                       "stage1_best_val": {"stage1_select"}}
