"""The command line as a user meets it: fast help, version, data list, train keys, file modes,
key=value overrides wherever they stand."""
import json
import os
import stat
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from anchoropt import __version__
from anchoropt.cli import build_parser, main, parse_args
from anchoropt.config import KEY_HELP, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
# Runs the CLI in a fresh interpreter and prints which heavy modules it loaded.
PROBE = """
import sys
from anchoropt.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
else:
    code = 0
print("LOADED", sorted(m for m in ("torch", "torchvision", "open_clip", "ray") if m in sys.modules), code)
"""


def _probe(*argv, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=cwd, env=env,
                         timeout=120)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("LOADED"))
    loaded, code = line[len("LOADED "):].rsplit(" ", 1)
    return eval(loaded), int(code) if code != "None" else 0, out


def _records(folder: Path) -> Path:
    for method, hm in (("coop", 70.0), ("anchoropt", 75.0)):
        for dataset in ("a", "b"):
            rec = {"record_version": 1, "method": method, "dataset": dataset, "seed": 1, "shots": 16,
                   "protocol": "base2novel", "objective": "test",
                   "metrics": {"acc_base": hm, "acc_novel": hm, "hm": hm}}
            path = folder / method / dataset / "seed1.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rec))
    return folder


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["search", "--num-trials", "x"],
                                  ["no-such-command"], ["data", "list", "data_root=nowhere"], ["report"]])
def test_help_argument_errors_and_data_list_load_no_torch(argv):
    loaded, code, out = _probe(*argv)
    assert loaded == [], (argv, loaded, out.stderr[-500:])
    assert code in (0, 2)


def test_report_loads_no_torch(tmp_path):
    loaded, code, out = _probe("report", str(_records(tmp_path / "records")), "--out", str(tmp_path / "rep"))
    assert code == 0, out.stderr[-800:]
    assert (tmp_path / "rep" / "report.md").is_file()
    assert "torch" not in loaded and "ray" not in loaded


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"anchoropt {__version__}"


def test_train_help_lists_every_config_key_with_default_and_meaning():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in fields(TrainConfig):
        line = next((ln for ln in text.splitlines() if ln.split()[:1] == [f.name]), None)
        assert line is not None, f"{f.name} missing from train --help"
        assert repr(f.default) in line and KEY_HELP[f.name] in " ".join(text.split()), f.name
    assert set(KEY_HELP) == {f.name for f in fields(TrainConfig)}  # no entry for a removed key


def test_data_list_shows_standard_and_custom_found_or_missing(tmp_path, capsys):
    (tmp_path / "dtd").mkdir()
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text("{}")
    (tmp_path / "my_set").mkdir()
    (tmp_path / "my_set" / "meta.json").write_text('{"split_file": "split.json"}')
    main(["data", "list", f"data_root={tmp_path}"])
    rows = {ln.split()[0]: ln.split()[1:3] for ln in capsys.readouterr().out.splitlines()[1:-1]}
    assert rows["dtd"] == ["standard", "found"]
    assert rows["eurosat"] == ["standard", "missing"]
    assert rows["my_set"] == ["custom", "found"]
    assert len(rows) == 12


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_respect_the_umask(tmp_path, umask):
    from anchoropt.io import save_json, save_tensors, write_text

    old = os.umask(umask)
    try:
        paths = [save_json({"a": 1}, tmp_path / "r.json"), write_text("x", tmp_path / "c.yaml"),
                 save_tensors({"w": [1.0]}, tmp_path / "p.pt")]
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == expected, p


COMMANDS = {
    "train": ["train", "--out", "o"],
    "search": ["search", "--space", "s.yaml", "--num-trials", "1", "--out", "o"],
    "benchmark": ["benchmark", "suite.yaml", "--results", "r"],
    "run": ["run", "--results", "r"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_overrides_are_accepted_before_and_after_options(command):
    """Issue 16, fault 4: `benchmark S --results R data_root=/x` was refused by argparse."""
    first, *options = COMMANDS[command]
    args = parse_args([first, *options, "data_root=/x", "--max-concurrent" if command != "train" else "--config",
                       "1" if command != "train" else "c.yaml", "shots=4"])
    assert args.overrides == ["data_root=/x", "shots=4"]
    at = next(i for i, item in enumerate(options) if item.startswith("--"))  # after the positionals
    assert parse_args([first, *options[:at], "lr=0.1", *options[at:]]).overrides == ["lr=0.1"]


def test_override_after_option_reaches_the_suite(tmp_path, eurosat_root, capsys):
    from tests.helpers import write_suite

    suite = write_suite(tmp_path, eurosat_root)
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", str(suite), "--results", str(tmp_path / "r"), "n_ctxx=3"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "unknown key(s) n_ctxx (did you mean n_ctx?)" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv", [["benchmark", "s.yaml", "--results", "r", "--resluts", "x"],
                                  ["report", "r", "--out", "o", "lr=1"]])
def test_unknown_arguments_still_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_main_job_report_goes_under_the_results_folder_by_default(monkeypatch, tmp_path):
    import anchoropt.pipeline

    calls = []
    monkeypatch.setattr(anchoropt.pipeline, "run_main_job", lambda *a, **kw: calls.append(a))
    main(["run", "--results", str(tmp_path / "res")])
    main(["run", "--results", str(tmp_path / "res"), "--report", str(tmp_path / "rep")])
    assert [Path(c[2]) for c in calls] == [tmp_path / "res" / "report", tmp_path / "rep"]
    assert not any(str(c[2]).startswith("reports") for c in calls)  # the committed example stays untouched


def test_run_dry_run_lists_both_searches_and_every_cell_and_writes_nothing(tmp_path, eurosat_root, capsys):
    import yaml

    from tests.helpers import write_suite

    suite = write_suite(tmp_path, eurosat_root, methods={"coop": {"method": "coop"},
                                                         "one": {"method": "anchoropt", "schedule": "one_stage"},
                                                         "two": {"method": "anchoropt", "schedule": "two_stage"}},
                        extra={"schedule_methods": {"one_stage": "one", "two_stage": "two"}})
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"params": {"n_anchors": {"type": "int", "low": 1, "high": 3}}}))
    results = tmp_path / "results"
    main(["run", "--suite", str(suite), "--results", str(results), "--space", str(space), "--search-trials", "3",
          "--dry-run"])
    out = capsys.readouterr().out
    assert out.count("would run 3 trial(s)") == 2 and "searches/one_stage" in out and "searches/two_stage" in out
    assert "dry run: benchmark tiny" in out and "6 cells, 0 done, 6 to run" in out
    assert sum(ln.strip().startswith("to run") for ln in out.splitlines()) == 6
    assert not results.exists()


@pytest.mark.parametrize("command", ["search", "benchmark", "run"])
def test_verbose_flag_counts_and_leaves_overrides_alone(command):
    from anchoropt.cli import parse_args

    head = [command, "suite.yaml", "--results", "r"] if command == "benchmark" else [command]
    assert parse_args(head).verbose == 0  # default: the progress bar
    args = parse_args([*head, "--verbose", "epochs=1"])
    assert args.verbose == 1 and args.overrides == ["epochs=1"]
    assert parse_args([*head, "-vv", "--mlflow", "sqlite:///m.db"]).verbose == 2


def test_train_never_overwrites_a_run_unless_asked(tmp_path, eurosat_root, capsys):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "method=zeroshot", "dataset=eurosat", f"data_root={eurosat_root}",
            "backbone=TinyCLIP-test", "pretrained=", f"descriptions_dir={eurosat_root}",
            f"cache_dir={tmp_path / 'cache'}", "device=cpu"]
    main(argv)
    first = (out / "record.json").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "already holds a run" in err and str(out) in err
    assert (out / "record.json").read_bytes() == first  # the earlier result is kept
    main([*argv[:3], "--overwrite", *argv[3:]])
    assert json.loads((out / "record.json").read_text())["wall_time_s"] != json.loads(first)["wall_time_s"]


def test_an_error_raised_while_ctrl_c_unwinds_still_exits_130(monkeypatch, capsys):
    import anchoropt.cli as cli

    def interrupted_in_a_lock(args):  # as Optuna's journal lock release failing under a KeyboardInterrupt
        try:
            raise KeyboardInterrupt
        finally:
            raise FileNotFoundError("study.journal.lock...rename")

    monkeypatch.setattr(cli, "_report", interrupted_in_a_lock)
    with pytest.raises(SystemExit) as exc:
        main(["report", "r", "--out", "o"])
    assert exc.value.code == 130 and "anchoropt: interrupted" in capsys.readouterr().err
