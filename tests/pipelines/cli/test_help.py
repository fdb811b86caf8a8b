"""`onegen --help` and every subcommand's: the flags are generated from the configs (their
defaults and help from the fields), and printing them imports neither torch, Ray nor MLflow."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from components.config import GenerationConfig, OptimConfig
from components.datasets.config import BuildConfig
from pipelines.checkout import REPO
from pipelines.cli.main import main

COMMANDS = ["main", "up", "down", "status", "data", "prepare", "train", "index", "eval", "promote", "serve", "ask", "link", "k8s"]
NESTED = [["data", "build"], ["data", "validate"], ["index", "build"], ["index", "search"]] + [
    ["k8s", action] for action in ("validate", "apply", "submit-train", "status", "logs", "delete")
]


def help_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def flag_help(text: str, flag: str) -> str:
    """The help lines of `flag`: its own line and the indented ones after it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(flag + " "))
    rest = [line for line in lines[start + 1 :]]
    end = next((i for i, line in enumerate(rest) if line.strip().startswith("-") or not line.strip()), len(rest))
    return " ".join(line.strip() for line in [lines[start], *rest[:end]])


def test_onegen_help_lists_the_commands_and_no_bench(capsys):
    text = help_of([], capsys)
    listed = re.findall(r"^    (\S+)", text.split("subcommands:")[1], flags=re.MULTILINE)  # not the wrapped help
    assert listed == COMMANDS


@pytest.mark.parametrize("argv", [[c] for c in COMMANDS] + NESTED, ids=" ".join)
def test_every_subcommand_has_help(argv, capsys):
    assert help_of(argv, capsys).startswith(f"usage: onegen {' '.join(argv)}")


def test_stage_flags_are_the_pipeline_config_fields(capsys):
    text = help_of(["train"], capsys)
    assert f"(default: {OptimConfig().max_steps})" in flag_help(text, "--train.optim.max_steps")
    assert "examples per step per worker" in flag_help(text, "--train.optim.batch_size")  # the field's description
    for flag in ("--config", "--address", "--no_wait", "--plain-lm", "--workers.deepspeed.zero_stage", "--index.index.kind"):
        assert flag in text
    assert "--train.optim.max_steps" in help_of(["main"], capsys)


def test_ask_and_data_build_flags_come_from_their_configs(capsys):
    text = help_of(["ask"], capsys)
    for field in ("max_new_tokens", "temperature", "top_p", "seed", "top_k", "max_retrievals"):
        shown = GenerationConfig.model_fields[field].default
        assert f"(default: {shown})" in flag_help(text, f"--{field}")
    assert "--json" in text and "--api_key" in text
    assert f"(default: {BuildConfig().dev_fraction})" in flag_help(help_of(["data", "build"], capsys), "--dev_fraction")


def test_help_imports_neither_torch_ray_nor_mlflow():
    code = (
        "import sys\nfrom pipelines.cli.main import main\n"
        "for argv in ([], ['train'], ['ask'], ['data', 'build'], ['index', 'build'], ['k8s', 'submit-train']):\n"
        "    try:\n        main([*argv, '--help'])\n    except SystemExit:\n        pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'mlflow', 'transformers', 'kubernetes'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"
