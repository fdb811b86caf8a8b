"""The pipeline commands' flags override a preset: only the flags given change it, a nested flag
changes that one field, and the result is validated as a PipelineConfig (no Ray here)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import pipelines.cli.stage as stage_command
import pipelines.local.main_job as main_job
from pipelines.cli.command import UsageError
from pipelines.cli.main import load_pipeline_config, main
from pipelines.config import PipelineConfig, load_config


def with_changes(preset: str, **paths) -> PipelineConfig:
    """`preset` with the dotted `paths` (train__optim__max_steps=40) set, nothing else."""
    values = load_config(preset).model_dump()
    for path, value in paths.items():
        *parents, last = path.split("__")
        node = values
        for key in parents:
            node = node[key]
        node[last] = value
    return PipelineConfig.model_validate(values)


def test_no_flag_is_the_preset():
    assert load_pipeline_config(["train", "--config", "tiny"]) == load_config("tiny")


def test_a_nested_flag_changes_that_one_field():
    got = load_pipeline_config(["train", "--config", "tiny", "--train.optim.max_steps", "40", "--workers.num_workers", "1"])
    assert got == with_changes("tiny", train__optim__max_steps=40, workers__num_workers=1)
    assert got.train.optim.lr == load_config("tiny").train.optim.lr  # the preset's, not OptimConfig's default


@pytest.mark.parametrize("preset, argv, changes", [
    ("tiny", ["--workers.deepspeed.zero_stage", "2"], {"workers__deepspeed__zero_stage": 2}),  # Literal[0, 1, 2, 3] from "2"
    ("llama2-7b-gpu", ["--workers.use_gpu", "false"], {"workers__use_gpu": False}),  # a preset's true turned off
    ("smollm2-cpu", ["--train.optim.grad_clip", "None"], {"train__optim__grad_clip": None}),
    ("smollm2-cpu", ["--data.train", "x.jsonl", "--data.train", "fanoutqa_train.jsonl", "--data.train", "leaves_train.jsonl"],
     {"data__train": ["x.jsonl", "fanoutqa_train.jsonl", "leaves_train.jsonl"]}),
    ("tiny", ["--evaluate.ks", "[1, 3]", "--name", "007"], {"evaluate__ks": [1, 3], "name": "007"}),
    ("smollm2-cpu", ["--train.model.lora.r", "4"], {"train__model__lora__r": 4}),  # the rest of the preset's LoRA stays
])  # fmt: skip
def test_flags_of_every_kind(preset, argv, changes):
    assert load_pipeline_config(["train", "--config", preset, *argv]) == with_changes(preset, **changes)


def test_a_dict_field_is_replaced_and_checked_against_the_preset():
    # smollm2-cpu trains on fanoutqa_train.jsonl and ict_train.jsonl: a repeat of one of them is
    # valid with the preset's data.train (PipelineConfig's default train.jsonl would refuse it)
    got = load_pipeline_config(["train", "--config", "smollm2-cpu", "--data.repeat", '{"ict_train.jsonl": 2}'])
    assert got.data.repeat == {"ict_train.jsonl": 2} and got.data.train == load_config("smollm2-cpu").data.train


def test_an_optional_section_the_preset_leaves_out_gets_its_defaults():
    got = load_pipeline_config(["train", "--config", "tiny", "--train.model.lora.r", "4"])
    assert got.train.model.lora.r == 4 and got.train.model.lora.alpha == 32


@pytest.mark.parametrize("flag", ["--plain-lm", "--plain_lm"])
def test_plain_lm_is_the_baseline_of_the_overridden_config(flag):
    got = load_pipeline_config(["train", "--config", "tiny", "--train.optim.max_steps", "7", flag])
    assert got == with_changes("tiny", train__optim__max_steps=7).plain_lm()
    assert got.variant == "plain_lm" and got.train.loss.lambda_ret == 0


@pytest.mark.parametrize("command", ["main", "prepare", "index", "eval", "promote"])
def test_every_pipeline_command_takes_the_overrides(command):
    got = load_pipeline_config([command, "--config", "tiny", "--index.batch_size", "3"])
    assert got == with_changes("tiny", index__batch_size=3)


def test_main_defaults_to_smollm2_cpu():
    assert load_pipeline_config(["main"]) == load_config("smollm2-cpu")


def test_an_unknown_flag_exits_2_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", "tiny", "--train.optim.max_stepz", "40"])
    assert exit_.value.code == 2 and "--train.optim.max_stepz" in capsys.readouterr().err


@pytest.mark.parametrize("argv, named", [
    (["--train.optim.max_steps", "0"], "train.optim.max_steps"),
    (["--train.optim.max_steps", "many"], "train.optim.max_steps"),
    (["--workers.deepspeed.zero_stage", "5"], "workers.deepspeed.zero_stage"),
    (["--data.train", "other.jsonl"], "data.repeat"),  # smollm2-cpu repeats a file this drops
    (["--variant", "plain_lm"], "train.loss.lambda_ret"),  # the baseline is `--plain-lm`, which sets the loss too
])  # fmt: skip
def test_a_bad_value_exits_2_naming_the_field(argv, named, capsys, monkeypatch):
    monkeypatch.setattr(stage_command, "submit", lambda *args, **kwargs: pytest.fail("submitted"))
    assert main(["train", "--config", "smollm2-cpu", *argv]) == 2
    assert named in capsys.readouterr().err
    with pytest.raises(UsageError, match=named.replace(".", r"\.")):
        load_pipeline_config(["train", "--config", "smollm2-cpu", *argv])


def test_a_missing_or_unknown_preset_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train"])
    assert exit_.value.code == 2 and "--config" in capsys.readouterr().err
    assert main(["eval", "--config", "no-such-preset"]) == 2
    assert "no preset 'no-such-preset'" in capsys.readouterr().err


def test_a_stage_submits_the_overridden_config(monkeypatch):
    submitted = []
    monkeypatch.setattr(stage_command, "submit", lambda *args, **kwargs: submitted.append((args, kwargs)) or 0)
    argv = ["train", "--config", "tiny", "--train.optim.max_steps", "40", "--address", "http://127.0.0.1:1", "--no_wait"]
    assert main(argv) == 0
    assert submitted == [(("train", with_changes("tiny", train__optim__max_steps=40), "http://127.0.0.1:1"), {"wait": False})]


def test_the_main_job_runs_the_overridden_config(monkeypatch, tmp_path):
    ran = []
    monkeypatch.setattr(main_job, "run_main", lambda cfg, stack: ran.append((cfg, stack)) or SimpleNamespace(failed=None))
    monkeypatch.setattr(main_job, "final_table", lambda report: "table")
    assert main(["main", "--config", "tiny", "--workers.num_workers", "1", "--stack_config", str(tmp_path / "none.yaml")]) == 0
    assert ran == [(with_changes("tiny", workers__num_workers=1), None)]  # no such stack file: the defaults
