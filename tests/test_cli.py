"""Command line plumbing: key=value overrides wherever they stand, one-line errors."""
import pytest

from anchoropt.cli import main, parse_args

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
