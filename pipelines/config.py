"""One typed config for the whole pipeline, loaded from a YAML preset (`pipelines/presets/`) or a
user's file. Every stage reads the same file and takes its own section, so `prepare`, `train`,
`index`, `evaluate` and `promote` of one run always agree on where things are.

Where things live is derived from `storage.root` and `name` (see `Paths`), so a run is moved
from a laptop to a cluster by changing one line: `root: s3://bucket/prefix`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from components.config import DecoderConfig, FrozenConfig, GenerationConfig, IndexConfig, Precision, TrainConfig
from components.datasets.config import BuildConfig

PRESETS = Path(__file__).parent / "presets"


class StorageConfig(FrozenConfig):
    root: str = Field(".onegen/storage", description="a directory, or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(None, description="an S3-compatible endpoint (MinIO, moto); None: AWS")


class MLflowConfig(FrozenConfig):
    tracking_uri: str = Field("http://127.0.0.1:5000", description="the MLflow server")
    experiment: str = Field("onegen", description="the MLflow experiment the runs go to")
    registered_model: str = Field("onegen", description="the registry name promote registers under")


class DataConfig(FrozenConfig):
    """The role-annotated JSONL the pipeline starts from (`onegen data build` writes these)."""

    dir: str = Field("data", description="a directory, or s3://bucket/prefix")
    train: list[str] = Field(["train.jsonl"], description="training example files, in dir")
    dev: str = Field("fanoutqa_dev.jsonl", description="the dev examples evaluate scores, in dir")
    corpus: str = Field("corpus.jsonl", description="the documents, in dir")
    # train file → how many times each of its rows is used: a small source that teaches the
    # behaviour (FanOutQA's walks) among a large one that teaches retrieval (inverse cloze).
    repeat: dict[str, PositiveInt] = Field({}, description="train file → times each of its rows is used")
    # Training walks (never the dev split) on which the train stage calibrates the threshold
    # policy's τ for the trained weights (components/generation/threshold.py); None: no τ.
    calibration: str | None = Field(None, description="training walks on which the train stage calibrates τ of the threshold policy; none: no τ")
    # Entity linking. The corpus's documents are the `wikipedia` knowledge base (the vital articles
    # are the named entities); another base brings its own entities file (WordNet's synsets).
    entities: dict[str, str] = Field(
        {}, description="knowledge base → its entities file, in dir, for a base other than the corpus (wordnet: "
                        "entities_wordnet.jsonl); the index stage builds an entity index of each")
    linking_train: dict[str, str] = Field(
        {}, description="knowledge base → its linking training rows: train calibrates τ of [EL] on them, evaluate fits "
                        "the most-frequent-entity baseline on them")
    linking_dev: dict[str, str] = Field({}, description="knowledge base → its held-out linking texts, which evaluate links")
    calibration_rows: PositiveInt = Field(32, description="rows of data.calibration (and data.linking_train) sampled (seeded) to calibrate τ")
    build: BuildConfig = BuildConfig()  # how `onegen main` builds the files above from the installed packages

    @model_validator(mode="after")
    def _repeat_names_train_files(self) -> DataConfig:
        unknown = sorted(set(self.repeat) - set(self.train))
        if unknown:
            raise ValueError(f"data.repeat names {unknown}, which are not in data.train {self.train}")
        bases = set(self.knowledge_bases)
        for name, table in (("linking_train", self.linking_train), ("linking_dev", self.linking_dev)):
            if set(table) - bases:
                raise ValueError(f"data.{name} names knowledge bases {sorted(set(table) - bases)}; known: "
                                 f"{sorted(bases)} (wikipedia is the corpus, others come from data.entities)")
        return self

    @property
    def knowledge_bases(self) -> dict[str, str]:
        """Knowledge base → its entities file: the corpus for `wikipedia`, then data.entities."""
        return {"wikipedia": self.corpus, **self.entities}


class PrepareConfig(FrozenConfig):
    """Tokenisation uses `train.max_length` and `train.model.format`: prepare and train agree."""

    concurrency: PositiveInt = Field(1, description="tokenizer actors")
    # below 1: Ray Data must never starve Ray Train (STACK_NOTES)
    cpus_per_actor: PositiveFloat = Field(0.5, description="logical CPUs per tokenizer actor")
    batch_size: PositiveInt = Field(256, description="rows per tokenizer batch")


class DeepSpeedConfig(FrozenConfig):
    zero_stage: Literal[0, 1, 2, 3] = Field(1, description="DeepSpeed ZeRO stage")
    bf16: bool = Field(False, description="bfloat16 mixed precision (GPU workers only)")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload to CPU memory (large models)")


class WorkersConfig(FrozenConfig):
    """Ray Train: how many workers, what each holds, how checkpoints and failures are handled."""

    num_workers: PositiveInt = Field(2, description="Ray Train workers (data-parallel)")
    cpus_per_worker: PositiveFloat = Field(0.5, description="logical CPUs per worker")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the workers over nodes (Ray Train's ScalingConfig); STRICT_SPREAD: one per node")
    use_gpu: bool = Field(False, description="one GPU per worker")
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    checkpoint_every: PositiveInt = Field(50, description="steps between checkpoints")
    keep_checkpoints: PositiveInt = Field(2, description="checkpoints kept (the newest)")
    max_failures: NonNegativeInt = Field(1, description="worker crashes survived by restarting from the last checkpoint")


class IndexStageConfig(FrozenConfig):
    index: IndexConfig = IndexConfig()
    batch_size: PositiveInt = Field(32, description="documents per forward pass")
    actors: PositiveInt = Field(1, description="embedding actors")
    cpus_per_actor: PositiveFloat = Field(1.0, description="logical CPUs per embedding actor")
    precision: Precision = Field(
        "auto", description="auto: bf16 autocast where the CPU has AVX512-BF16 or the GPU supports bf16, fp32 elsewhere "
                            "(components/model/precision.py has the measurements)"
    )


class EvaluateConfig(FrozenConfig):
    ks: list[PositiveInt] = Field([1, 5, 10], description="the k of Recall@k")
    max_length: PositiveInt = Field(8192, description="tokens of a teacher-forced dev row, read whole: no hop is cut")
    # Free-running answers to every dev question: these settings, always greedy, with plain argmax
    # retrieval and (when the model has a calibrated τ) the threshold policy.
    generation: GenerationConfig = GenerationConfig()
    # How the answers are computed: DecoderConfig's defaults, as a server computes them (bf16 matrix
    # products and KV cache where the CPU has them); matmul_dtype float32 for the model's own fp32.
    decoder: DecoderConfig = DecoderConfig()
    batch_size: PositiveInt = Field(16, description="dev questions decoded together")
    linking_sample: PositiveInt = Field(128, description="held-out linking texts the model links free-running (seeded random sample)")
    # Reading the gold mentions' [EL] states is a forward pass per text: all 3,211 held-out texts
    # took ~7 minutes on 2 cores, so the stage reads every text with an ambiguous mention (what
    # linking is tested on) and a sample of the rest; bench/linking_quality.py reads them all.
    linking_unambiguous_texts: PositiveInt = Field(
        256, description="held-out linking texts without an ambiguous mention whose gold mentions are linked (seeded random sample)")
    plain_lm_baseline: bool = Field(
        True, description="compare with a plain LM fine-tuned on the same rows (λ_ret = 0): generation must not suffer"
    )


class PromoteConfig(FrozenConfig):
    metric: str = Field("served_evidence_recall",
                        description="the evaluate metric that decides (default: the gold pages the model retrieves while answering "
                                    "with the server's default policy, τ when calibrated)")
    greater_is_better: bool = Field(True, description="the metric's direction")
    min_delta: float = Field(0.0, ge=0, description="a challenger must beat the champion by more than this")


PLAIN_LM_SUFFIX = "-plain-lm"


class PipelineConfig(FrozenConfig):
    name: str = Field("onegen", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="names the run everywhere")
    # "plain_lm": the baseline that evaluate compares generation with: the same prepared rows and
    # steps, next-token loss only (λ_ret = 0, no document rows), its own run, checkpoints and model.
    variant: Literal["onegen", "plain_lm"] = Field("onegen", description="onegen, or the plain-LM baseline")
    storage: StorageConfig = StorageConfig()
    mlflow: MLflowConfig = MLflowConfig()
    data: DataConfig = DataConfig()
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    workers: WorkersConfig = WorkersConfig()
    index: IndexStageConfig = IndexStageConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    promote: PromoteConfig = PromoteConfig()

    @property
    def run_name(self) -> str:
        """Names the MLflow run, the checkpoints and the model: the variant's own."""
        return self.name + (PLAIN_LM_SUFFIX if self.variant == "plain_lm" else "")

    @model_validator(mode="after")
    def _plain_lm_has_no_retrieval_loss(self) -> PipelineConfig:
        # `--variant plain_lm` alone once trained a "plain LM" with the retrieval loss on.
        loss = self.train.loss
        if self.variant == "plain_lm" and (loss.lambda_ret != 0 or loss.emission_weight != 1):
            raise ValueError(
                f"variant plain_lm is the next-token-only baseline, but train.loss.lambda_ret is {loss.lambda_ret} and "
                f"train.loss.emission_weight {loss.emission_weight} (must be 0 and 1): `onegen train --plain-lm` sets all three"
            )
        return self

    @model_validator(mode="after")
    def _balance_needs_whole_parameters(self) -> PipelineConfig:
        if self.train.loss.balanced and self.workers.deepspeed.zero_stage == 3:
            raise ValueError("train.loss.balance per_loss_rms takes each loss's gradient of whole parameters, which "
                             "ZeRO-3 partitions: use workers.deepspeed.zero_stage 0, 1 or 2")
        return self

    @property
    def paths(self) -> Paths:
        return Paths(self.storage.root.rstrip("/"), self.name, self.run_name)

    def plain_lm(self) -> PipelineConfig:
        """This pipeline's plain-LM baseline (see `variant`): an ordinary fine-tune, so no retrieval
        loss and no extra weight on the [RQ] targets."""
        loss = self.train.loss.model_copy(update={"lambda_ret": 0.0, "emission_weight": 1.0})
        return self.model_copy(update={"variant": "plain_lm", "train": self.train.model_copy(update={"loss": loss})})


class Paths:
    """Where each stage reads and writes, under the storage root: prepared data is the
    pipeline's (`name`), models and indexes are the variant's (`run_name`)."""

    def __init__(self, root: str, name: str, run_name: str | None = None):
        self.root, self.name, self.run_name = root, name, run_name or name

    def _join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @property
    def prepared(self) -> str:
        return self._join("prepared", self.name)

    @property
    def quarantine(self) -> str:
        return self._join("prepared", self.name, "quarantine")

    @property
    def checkpoints(self) -> str:
        return self._join("checkpoints")  # RunConfig(storage_path=...); the run is `run_name` under it

    @property
    def model(self) -> str:
        return self._join("models", self.run_name)

    @property
    def index(self) -> str:
        return self._join("indexes", self.run_name)


def preset_path(name_or_path: str | Path) -> Path:
    """A preset name (`tiny`, `smollm2-cpu`, ...) or a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        return path
    preset = PRESETS / f"{name_or_path}.yaml"
    if not preset.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise FileNotFoundError(f"no preset {name_or_path!r}; presets: {known}; or give a YAML file")
    return preset


def load_config(name_or_path: str | Path) -> PipelineConfig:
    """Load a preset, a YAML file or a YAML URI (s3://, where a remote job finds its config); an
    unknown or mistyped key is an error that names it."""
    from components.platform import storage

    if storage.is_remote(str(name_or_path)):
        text = storage.read_bytes(str(name_or_path)).decode()
    else:
        text = preset_path(name_or_path).read_text()
    return PipelineConfig.model_validate(yaml.safe_load(text) or {})


def resolve_local_paths(cfg: PipelineConfig, base: Path) -> PipelineConfig:
    """Make relative local paths absolute against `base` (where the user ran `onegen`): a Ray job
    runs in a copy of the working directory, where a relative path would write into a temp dir."""

    def absolute(location: str) -> str:
        return location if "://" in location or Path(location).is_absolute() else str((base / location).resolve())

    return cfg.model_copy(update={
        "storage": cfg.storage.model_copy(update={"root": absolute(cfg.storage.root)}),
        "data": cfg.data.model_copy(update={"dir": absolute(cfg.data.dir)}),
    })


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
