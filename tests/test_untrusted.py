"""Untrusted input (issue 28): config values parsed once as typed, names, paths, pre-Ray checks."""
import pytest

from anchoropt.config import load_config, make_config, typed_overrides
from anchoropt.errors import ConfigError


def test_cli_values_are_typed_by_their_key_never_cut_at_hash():
    cfg = load_config(None, ["ctx_init=a photo #1 of", "cache_dir=/tmp/cache #1", "lr=1e-3", "flip=yes",
                             "quick_gelu=", "epochs=3"])
    assert cfg.ctx_init == "a photo #1 of" and cfg.cache_dir == "/tmp/cache #1"
    assert cfg.lr == 0.001 and cfg.flip is True and cfg.quick_gelu is None and cfg.epochs == 3
    assert typed_overrides(["anchor_word=[x]", "ctx_init='q'"]) == {"anchor_word": "[x]", "ctx_init": "'q'"}
    for bad, words in [("epochs=3.5", "epochs must be int, got '3.5'"),
                       ("flip=maybe", "flip must be true or false"), ("lr=0.1 #x", "lr must be float")]:
        with pytest.raises(ConfigError, match=words):
            load_config(None, [bad])


def test_scripts_type_key_value_like_the_cli(monkeypatch):
    """benchmarks/scripts take key=value typed by the key too (toy_figures.py's own help example
    ``n_ctx=16 epochs=200`` was refused: 'epochs must be int, got '200'')."""
    import anchoropt.pipeline as pipeline
    from tests.helpers import load_script

    assert load_script("benchmarks/scripts/val_vs_test.py").changes("epochs=3,ctx_init=a #1") == {
        "epochs": 3, "ctx_init": "a #1"}
    seen = []

    def stop(suite):
        seen.append(suite)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "ensure_toy_data", stop)
    with pytest.raises(KeyboardInterrupt):
        load_script("benchmarks/scripts/toy_figures.py").main(["--root", "/nonexistent", "n_ctx=16", "epochs=200"])
    assert seen[0].config["epochs"] == 200 and seen[0].config["n_ctx"] == 16


def test_yaml_values_are_never_parsed_again(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("ctx_init: 'a photo #2'\nanchor_word: '[1, 2]'\nlr: 1e-3\n")
    cfg = load_config(config)
    assert cfg.ctx_init == "a photo #2" and cfg.anchor_word == "[1, 2]" and cfg.lr == 0.001
    with pytest.raises(ConfigError, match="epochs must be int"):
        make_config({"epochs": "10 #x"})


def test_dataset_names_are_plain_names():
    for bad in ("../../../x", "/abs", "a/b", "..", "toy_count #v2", "<img>"):
        with pytest.raises(ConfigError, match="is not a plain name"):
            load_config(None, [f"dataset={bad}"])
    with pytest.raises(ConfigError, match="dataset 'a/b' is not a plain name"):
        load_config(None, ["protocol=cross_dataset", "targets=toy_count,a/b"])
    assert load_config(None, ["dataset=imagenet-sketch.v2"]).dataset == "imagenet-sketch.v2"


@pytest.mark.parametrize("where, bad", [("method", "../../escaped"), ("method", "a/b"), ("dataset", "../x"),
                                        ("name", "../../run")])
def test_suite_names_are_plain_names(tmp_path, where, bad):
    import yaml

    from anchoropt.suite import load_suite

    suite = {"name": "s", "datasets": ["toy_shape"], "seeds": [1], "methods": {"coop": {"method": "coop"}}}
    if where == "method":
        suite["methods"] = {bad: {"method": "coop"}}
    elif where == "dataset":
        suite["datasets"] = [bad]
    else:
        suite["name"] = bad
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ConfigError) as exc:
        load_suite(path)
    assert str(path) in str(exc.value) and "is not a plain name" in str(exc.value) and bad in str(exc.value)


def _custom_dataset(root, entry_path, meta_extra=None):
    """A one-class custom dataset (meta.json) whose single train image is ``entry_path``."""
    import json

    folder = root / "mine"
    (folder / "images").mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"split_file": "split.json", **(meta_extra or {})}))
    entry = [[entry_path, 0, "cat"]]
    (folder / "split.json").write_text(json.dumps({"train": entry, "val": entry, "test": entry}))
    return folder


@pytest.mark.parametrize("entry", ["../../outside.png", "../meta.json", "/etc/passwd", "a/../../../x.png",
                                   "//etc/passwd", "ü/../../x.png", "a\0.png"])
def test_split_file_paths_stay_inside_the_dataset(tmp_path, entry):
    from anchoropt.data.datasets import DataError, read_dataset

    (tmp_path / "outside.png").write_bytes(b"png")
    _custom_dataset(tmp_path / "root", entry)
    with pytest.raises(DataError, match=r"split.json train\[0\]: path .* (leads outside .*mine/images|holds a NUL)"):
        read_dataset(tmp_path / "root", "mine")


@pytest.mark.parametrize("key, value", [("image_dir", "../.."), ("split_file", "/etc/hosts"),
                                        ("descriptions", "../../d.json"), ("image_dir", "images\0")])
def test_meta_json_paths_stay_inside_the_dataset(tmp_path, key, value):
    from anchoropt.data.datasets import DataError, read_dataset

    _custom_dataset(tmp_path / "root", "x.png", {key: value})
    with pytest.raises(DataError, match=f"meta.json {key}: path .* (leads outside|holds a NUL)"):
        read_dataset(tmp_path / "root", "mine")


def test_config_text_with_a_nul_character_is_refused(tmp_path):
    """A YAML config's path or text holding NUL failed later as a bare 'embedded null byte'."""
    config = tmp_path / "c.yaml"
    config.write_text('data_root: "data\\0x"\n')
    with pytest.raises(ConfigError, match=r"c.yaml: data_root holds a NUL character"):
        load_config(config)


@pytest.fixture
def mounted(tmp_path):
    """``mount(name, ro, fill, holding)``: a 2 MiB tmpfs under tmp_path, read-only (holding a copy of
    the folder ``holding``) or filled to the last byte; the test is skipped where mounting is not
    allowed (not root, no CAP_SYS_ADMIN)."""
    import shutil
    import subprocess

    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = []

    def mount(name: str, read_only: bool = False, fill: bool = False, holding=None):
        point = tmp_path / name
        point.mkdir()
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"{'ro' if read_only and not holding else 'rw'},size=2m",
                               "tmpfs", str(point)], capture_output=True)
        if made.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
        done.append(point)
        if holding:
            shutil.copytree(holding, point / holding.name)
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        if fill:
            with open(point / "filler", "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
        return point

    yield mount
    for point in done:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _cli(argv, capsys, monkeypatch):
    """Run the CLI in-process; Ray must not start. Returns (exit code, stderr lines)."""
    import anchoropt.search.driver as driver
    from anchoropt.cli import main

    def no_ray(*_, **__):
        raise AssertionError("Ray started before the input was checked")

    monkeypatch.setattr(driver, "_start_ray", no_ray)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_output_folder_on_read_only_or_full_disk_refused_before_ray(mounted, tmp_path, capsys, monkeypatch):
    from anchoropt.io import OutputError, check_output_dir
    from anchoropt.paths import shipped

    read_only, full = mounted("ro", read_only=True), mounted("full", fill=True)
    with pytest.raises(OutputError, match="Read-only file system"):
        check_output_dir(read_only / "s", "--out")
    with pytest.raises(OutputError, match="No space left on device|MiB free"):
        check_output_dir(full / "s", "--out")
    for out in (read_only / "s", full / "s"):
        code, err = _cli(["search", "--space", str(shipped("spaces", "anchors.yaml")), "--num-trials", "1",
                          "--out", str(out), f"cache_dir={tmp_path / 'cache'}"], capsys, monkeypatch)
        assert code == 2 and len(err) == 1 and err[0].startswith("anchoropt: error: --out") and str(out) in err[0]
        assert not out.exists()
    code, err = _cli(["search", "--space", str(shipped("spaces", "anchors.yaml")), "--num-trials", "1",
                      "--out", str(tmp_path / "s"), f"cache_dir={full / 'cache'}"], capsys, monkeypatch)
    assert code == 2 and len(err) == 1 and "cache_dir" in err[0] and not (tmp_path / "s").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**40)])
def test_out_of_range_seeds_refused_before_ray(tmp_path, capsys, monkeypatch, seed):
    import yaml

    from anchoropt.paths import shipped
    from anchoropt.suite import load_suite

    code, err = _cli(["search", "--space", str(shipped("spaces", "anchors.yaml")), "--num-trials", "1",
                      "--seed", seed, "--out", str(tmp_path / "s")], capsys, monkeypatch)
    assert code == 2 and len(err) == 1 and "sampler seed must be an integer in 0 .. 4294967295" in err[0]
    assert not (tmp_path / "s").exists()
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"datasets": ["toy_shape"], "seeds": [1, int(seed)],
                                     "methods": {"coop": {"method": "coop"}}}))
    with pytest.raises(ConfigError, match=f"seeds.1: {seed} is (less|greater) than"):
        load_suite(suite)
    with pytest.raises(ConfigError, match=f"invalid value seed={seed}: expected 0 .. 4294967295"):
        load_config(None, [f"seed={seed}"])


def test_toy_data_refuses_a_bad_seed_or_output_before_writing(mounted, tmp_path, capsys, monkeypatch):
    """``anchoropt data toy`` (and the main job's toy data): a seed out of range left a half-written
    dataset and numpy's 'expected non-negative integer'; a read-only data_root a 17-line traceback."""
    for seed in ("-1", str(2**40)):
        code, err = _cli(["data", "toy", "--seed", seed, f"data_root={tmp_path / 'd'}"], capsys, monkeypatch)
        assert code == 2 and err == [f"anchoropt: error: the toy world seed must be an integer in 0 .. 4294967295, "
                                     f"got {seed}"] and not (tmp_path / "d").exists()
    for point in (mounted("ro", read_only=True), mounted("full", fill=True)):
        code, err = _cli(["data", "toy", f"data_root={point / 'd'}"], capsys, monkeypatch)
        assert code == 2 and len(err) == 1 and err[0].startswith(f"anchoropt: error: data_root {point / 'd'}: ")


def test_eval_and_export_refuse_unwritable_outputs_before_any_work(mounted, tiny_cfg, tmp_path, capsys, monkeypatch):
    """``eval`` (its default RUN_DIR/eval folder, --out, cache_dir) and ``export --out`` on a read-only
    or full disk: one line each (were tracebacks, eval's after scoring the whole run)."""
    from anchoropt.train import train

    run = tmp_path / "run"
    train(tiny_cfg(method="coop", epochs=1), out_dir=run)
    read_only, full = mounted("ro", read_only=True, holding=run), mounted("full", fill=True)
    toy = ["backbone=ToyCLIP", "pretrained=toy"]
    for argv, what in [(["eval", read_only / "run"], "eval folder"), (["eval", run, "--out", full / "e.json"], "--out"),
                       (["eval", run, f"cache_dir={read_only / 'c'}"], "cache_dir"),
                       (["export", "openai", "--out", read_only / "x.pt", *toy], "--out"),
                       (["export", "openai", "--out", full / "x.pt", *toy], "--out")]:
        code, err = _cli([str(a) for a in argv], capsys, monkeypatch)
        assert code == 2 and len(err) == 1 and err[0].startswith(f"anchoropt: error: {what} "), (argv, err)


@pytest.mark.parametrize("change, words", [({"seed": -1}, "the sampler seed must be an integer in 0 .. 4294967295"),
                                           ({"num_trials": "x"}, "the number of trials must be >= 1, got 'x'"),
                                           ({"sampler": "<img>"}, "unknown sampler '<img>'"),
                                           ({"max_concurrent": "1"}, "max concurrent trials must be >= 1"),
                                           ({"seed": None}, "damaged, no seed")])
def test_a_damaged_search_json_is_refused_before_ray(tmp_path, capsys, monkeypatch, change, words):
    """``search --resume`` of a folder whose search.json was edited or damaged: one line naming it, before
    Ray (a seed of -1 there gave numpy's 'expected non-negative integer' after Ray started, a missing
    field a TypeError traceback)."""
    import json

    from anchoropt.paths import shipped
    from anchoropt.search.spec import new_spec

    out = tmp_path / "s"
    out.mkdir()
    new_spec(shipped("spaces", "anchors.yaml"), out, 4, {"data_root": str(tmp_path / "none")}, objective="val",
             sampler="tpe", seed=0, scheduler="none", cpus_per_trial=1, gpus_per_trial=0, max_concurrent=1,
             storage=None).write(out)
    stored = json.loads((out / "search.json").read_text())
    assert stored["reproducibility"].endswith("under a new trial number, as 'retry of trial N')")  # kill -9: 3 -> 4
    stored.update({k: v for k, v in change.items() if v is not None})
    for key in [k for k, v in change.items() if v is None]:
        del stored[key]
    (out / "search.json").write_text(json.dumps(stored))
    code, err = _cli(["search", "--resume", str(out)], capsys, monkeypatch)
    assert code == 2 and len(err) == 1 and f"{out / 'search.json'}: {words}" in err[0], err


def test_train_help_says_what_shots_0_means(capsys):
    from anchoropt.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "shots <= 0: every training image" in " ".join(capsys.readouterr().out.split())


def test_the_cli_shows_its_own_warnings_in_one_line(monkeypatch):
    """The empty-descriptions warning printed Python's two lines (file:line: UserWarning, source line)."""
    import os
    import warnings

    import anchoropt.task
    from anchoropt.cli import one_line_warnings

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    one_line_warnings()
    assert warnings.formatwarning("file d.json: 2 class(es)\n have only empty descriptions", UserWarning,
                                  anchoropt.task.__file__, 195) == \
        "anchoropt: warning: file d.json: 2 class(es) have only empty descriptions\n"
    assert "UserWarning: x" in warnings.formatwarning("x", UserWarning, os.__file__, 1)


def test_classes_whose_descriptions_are_all_empty_are_warned_about(tmp_path):
    import json

    from anchoropt.data.descriptions import load_descriptions

    path = tmp_path / "d.json"
    path.write_text(json.dumps({"cat": ["", " ", ""], "dog": ["a dog", "", "x"], "bird": ["", "", ""]}))
    with pytest.warns(UserWarning, match=r"d.json: 2 class\(es\) have only empty descriptions.*: cat, bird"):
        assert load_descriptions(path, ["cat", "dog", "bird"], 3)[1] == ["a dog", "", "x"]


def test_many_descriptions_are_announced_before_encoding(tiny_cfg, tmp_path, capsys):
    from anchoropt.engine import MANY_DESCRIPTIONS
    from tests.conftest import EUROSAT_CLASSES
    from tests.helpers import make_trainer, write_descriptions

    n = MANY_DESCRIPTIONS // (len(EUROSAT_CLASSES) // 2) + 1  # Stage I encodes the base half of the classes
    path = write_descriptions(tmp_path / "many.json", EUROSAT_CLASSES, n)
    trainer = make_trainer(tiny_cfg(descriptions=str(path), n_descriptions=n))
    capsys.readouterr()
    sentences = trainer.stage1_descriptions()
    out = capsys.readouterr().out
    total = sum(map(len, sentences))
    assert f"eurosat: {total} descriptions" in out and "to encode for the Stage I targets" in out


def test_dataset_readers_take_plain_names_only(tmp_path):
    from anchoropt.data.datasets import DataError, read_dataset

    _custom_dataset(tmp_path / "root" / "inner", "x.png")  # root/inner/mine: reachable as "inner/mine" before
    for bad in ("inner/mine", "../root/inner/mine", str(tmp_path / "root" / "inner" / "mine")):
        with pytest.raises(DataError, match="is not a plain name"):
            read_dataset(tmp_path / "root", bad)


def test_a_symlink_out_of_the_dataset_is_refused_a_symlinked_dataset_is_not(tmp_path):
    from anchoropt.data.datasets import DataError, read_dataset

    (tmp_path / "secret.png").write_bytes(b"png")
    folder = _custom_dataset(tmp_path / "root", "link.png")
    (folder / "images" / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(DataError, match="leads outside"):
        read_dataset(tmp_path / "root", "mine")
    (folder / "images" / "link.png").unlink()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "mine").symlink_to(folder)  # the whole dataset folder linked in: fine
    data = read_dataset(tmp_path / "elsewhere", "mine")
    assert data.train[0].impath == str(tmp_path / "elsewhere" / "mine" / "images" / "link.png")
