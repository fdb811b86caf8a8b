"""What the in-stream measurements (P1–P5, GritLM's caching protocol) share: the plan of hop steps
and token counts, the model and data, the index, the lean reference decode loop, the JSON fields
every result carries, and the command line.

The model is not trained to emit [RQ], so the retrieval schedule is forced with a hook on the LM
head ([RQ] on chosen steps) and EOS is suppressed (logit_bias -1e4): every answer has exactly
`new_tokens` tokens and the same hops. Timing depends only on token counts, so this measures the
mechanics (KV cache, chunked passage prefill, search, re-prefill) honestly, not answer quality.

The index holds the real corpus (passages are real text, `max_passage_tokens`=160) with seeded
random unit vectors in a Flat index: a search costs the same for any vectors of that shape, and
embedding 10k documents with the LM would take ~20 min on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    REPO,
    RESULTS_DIR,
    command_line,
    device_string,
    load_average,
    median,
    timed,
    write_result,
    write_results_md,
)
from components.config import DecoderConfig
from components.testing import eos_bias, forced_token, head_calls

# The decoders P1–P3, P5 and GritLM's protocol time run the model's own modules in fp32: they
# measure retrieval's mechanics against reference loops over those modules (`plain_decode`, HF
# generate) and force [RQ] with a hook on the model's head. P4 times DecoderConfig's defaults.
MECHANICS = DecoderConfig(matmul_dtype="float32")

# -- what is run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    new_tokens: int = 64  # sampled per answer (inserted passages do not count)
    hop_steps: tuple[int, ...] = (8, 24, 40)  # generated-token indices of the forced [RQ]
    reps: int = 4  # P1–P3 (one interleaved loop of five variants)
    decode_reps: int = 5  # P4 (its variants differ by 10-30 %: five rounds keep one slow round out of the median)
    batch: int = 8  # P5
    batch_reps: int = 3
    batch_warmup: int = 0  # P5 runs after P1–P4: the process is warm
    memory_runs: int = 2  # answers per P3 memory subprocess (peak RSS is read at the end)
    caching_lengths: tuple[int, ...] = (250, 500, 1000, 2000, 4000)
    caching_new_tokens: int = 16
    caching_reps: int = 3
    caching_warmup_below: int = 300  # one untimed round per length below this (the first; the process is warm after)
    corpus_limit: int | None = None  # documents of the corpus used (None: all)
    seed: int = 0  # random index vectors
    max_wait_s: float = 3.0  # before each round, wait at most this long for other processes to calm down
    round_factor: int = 1  # up to factor × reps rounds while fewer than reps were quiet (1: exactly reps)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()})


FULL = Plan()
QUICK = Plan(
    new_tokens=16, hop_steps=(3, 7, 11), reps=3, decode_reps=3, batch_reps=2, memory_runs=1,
    caching_lengths=(250, 500), caching_reps=2, corpus_limit=2000,
    max_wait_s=0.0, round_factor=1,  # a smoke run: no waiting for a quiet machine
)


# -- model, data, index --------------------------------------------------------------------------


def load_model(source: str, device: str = "cpu"):
    from components.model.base import load_base
    from components.model.onegen import ONEGEN_CONFIG, OneGenModel

    path = Path(source)
    if source not in ("smollm2", "tiny") and (path / ONEGEN_CONFIG).is_file():
        model = OneGenModel.from_pretrained(path)
    else:
        model = OneGenModel.build(*load_base(source))
        model.base = source
    return model.to(device).eval()


def model_name(source: str, model) -> str:
    dtype = str(next(model.hf.parameters()).dtype).removeprefix("torch.")
    if source == "smollm2":
        return f"SmolLM2-135M-Instruct + OneGen tokens (untrained), {dtype}, greedy"
    if source == "tiny":
        return f"tiny random Llama (2 layers, hidden 64) + OneGen tokens, {dtype}, greedy"
    return f"{source}, {dtype}, greedy"


def load_data(data_dir: Path, limit: int | None = None):
    """(corpus, user questions of dev.jsonl)."""
    from components.data.corpus import Corpus

    corpus_path, dev_path = data_dir / "corpus.jsonl", data_dir / "dev.jsonl"
    for path in (corpus_path, dev_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: build the data with `onegen data build --out {data_dir}`")
    corpus = Corpus.load_jsonl(corpus_path)
    if limit is not None and limit < len(corpus):
        corpus = Corpus(list(corpus)[:limit])
    questions = []
    with open(dev_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                questions.append(next(m["content"] for m in row["messages"] if m["role"] == "user"))
    if not questions:
        raise ValueError(f"{dev_path} has no questions")
    return corpus, questions


def random_unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def lm_index(model, corpus, seed: int = 0):
    """The LM's index: the real documents, seeded random unit vectors (see the module doc)."""
    from components.retrieval.index import build_from_vectors

    return build_from_vectors(random_unit_vectors(len(corpus), model.hidden_size, seed), corpus, model.fingerprint())


def minilm_index(encoder, corpus, data_dir: Path):
    """MiniLM's own index of the corpus: the matrix `onegen data build` cached when it covers these
    ids (rows picked by id), else encoded now. Returns (index, where the vectors came from)."""
    from components.retrieval.index import build_from_vectors
    from components.retrieval.minilm import MATRIX_FILE, MATRIX_META

    meta_path, matrix_path = data_dir / MATRIX_META, data_dir / MATRIX_FILE
    try:
        ids = json.loads(meta_path.read_text())["ids"]
        matrix = np.load(matrix_path)
        position = {d: i for i, d in enumerate(ids)}
        if matrix.shape[0] == len(ids) and all(d in position for d in corpus.ids):
            rows = matrix[[position[d] for d in corpus.ids]].astype(np.float32)
            return build_from_vectors(rows, corpus, encoder.fingerprint), f"cached {matrix_path}"
    except (OSError, ValueError, KeyError):
        pass
    return encoder.index(corpus), "encoded now (no matching cached matrix)"


# -- the reference loop and what the results report ----------------------------------------------


@torch.no_grad()
def plain_decode(model, prefix: Sequence[int], feed: Sequence[int] | None = None, new_tokens: int | None = None,
                 cache=None, suppress: Sequence[int] = ()) -> tuple[list[int], float, float]:
    """The lean reference loop: one prefill of `prefix` onto `cache` (a fresh one when None), then
    one token per forward with the KV cache, the LM head and an argmax at every step. Feeds
    `feed` (teacher forcing) or its own argmax for `new_tokens - 1` more steps.
    Returns (argmax tokens, prefill seconds, decode seconds)."""
    from transformers import DynamicCache

    decoder, head, device = model.hf.get_decoder(), model.hf.get_output_embeddings(), model.device
    cache = DynamicCache() if cache is None else cache
    suppress = list(suppress)

    def pick(hidden: torch.Tensor) -> int:
        logits = head(hidden[:, -1]).float()
        if suppress:
            logits[:, suppress] = float("-inf")
        return int(logits[0].argmax())

    started = time.perf_counter()
    out = decoder(input_ids=torch.tensor([list(prefix)], device=device), past_key_values=cache, use_cache=True)
    tokens = [pick(out.last_hidden_state)]
    prefilled = time.perf_counter()
    steps = len(feed) if feed is not None else (new_tokens or 1) - 1
    for i in range(steps):
        token = feed[i] if feed is not None else tokens[-1]
        out = decoder(input_ids=torch.tensor([[token]], device=device), past_key_values=cache, use_cache=True)
        tokens.append(pick(out.last_hidden_state))
    return tokens, prefilled - started, time.perf_counter() - prefilled


def measured(raw: dict, key: str, names: Sequence[str]) -> str:
    """One RESULTS.md line: the basis, the medians (wall and CPU), the ratio on the other bases."""
    r = raw[key]
    meds = "; ".join(f"{n} {raw['medians_wall_s'][n]:.2f} s wall / {raw['medians_cpu_s'][n]:.2f} s CPU" for n in names)
    quiet = "—" if r["ratio_wall_quiet_rounds"] is None else f"{r['ratio_wall_quiet_rounds']:.3f}"
    return (f"basis: {r['basis']} ({raw['rounds']} rounds, {len(raw['quiet_rounds'])} quiet); medians: {meds}; "
            f"ratio by wall time over all rounds {r['ratio_wall_all_rounds']:.3f}, over quiet rounds {quiet}, by CPU "
            f"time {r['ratio_cpu_time']:.3f}; per-round ratios on the basis {', '.join(f'{x:.3f}' for x in r['pair_ratios'])}")


def timing_medians(generations) -> dict[str, float]:
    keys = ("prefill_s", "decode_s", "search_s", "total_s")
    out = {k: median(g.timings[k] for g in generations) for k in keys}
    out["unaccounted_s"] = median(g.timings["total_s"] - sum(g.timings[k] for k in keys[:3]) for g in generations)
    return out


# -- the set-up ----------------------------------------------------------------------------------


@dataclass
class Setup:
    """The loaded model, data and index, and how a result is written: every measurement runs on one
    (`python -m bench.in_stream` shares it between them)."""

    model_source: str = "smollm2"
    plan: Plan = FULL
    data_dir: Path = REPO / "data"
    out_dir: Path = RESULTS_DIR
    report_path: Path | None = None
    device: str = "cpu"
    command: str = "python -m bench.in_stream"
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))

    def __post_init__(self):
        self.started = time.perf_counter()
        self.log(f"loading {self.model_source} and {self.data_dir} ...")
        self.model = load_model(self.model_source, self.device)
        self.corpus, self.questions = load_data(self.data_dir, self.plan.corpus_limit)
        self.prompts = [self.model.formatter.prompt([{"role": "user", "content": q}]) for q in self.questions]
        self.index = lm_index(self.model, self.corpus, self.plan.seed)
        self.rq = self.model.formatter.query_id
        self.device_str = device_string(self.device)
        self.name = model_name(self.model_source, self.model)
        self.written: list[Path] = []
        self.shared: dict[str, object] = {}  # what several measurements reuse (the P1–P3 loop), computed once

    def cfg(self, retrieval: bool = True, new_tokens: int | None = None):
        from components.config import GenerationConfig

        return GenerationConfig(
            max_new_tokens=new_tokens or self.plan.new_tokens, temperature=0.0, logit_bias=eos_bias(self.model),
            retrieval=retrieval, top_k=1, max_retrievals=len(self.plan.hop_steps),
        )

    def base(self, id_: str, what: str, ratio: float, goal: str | None, met: bool | None, notes: str, **raw) -> dict:
        return {
            "id": id_, "what": what, "ratio": ratio, "goal": goal, "met": met,
            "device": self.device_str, "model": self.name, "command": self.command, "notes": notes,
            "plan": {k: v for k, v in asdict(self.plan).items()},
            "index": {"kind": "flat", "documents": len(self.corpus), "dimension": self.model.hidden_size,
                      "vectors": f"seeded random unit vectors (seed {self.plan.seed}); real document store",
                      "max_passage_tokens": self.model.formatter.format.max_passage_tokens},
            **raw,
        }

    def save(self, result: dict) -> dict:
        result["loadavg_end"] = load_average()
        self.written.append(write_result(self.out_dir, result))
        write_results_md(self.out_dir, self.report_path)
        r = result["ratio"]
        self.log(f"{result['id']}: ratio {r:.3f} (goal {result['goal']}, met {result['met']})")
        return result

    def rounds(self, reps: int) -> dict:
        """interleave's round limits for this plan."""
        return {"max_rounds": reps * self.plan.round_factor, "max_wait_s": self.plan.max_wait_s,
                "cpu_fallback": str(self.device) == "cpu" and torch.get_num_threads() == 1}

    def in_stream_run(self, decoder, prompts, cfg, forced: bool = True):
        calls = head_calls(self.plan.hop_steps, rq_fed_by_decoder=True)
        ctx = forced_token(self.model, self.rq, calls) if forced else contextlib.nullcontext()
        with ctx:
            return timed(lambda: decoder.generate(prompts, cfg), self.device)

    def check(self, gen, hops: bool = True) -> bool:
        """Exactly new_tokens tokens, and the hops on the forced steps."""
        ok = len(gen.generated) == self.plan.new_tokens
        return ok and (not hops or [h.step for h in gen.hops] == list(self.plan.hop_steps))

    def finish(self) -> None:
        self.log(f"done in {time.perf_counter() - self.started:.0f}s; wrote {len(self.written)} results to {self.out_dir}")


# -- the command line ----------------------------------------------------------------------------


def parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The options every in-stream measurement takes (the first paragraph of `doc` describes it)."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer tokens, reps and lengths, 2000 documents")
    p.add_argument("--model", default="smollm2", help="smollm2, tiny, or a model directory")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for <id>.json (RESULTS.md goes beside it)")
    p.add_argument("--report", type=Path, default=None, help="RESULTS.md path (default: <out>/../RESULTS.md)")
    p.add_argument("--data", type=Path, default=REPO / "data", help="corpus.jsonl, dev.jsonl (and MiniLM's cached matrix)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)")
    return p


def setup_from(args: argparse.Namespace, command: str) -> Setup:
    if args.threads:
        torch.set_num_threads(args.threads)  # before the model loads
    return Setup(model_source=args.model, plan=QUICK if args.quick else FULL, data_dir=args.data, out_dir=args.out,
                 report_path=args.report, device=args.device, command=command)


def run_alone(doc: str, module: str, measure: Callable[[Setup], dict], argv: Sequence[str] | None) -> int:
    """The `main` of one measurement file: parse the common options, set up, measure, write."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(module, doc).parse_args(argv)
    return run(args, command_line(module, argv), [measure])


def run(args: argparse.Namespace, command: str, measures: Sequence[Callable[[Setup], dict]]) -> int:
    """Each measurement in turn on one set-up; 1 when the data is missing."""
    try:
        setup = setup_from(args, command)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    for measure in measures:
        measure(setup)
    setup.finish()
    return 0
