"""Typed configuration of the algorithm. Pipelines compose these into stage configs with YAML
presets (`pipelines/presets/`); nothing here reads the environment."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt


class FrozenConfig(BaseModel):
    """Configs are immutable and reject unknown keys, so a typo in a YAML preset is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FormatConfig(FrozenConfig):
    """How documents become tokens. Saved with the model: training and inference must agree."""

    max_passage_tokens: PositiveInt = 160  # passage text inserted between <paragraph> ... </paragraph>
    max_document_tokens: PositiveInt = 256  # document text embedded before [RD]


class LossConfig(FrozenConfig):
    """The joint loss (`components.model.losses`). Which documents a query is scored against:

    in_batch_negatives=True   every document of the batch (and, with cross_worker_negatives, of
                              every worker's batch) that is not one of its acceptable positives.
    in_batch_negatives=False  its own hard negatives only. With kind="bpr" this is the OneGen
                              paper's loss, as its code computes it (zjunlp/OneGen, util/loss.py
                              `bpr_loss`): the mean of -log σ(s(q, d⁺) − s(q, d⁻)) over every pair of
                              a query and one of its own hard negatives, cosine scores, no
                              temperature or margin. OneGen gives every query the same number of
                              negatives (6, topped up at random); here each query has those its
                              example lists, so one with more weighs more, and one with none
                              adds nothing.
    """

    kind: Literal["infonce", "bpr"] = "infonce"
    temperature: float = Field(0.05, gt=0)  # InfoNCE only
    lambda_gen: float = Field(1.0, ge=0)
    lambda_ret: float = Field(1.0, ge=0)
    in_batch_negatives: bool = True  # False: only each query's own hard negatives (the paper's BPR)
    # The loss of the global batch: every worker's queries against every worker's documents (with
    # in_batch_negatives=False that adds no negative, but still averages over the global batch).
    cross_worker_negatives: bool = True


class LoraConfig(FrozenConfig):
    r: PositiveInt = 16
    alpha: PositiveInt = 32
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelConfig(FrozenConfig):
    # "smollm2" (the offline SmolLM2-135M-Instruct), "tiny" (a random Llama for tests), or a path
    # to an HF model directory.
    source: str = "smollm2"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    format: FormatConfig = FormatConfig()


class OptimConfig(FrozenConfig):
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    max_steps: PositiveInt = 100
    batch_size: PositiveInt = 8  # examples per step per worker
    grad_clip: float | None = 1.0
    seed: int = 0


IndexKind = Literal["flat", "ivf", "hnsw"]


class IndexConfig(FrozenConfig):
    kind: IndexKind = "flat"  # flat: exact; ivf, hnsw: approximate, faster on large corpora
    # IVF: the vectors are split into nlist cells by k-means; a query scans the nprobe nearest.
    # nlist None: 4·√n, at most n/39 (at least 1). An nlist given with fewer than 39·nlist vectors
    # is an error rather than silently changed.
    nlist: PositiveInt | None = None
    nprobe: PositiveInt = 32
    # HNSW: links per node, and the candidate list sizes when building and when searching.
    hnsw_m: PositiveInt = 32
    ef_construction: PositiveInt = 100
    ef_search: PositiveInt = 128


class TrainConfig(FrozenConfig):
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    max_length: PositiveInt = 1024  # tokens of a generation row


class GenerationConfig(FrozenConfig):
    max_new_tokens: PositiveInt = 128  # tokens the model samples; inserted passages do not count
    temperature: float = Field(0.0, ge=0)  # 0: greedy
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: list[str] = []
    stop_token_ids: list[int] = []  # end the answer on these (besides EOS), the token included
    logit_bias: dict[int, float] = {}  # token id → added to its logit (as in the OpenAI API)
    retrieval: bool = True  # off: plain decoding, [RQ] is a token like any other
    mode: Literal["rag", "link"] = "rag"
    top_k: PositiveInt = 1  # passages inserted per hop
    max_retrievals: NonNegativeInt = 4  # hops per answer; [RQ] is suppressed after the last
    # Retrieve whenever P([RQ]) exceeds this (Self-RAG's threshold policy), not only when [RQ] is
    # the likeliest token. None: plain sampling (argmax when greedy). A trained model stores the
    # value calibrated for it (OneGenModel.retrieval_threshold).
    retrieval_threshold: float | None = Field(None, ge=0, le=1)
