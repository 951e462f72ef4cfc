"""The ``tokenflow`` parser: every command is offered and its help builds, each shared option is
defined once and keeps each command's default, and the options of before are still accepted."""

import pytest

from tokenflow.cli import main

#: The commands the README and docs name; a refactor of the CLI must keep every one.
COMMANDS = {"ablate", "bench", "convert-captions", "demo", "encode", "evaluate", "evaluate-compositional", "explain",
            "import-features", "index", "make-data", "prepare-frames", "search", "serve", "train"}


def test_version_is_the_installed_packages_and_exits_0(capsys):
    import importlib.metadata

    import tokenflow

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"tokenflow {tokenflow.__version__}\n"
    assert tokenflow.__version__ == importlib.metadata.version("tokenflow")  # pyproject.toml's


def test_every_command_is_offered_and_its_help_exits_0(capsys):
    with pytest.raises(SystemExit) as stop:
        main([])  # no command: usage on stderr, exit 2
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "the following arguments are required: command" in err
    offered = set(err.split("{", 1)[1].split("}", 1)[0].split(","))
    assert offered == COMMANDS
    for command in sorted(COMMANDS):
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        assert stop.value.code == 0, command
        assert capsys.readouterr().out.startswith(f"usage: tokenflow {command} "), command


def test_the_installed_command_runs(tmp_path):
    import subprocess
    import sys

    import tokenflow

    done = subprocess.run([sys.executable, "-m", "tokenflow", "--version"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, check=False)
    assert (done.returncode, done.stdout) == (0, f"tokenflow {tokenflow.__version__}\n"), done.stderr
    missing = tmp_path / "missing.pkl"  # a user error: exit 2 and one line naming the file
    done = subprocess.run([sys.executable, "-m", "tokenflow", "convert-captions", str(missing)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120, check=False)
    assert done.returncode == 2 and str(missing) in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_every_option_of_every_command_says_what_it_does():
    missing = [f"{name} {action.dest}" for name, sub in _commands().items() for action in sub._actions
               if action.help is None and action.dest != "help"]
    assert not missing, f"options without help text: {missing}"


def _commands():
    from tokenflow.cli import build_parser

    return build_parser()._subparsers._group_actions[0].choices  # argparse keeps them here


#: The options that several commands share, each added by one function of tokenflow.cli.options.
SHARED = ("--device", "--frames", "--video-tokens", "--on-error", "--w-global", "--w-fine", "--hp", "--visual-store",
          "--text-store")


def test_each_shared_option_is_defined_once_in_the_options_module():
    from pathlib import Path

    import tokenflow

    src = Path(tokenflow.__file__).parent
    for option in SHARED:
        where = [str(p.relative_to(src)) for p in sorted(src.rglob("*.py"))
                 for _ in range(p.read_text().count(f'add_argument("{option}"'))]
        assert where == ["cli/options.py"], (option, where)


#: Each command's shared options and their defaults, as they were before the options were shared.
DEFAULTS = {
    "make-data": (["out"], {"frames": 16}),
    "prepare-frames": (["--dataset", "msrvtt", "--root", "r", "--out", "o"], {"frames": 12, "on_error": "fail"}),
    "evaluate": (["--dataset", "flickr30k", "--root", "r"],
                 {"frames": 12, "on_error": "fail", "device": "cpu", "w_global": None, "w_fine": None, "hp": None,
                  "video_tokens": "frames", "visual_store": None}),
    "evaluate-compositional": (["--benchmark", "generic", "--annotations", "a"],
                               {"frames": 12, "device": "cpu", "w_global": None, "w_fine": None, "hp": None,
                                "text_store": None}),
    "encode": (["--model", "m", "--out", "o"], {"frames": 12, "on_error": "fail", "device": "cpu",
                                                "video_tokens": "frames"}),
    "search": (["--index", "i"], {"frames": 12, "device": "cpu", "w_global": None, "w_fine": None, "hp": None,
                                  "video_tokens": "frames"}),
    "explain": ([], {"frames": 12, "visual_store": None, "item": None}),
    "serve": (["--index", "i"], {"device": "cpu", "w_global": None, "w_fine": None}),
    "bench": ([], {"device": "cpu"}),
}


def test_each_command_keeps_its_defaults():
    commands = _commands()
    for command, (argv, defaults) in DEFAULTS.items():
        args = commands[command].parse_args(argv)
        assert {k: getattr(args, k) for k in defaults} == defaults, command
    offered = {c for c, sub in commands.items() for a in sub._actions if set(a.option_strings) & set(SHARED)}
    assert offered == set(DEFAULTS)  # every command with a shared option is checked above


def test_the_options_of_before_are_still_accepted():
    commands = _commands()
    args = commands["evaluate"].parse_args(
        ["--dataset", "msrvtt", "--root", "r", "--device", "cuda:1", "--frames", "8", "--on-error", "skip",
         "--w-global", "0.5", "--w-fine", "2", "--hp", "lam=20", "--hp", "mode=fast", "--hp", "uniform=true",
         "--video-tokens", "patches", "--visual-store", "V", "--text-store", "T"])
    assert (args.device, args.frames, args.on_error, args.w_global, args.w_fine, args.video_tokens) == \
        ("cuda:1", 8, "skip", 0.5, 2.0, "patches")
    assert args.hp == [("lam", 20), ("mode", "fast"), ("uniform", True)]
    assert (str(args.visual_store), str(args.text_store)) == ("V", "T")
    args = commands["make-data"].parse_args(["out", "--frames", "4", "--images", "10,2,2"])
    assert (args.frames, args.images) == (4, (10, 2, 2))
    args = commands["search"].parse_args(["--index", "i", "--text", "a", "--device", "cuda", "--hp", "lam=1.5"])
    assert (args.device, args.hp) == ("cuda", [("lam", 1.5)])


@pytest.mark.parametrize("bad", ["lam", "=3"])
def test_a_hyperparameter_without_name_and_value_is_refused_by_the_parser(bad, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["search", "--index", "i", "--text", "a", "--hp", bad])
    assert stop.value.code == 2
    assert f"expected NAME=VALUE, got {bad!r}" in capsys.readouterr().err
