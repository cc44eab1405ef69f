"""The command line as a new user meets it (issue 26): one way to name the data root, a missing root
names its fix before torch loads, a closed pipe ends quietly, plain-words --help, .gitignore."""
import os
import subprocess
import sys

import pytest

from anchoropt.cli import build_parser, main
from tests.test_cli import ROOT, _probe


@pytest.mark.parametrize("command", [["data", "toy"], ["data", "list"], ["data", "check", "dtd"]])
def test_data_commands_take_data_root_like_every_command(command, tmp_path, capsys, monkeypatch):
    """`data check dtd data_root=X` read data_root=X as a dataset name; data toy/list took --root."""
    calls = {}
    import anchoropt.data.check as check_mod
    import anchoropt.toy.datasets as toy_mod

    monkeypatch.setattr(toy_mod, "make_toy11", lambda root, **kw: calls.setdefault("toy", str(root)) and [])
    monkeypatch.setattr(check_mod, "check_dataset", lambda root, name, *a: calls.setdefault(name, str(root)) and (
        _ for _ in ()).throw(ValueError(f"checked {name} under {root}")))
    with pytest.raises(SystemExit) if command[1] == "check" else _nothing():
        main([*command, f"data_root={tmp_path}"])
    out = capsys.readouterr()
    if command[1] == "toy":
        assert calls == {"toy": str(tmp_path)}
    elif command[1] == "list":
        assert f"datasets under {tmp_path}" in out.out
    else:
        assert calls == {"dtd": str(tmp_path)}  # one dataset, under the root named


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_old_root_flag_is_refused_naming_the_key(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "list", "--root", "/somewhere"])
    assert exit_.value.code == 2
    assert "data_root=/somewhere" in capsys.readouterr().err


def test_data_list_of_a_missing_root_exits_nonzero(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "list", f"data_root={tmp_path / 'nonexistent'}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "data root not found" in err


def test_train_without_data_fails_before_torch_and_names_the_fix(tmp_path):
    loaded, code, out = _probe("train", "dataset=toy_count", f"data_root={tmp_path / 'toy11'}", cwd=tmp_path)
    assert code == 2 and loaded == [], out.stderr[-500:]
    assert f"anchoropt data toy data_root={tmp_path / 'toy11'}" in out.stderr


def test_a_closed_pipe_ends_quietly(tmp_path, monkeypatch):
    """`anchoropt ... --dry-run | head` ended in a BrokenPipeError traceback."""
    (tmp_path / "data" / "toy11").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # data list's default root
    read, write = os.pipe()
    os.close(read)  # the reader (head) is gone
    closed = open(write, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", closed)
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["data", "list"])
    finally:
        monkeypatch.undo()
    assert exit_.value.code == 141  # 128 + SIGPIPE, as a shell reports a writer whose reader closed


def test_top_level_help_is_plain_words():
    text = build_parser().format_help()
    assert "``" not in text and "`" not in text
    assert "anchoropt run" in text


def test_gitignore_covers_what_the_commands_write():
    paths = ["searches/dtd/study.journal", "mlflow.db", "reports/mine/report.md", "results/x.json", "runs/a"]
    out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == paths
