from pipelines.config import PRESETS, load_config


def test_every_preset_loads():
    names = sorted(p.stem for p in PRESETS.glob("*.yaml"))
    assert "llama2-7b-gpu" in names
    for name in names:
        assert load_config(name).name == name


def test_the_paper_preset_uses_the_papers_bpr():
    """OneGen's BPR scores each query against its own hard negatives (components.config.LossConfig)."""
    loss = load_config("llama2-7b-gpu").train.loss
    assert loss.kind == "bpr" and not loss.in_batch_negatives


def test_the_plain_lm_baseline_is_an_ordinary_fine_tune_of_the_same_preset():
    cpu = load_config("smollm2-cpu")
    weighed = cpu.model_copy(update={"train": cpu.train.model_copy(update={
        "loss": cpu.train.loss.model_copy(update={"emission_weight": 10.0})})})
    plain = weighed.plain_lm()
    assert plain.train.loss.lambda_ret == 0 and plain.train.loss.emission_weight == 1  # [RQ] targets not weighed up
    assert plain.train.optim == cpu.train.optim and plain.data == cpu.data
