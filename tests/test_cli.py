"""One CLI: `mftcoder train` takes exactly mftcoder/train.py's options, every subcommand's --help ends with an example
that parses, one error style (`error: ...`, exit 2), `--version`, and quiet ends when stdout's reader goes away."""
import argparse
import json
import os
import shlex
import subprocess
import sys
from importlib import metadata

import pytest

from mftcoder import __version__, cli, train
from mftcoder.errors import run_reporting_errors
from train_helpers import read_records, train_records, write_tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBCOMMANDS = [["train"], ["preprocess"], ["config-schema"], ["merge"], ["generate"], ["chat"], ["eval"],
               ["eval", "humaneval"]]


def run_module(*args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mftcoder", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=120, **kw)


def subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


# --- mftcoder train == mftcoder/train.py ------------------------------------------------------------------------------


def test_mftcoder_train_has_every_option_of_train_py():
    ours, script = option_strings(subparser(cli.build_parser(), "train")), option_strings(train.build_parser())
    assert ours == script
    assert {"--resume_from_checkpoint", "--max_train_steps", "--tb_dir", "--model_type", "--micro_batch_size",
            "--distributed_type", "--train_config", "--output_dir", "--pretrained_model_path", "--data_paths"} <= ours


def test_mftcoder_train_parses_like_train_py():
    argv = ["--train_config", "c.json", "--resume_from_checkpoint", "latest", "--max_train_steps", "3",
            "--tb_dir", "tb", "--model_type", "llama", "--distributed_type", "deepspeed", "--micro_batch_size", "2",
            "--output_dir", "o", "--pretrained_model_path", "m", "--data_paths", "[a,b]"]
    ours = vars(cli.build_parser().parse_args(["train", *argv]))
    script = vars(train.build_parser().parse_args(argv))
    assert {k: ours[k] for k in script} == script
    assert script["resume_from_checkpoint"] == "latest" and script["max_train_steps"] == 3


def test_mftcoder_train_max_train_steps_runs_that_many_steps(tiny_model_dir, tmp_path, one_thread):
    """The config asks for 5 steps; `--max_train_steps 1` on the command line wins, and exactly one step runs."""
    tasks = write_tasks(tmp_path / "data", {"a": 12, "b": 8})
    config = {"data_paths": tasks, "output_dir": str(tmp_path / "cfg-out"), "pretrained_model_path": tiny_model_dir,
              "seq_length": 64, "per_device_train_batch_size": 2, "data_split": "80,20,0", "max_train_steps": 5,
              "evaluation_steps": None, "checkpointing_steps": None, "num_warmup_steps": 0}
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert cli.main(["train", "--train_config", str(tmp_path / "cfg.json"), "--max_train_steps", "1",
                     "--output_dir", str(out)]) == 0
    steps = [r["step"] for r in train_records(read_records(out))]
    assert steps == [1]
    assert not os.path.exists(tmp_path / "cfg-out")  # --output_dir overrode the config's too


# --- one spelling, one error style ------------------------------------------------------------------------------------


def test_output_is_the_spelling_everywhere_and_out_stays_an_alias():
    parser = cli.build_parser()
    for path in (["merge"], ["generate"], ["eval", "humaneval"]):
        assert "--output" in option_strings(subparser(parser, *path)), path
    for flag in ("--output", "--out"):
        args = parser.parse_args(["eval", "humaneval", "--samples", "s.jsonl", flag, "r.json"])
        assert args.out == "r.json"


def test_bad_arguments_give_one_error_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--train_config", "c.json", "--max_steps", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: unrecognized arguments: --max_steps 1"
    with pytest.raises(SystemExit):
        cli.main(["train", "--train_config", "c.json", "--max_train_steps", "one"])
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: argument --max_train_steps: invalid int")


def test_subcommand_errors_share_the_style(capsys):
    def fails(args):
        raise ValueError("prompts.jsonl:3: not valid JSON")

    assert run_reporting_errors(fails, argparse.Namespace()) == 2
    assert capsys.readouterr().err == "error: prompts.jsonl:3: not valid JSON\n"


def test_config_errors_through_the_real_command(tmp_path):
    bad = tmp_path / "cfg.yaml"
    bad.write_text("data_paths: [a]\noutput_dir: [x\nseq_length: 64\n")
    for command in ("train", "preprocess"):
        res = run_module(command, "--train_config", str(bad))
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.splitlines() == [f"error: {bad}:3: invalid YAML: expected ',' or ']', but got ':' "
                                           "(while parsing a flow sequence started on line 2)"]


# --- help and version ------------------------------------------------------------------------------------------------


def example_commands(help_text: str) -> list[str]:
    """The command lines after the help's last `example:` header, continuation lines joined."""
    head, sep, tail = help_text.lower().rpartition("\nexample:\n")
    assert sep, help_text
    text = help_text[len(head) + len(sep):]
    assert all(line.startswith("  ") for line in text.splitlines()), text
    return [line.strip() for line in text.replace("\\\n", " ").splitlines()]


@pytest.mark.parametrize("path", SUBCOMMANDS, ids=" ".join)
def test_help_ends_with_an_example_that_parses(path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*path, "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out.rstrip()
    assert "Example" in help_text.title()
    parsed = 0
    for line in example_commands(help_text):
        words = shlex.split(line.split("|")[0])
        if words[0] == "accelerate":  # the launch line runs train.py with train.py's own options
            train.build_parser().parse_args(words[words.index("mftcoder/train.py") + 1:])
        elif words[0] == "mftcoder":
            assert words[1:len(path) + 1] == path, line
            cli.build_parser().parse_args(words[1:])  # raises SystemExit if the example has a wrong flag
            parsed += 1
    assert parsed >= 1


def test_version_lists_mftcoder_and_its_libraries():
    res = run_module("--version")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"mftcoder {__version__}"
    for name in ("torch", "transformers", "peft", "accelerate", "deepspeed"):
        try:
            expected = f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            expected = f"{name} not installed"
        assert expected in lines, (expected, lines)


def test_version_says_not_installed_for_a_missing_library(monkeypatch):
    monkeypatch.setattr(cli, "VERSIONED_DEPENDENCIES", ("torch", "mftcoder-no-such-package"))
    lines = cli.version_text().splitlines()
    assert lines[-1] == "mftcoder-no-such-package not installed"
    assert lines[-2] == f"torch {metadata.version('torch')}"


# --- a closed pipe ends quietly ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["config-schema"], ["--version"]], ids=" ".join)
def test_closed_stdout_ends_without_a_traceback(args):
    """`mftcoder config-schema | head`: the reader is gone before the first write, so the write fails with EPIPE."""
    proc = subprocess.Popen([sys.executable, "-m", "mftcoder", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""
