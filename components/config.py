"""Typed configuration of the algorithm. Pipelines compose these into stage configs with YAML
presets (`pipelines/presets/`); nothing here reads the environment."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

# The float type of a forward: "auto" picks bf16 where the hardware is fast at it (components/model/precision.py).
Precision = Literal["auto", "float32", "bfloat16"]


# OpenAI's ranges for its sampling options, which the HTTP API passes straight through.
Penalty = Annotated[float, Field(ge=-2, le=2)]
TopLogprobs = Annotated[int, Field(ge=0, le=20)]


class FrozenConfig(BaseModel):
    """Configs are immutable and reject unknown keys, so a typo in a YAML preset is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FormatConfig(FrozenConfig):
    """How documents become tokens. Saved with the model: training and inference must agree."""

    max_passage_tokens: PositiveInt = Field(160, description="passage tokens inserted between <paragraph> ... </paragraph>")
    max_document_tokens: PositiveInt = Field(256, description="document tokens embedded before [RD]")
    # A causal state at [EL] has read the text only up to the mention's end, and is also busy
    # predicting the next copied word; the state one token later has read that word too ("The
    # crane lifted", "a crane waded"). In link mode the copy is known, so the query can wait a step.
    link_query_offset: int = Field(0, ge=0, le=1, description="where [EL]'s query vector is read: 0 the state whose "
                                                            "input is [EL], 1 the state of the token after it")


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

    kind: Literal["infonce", "bpr"] = Field("infonce", description="the retrieval loss")
    temperature: float = Field(0.05, gt=0, description="InfoNCE only")
    lambda_gen: float = Field(1.0, ge=0, description="weight of the next-token loss")
    lambda_ret: float = Field(1.0, ge=0, description="weight of the retrieval loss (0: a plain LM)")
    emission_weight: float = Field(
        1.0, ge=1, description="the next-token loss at targets that are [RQ] counts this many times (1: as every other "
                               "token; 10 on smollm2-cpu made greedy decoding retrieve, at a cost to the query vectors)"
    )
    in_batch_negatives: bool = Field(
        True, description="the batch's other documents are negatives too; off: only each query's own hard negatives (the paper's BPR)"
    )
    # How the two losses' gradients make one update (components/model/balance.py): summed, the
    # retrieval loss's 5-20x larger gradient sets every shared weight's AdamW step.
    balance: Literal["sum", "per_loss_rms"] = Field(
        "sum", description="sum: one backward of the weighted sum; per_loss_rms: each loss's gradient divided per weight "
                           "by its own running RMS, then weighted by its lambda and summed (a second backward)"
    )
    # The loss of the global batch: every worker's queries against every worker's documents (with
    # in_batch_negatives=False that adds no negative, but still averages over the global batch).
    cross_worker_negatives: bool = Field(True, description="documents of the other data-parallel workers too")

    @property
    def balanced(self) -> bool:
        """Whether the two losses' gradients are balanced (there are two)."""
        return self.balance == "per_loss_rms" and self.lambda_ret > 0


class LoraConfig(FrozenConfig):
    r: PositiveInt = Field(16, description="LoRA rank")
    alpha: PositiveInt = Field(32, description="LoRA scaling: the update is scaled by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], description="modules given LoRA adapters"
    )


class ModelConfig(FrozenConfig):
    source: str = Field(
        "smollm2",
        description="'smollm2' (the offline SmolLM2-135M-Instruct), 'tiny' (a random Llama for tests), or an HF model directory",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' dtype")
    lora: LoraConfig | None = Field(None, description="LoRA adapters; None: a full fine-tune")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (less memory)")
    checkpoint_every_n_layers: PositiveInt = Field(
        1, description="with gradient_checkpointing: recompute every n-th decoder layer only (2: half the recompute, more memory)"
    )
    format: FormatConfig = FormatConfig()


class OptimConfig(FrozenConfig):
    lr: float = Field(5e-5, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    max_steps: PositiveInt = Field(100, description="optimizer steps")
    batch_size: PositiveInt = Field(8, description="examples per step per worker")
    # 16 trains smollm2-cpu 1.4x faster (batches padded 1.07x instead of 1.56x) but puts rows of
    # one kind together: TF R@1 0.684 where batches as drawn reach 0.772, and a worse plain LM too
    # (README, 2026-11-28). Off by default.
    length_groups: PositiveInt = Field(
        1, description="the rows of this many batches are sorted by length together and cut into batches, so that a "
                       "batch pads little (components.data.grouping); 1: batches as drawn"
    )
    grad_clip: float | None = Field(1.0, description="gradient norm clip; None: no clipping")
    seed: int = Field(0, description="the training run's random seed")


IndexKind = Literal["flat", "ivf", "hnsw"]


class IndexConfig(FrozenConfig):
    kind: IndexKind = Field("flat", description="flat: exact; ivf, hnsw: approximate, faster on large corpora")
    # IVF: the vectors are split into nlist cells by k-means; a query scans the nprobe nearest.
    # nlist None: 4·√n, at most n/39 (at least 1). An nlist given with fewer than 39·nlist vectors
    # is an error rather than silently changed.
    nlist: PositiveInt | None = Field(None, description="IVF cells; None: 4·√n, at most n/39")
    nprobe: PositiveInt = Field(32, description="IVF cells a query scans")
    # HNSW: links per node, and the candidate list sizes when building and when searching.
    hnsw_m: PositiveInt = Field(32, description="HNSW links per node")
    ef_construction: PositiveInt = Field(100, description="HNSW candidate list size when building")
    ef_search: PositiveInt = Field(128, description="HNSW candidate list size when searching")


class TrainConfig(FrozenConfig):
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    max_length: PositiveInt = Field(1024, description="tokens of a generation row")
    # Each document a row embeds is a forward and backward of its own: at 3 hard negatives a hop,
    # documents are ~29 % of a smollm2-cpu step's tokens (bench.train_throughput, P6).
    hard_negatives: NonNegativeInt | None = Field(
        None, description="embed at most this many of each hop's hard negatives (the first its example lists); None: all"
    )


class GenerationConfig(FrozenConfig):
    max_new_tokens: PositiveInt = Field(128, description="tokens the model samples; inserted passages do not count")
    temperature: float = Field(0.0, ge=0, description="0: greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: keep the most likely tokens up to this much probability")
    seed: int | None = Field(None, description="sampling seed; None: unseeded")
    stop: list[str] = Field([], description="end the answer before any of these strings")
    stop_token_ids: list[int] = Field([], description="end the answer on these tokens (besides EOS), the token included")
    logit_bias: dict[int, float] = Field({}, description="token id → added to its logit (as in the OpenAI API)")
    # OpenAI's penalties: logit − frequency_penalty × count − presence_penalty × (count > 0), where
    # count is how often this answer has sampled the token (prompt and passages do not count).
    frequency_penalty: Penalty = Field(0.0, description="subtracted from a token's logit once for each time the answer has sampled it")
    presence_penalty: Penalty = Field(0.0, description="subtracted from the logit of every token the answer has sampled already")
    logprobs: bool = Field(
        False, description="report each answer token's log-probability: the log-softmax of the logits it was drawn from, "
                           "logit_bias and penalties applied, temperature and top_p not (as OpenAI reports them)"
    )
    top_logprobs: TopLogprobs = Field(0, description="with logprobs: also this many likeliest tokens at each position")
    retrieval: bool = Field(True, description="off: plain decoding, [RQ] is a token like any other")
    mode: Literal["rag", "link"] = Field(
        "rag", description="rag: [RQ] retrieves and inserts passages; link: entity linking, each mention then [EL]"
    )
    kb: str = Field("wikipedia", description="link mode: the knowledge base whose entity index each [EL] searches")
    # GENRE's constrained decoding (De Cao et al. 2021): a linked copy may differ from its text only
    # by the [EL]s, so the model only decides where they go and never drifts from the text.
    copy_tokens: list[int] = Field([], description="link mode: the text's token ids, which the answer copies with [EL] "
                                                   "after mentions, then ends; empty: unconstrained")
    # The default budget, 4 passages, spent as one retrieval of the top 4: measured on the FanOutQA
    # training questions (the model's own answers, smollm2-cpu, whole corpus), evidence recall was
    # 0.309 as 1 × 4, 0.232 as 2 × 2 and 0.193 as 4 × 1: a 135M model's later queries, written
    # after a passage, drift from the question, and its first query is its best (bench/RESULTS.md).
    top_k: PositiveInt = Field(4, description="passages inserted per retrieval")
    max_retrievals: NonNegativeInt = Field(1, description="retrievals per answer; [RQ] is suppressed after the last")
    retrieval_threshold: float | None = Field(
        None, ge=0, le=1,
        description="retrieve whenever P([RQ]) exceeds this (Self-RAG's threshold policy), not only when [RQ] is the "
                    "likeliest token; None: plain sampling. A trained model stores the value calibrated for it",
    )
    link_threshold: float | None = Field(
        None, ge=0, le=1,
        description="link mode: write [EL] after a surface form whenever P([EL]) exceeds this, not only when it is the "
                    "likeliest token; None: plain sampling. A trained model stores the value calibrated for it",
    )
    # A word-sense request asks for one word's sense (WordNet's examples are labelled for one lemma),
    # and nearly every word of a sentence is some lemma: [EL] may then follow that word only.
    link_forms: list[str] = Field([], description="link mode: the only surface forms [EL] may follow (a word-sense "
                                                  "request's target word); empty: every form of the knowledge base")


class DecoderConfig(FrozenConfig):
    """How the in-stream decoder computes its steps, the same for every row of a batch (what one
    request asks for is its GenerationConfig). Each field's effect on single-stream decode is
    measured in bench/RESULTS.md (`decode_step_profile`, `p4_decode_vs_hf_generate`)."""

    matmul_dtype: Literal["auto", "float32", "bfloat16", "int8", "int4"] = Field(
        "auto",
        description="the type of the linear layers' weights while decoding. float32: the model's own modules, as "
                    "it computes; bfloat16: a copy of them whose matrix products use bf16 weights (prepacked for oneDNN "
                    "on a CPU), everything else still in the model's type; int8: weight-only int8 (a scale per row, bf16 "
                    "activations; faster than bf16 for one stream on a CPU, slower at 8 rows: bench/matmul_int8.py); int4: "
                    "CPU only: the weights the model was fine-tuned from (its onegen.json 'base') in 4 bits, groups of 32 "
                    "with a scale and offset each (Q4_1's scheme, what llama.cpp runs), plus the fine-tune's difference kept "
                    "exactly as the low-rank product it is; one-token rows through torch's int4 kernel, prompts and passages "
                    "through bf16 products of the same weights (one stream ×1.4 of bf16, 8 rows ×0.94: bench/RESULTS.md, "
                    "P4 and matmul_int4_engine; the base model is loaded when the decoder is made); "
                    "auto: bfloat16 where the hardware is fast at it (a GPU with bf16, a CPU with AVX512-BF16: "
                    "bench/RESULTS.md, P4)",
    )
    attn_implementation: Literal["sdpa", "eager"] | None = Field(
        None, description="the attention kernel while decoding (on a copy of the modules); None: the model's own "
                          "(HF's default, sdpa)",
    )
    kv_cache_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="what the KV cache stores keys and values in while decoding (attention then runs in it too). "
                    "float32: as the model computes; bfloat16: half the bytes that every step's attention reads and "
                    "every join, leave and compaction copies (bench/RESULTS.md: kv_cache_bf16); auto: bfloat16 "
                    "where matmul_dtype resolves to bfloat16, int8 or int4 on a CPU, else float32",
    )
    reuse_lead_in: bool = Field(
        True, description="prefill the chat template's fixed lead-in (what every chat prompt starts with: the system "
                          "prompt and the user turn's header) once per decoder, and give every row whose prompt starts "
                          "with it those keys and values instead of computing them again",
    )
    threads: PositiveInt | None = Field(
        None, description="torch CPU threads of the thread that decodes, set when a batch starts (OpenMP's count is "
                          "each thread's own); None: as that thread has them",
    )
