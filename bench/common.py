"""What every benchmark shares: the device string, interleaved timing with medians, the command
line a result records, one JSON file per measurement, and the RESULTS.md table rendered from all
of them. (The forced retrieval schedule and ReplayIndex are test doubles: components/testing.py.)

Rules: a result is a RATIO against a baseline timed in the same process or the same run (the
machines are noisy); repetitions are interleaved (A, B, A, B, ...) and medians are taken.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
REQUIRED = ("id", "ratio", "goal", "met", "device", "model", "command")


# -- the machine -------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_string(device: str = "cpu") -> str:
    """e.g. "CPU: AMD EPYC, 2 cores, torch 2.13.0+cpu (2 threads)"."""
    import torch

    if str(device).startswith("cuda"):
        return f"GPU: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, torch {torch.__version__}"
    threads = torch.get_num_threads()
    return f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} thread{'s' if threads != 1 else ''})"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: how busy the machine was (others share it)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# -- timing ------------------------------------------------------------------------------------

# Other processes using at most this many cores (on average, during a timed call) leave it "quiet".
# The machines are shared: a burst of someone else's tests stretches a call several times over.
QUIET_CORES = 0.35
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float | None:
    """CPU seconds all processes have used (the aggregate line of /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _own_cpu_s() -> float:
    return time.process_time()  # every thread of this process, user + system, at ns resolution


def others_cores(window_s: float = 0.5) -> float | None:
    """Cores other processes keep busy right now (measured over `window_s` while this one sleeps)."""
    before = _machine_busy_s()
    if before is None:
        return None
    own = _own_cpu_s()
    time.sleep(window_s)
    return max(0.0, (_machine_busy_s() - before) - (_own_cpu_s() - own)) / window_s


def wait_for_quiet(max_wait_s: float, threshold: float = QUIET_CORES) -> float:
    """Wait (at most `max_wait_s`) until other processes leave the CPU alone; seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < max_wait_s:
        busy = others_cores()
        if busy is None or busy < threshold:
            break
    return time.perf_counter() - started


@dataclass
class Sample:
    seconds: float  # wall
    cpu_s: float  # this process's CPU time (all threads) during the call
    others_cores: float | None  # other processes' average busy cores during the call


_last: list[Sample] = []


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: str = "cpu") -> tuple[float, Any]:
    """(wall seconds, result) of one call; on a GPU, queued work is waited for on both ends. The
    call's CPU time and the other processes' load during it are kept for `interleave`."""
    synchronize(device)
    busy0, own0 = _machine_busy_s(), _own_cpu_s()
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    seconds = time.perf_counter() - started
    own = _own_cpu_s() - own0
    others = None if busy0 is None else max(0.0, (_machine_busy_s() - busy0) - own) / max(seconds, 1e-9)
    _last[:] = [Sample(seconds, own, others)]
    return seconds, result


def median(xs: Iterable[float]) -> float:
    return float(statistics.median(list(xs)))


@dataclass
class Runs:
    """Interleaved rounds of several variants: every call's wall time, CPU time and the load other
    processes put on the machine meanwhile.

    The medians and ratios use a *basis*: wall time over the quiet rounds when there are at least
    `min_quiet` of them; otherwise, with `cpu_fallback` (set it only for single-threaded work in
    this very process, where CPU time is the work done and a busy machine does not stretch it),
    this process's CPU time over all rounds; otherwise wall time over all rounds."""

    names: list[str]
    samples: dict[str, list[Sample]] = field(default_factory=dict)  # timed rounds only
    results: dict[str, list[Any]] = field(default_factory=dict)
    waited_s: float = 0.0
    warmup: int = 0
    min_quiet: int = 3
    cpu_fallback: bool = False

    def rounds(self) -> int:
        return len(self.samples[self.names[0]])

    def quiet_rounds(self) -> list[int]:
        """Rounds in which no call shared the CPU with more than QUIET_CORES of other work."""
        return [i for i in range(self.rounds())
                if all(self.samples[n][i].others_cores is not None and self.samples[n][i].others_cores < QUIET_CORES
                       for n in self.names)]

    def enough_quiet(self) -> bool:
        return len(self.quiet_rounds()) >= self.min_quiet

    def basis(self) -> str:
        if self.enough_quiet():
            return "wall time, quiet rounds"
        if self.cpu_fallback:
            return "CPU time, all rounds (too few quiet rounds; single-threaded, so CPU time is the work done)"
        return "wall time, all rounds (too few quiet rounds)"

    def used(self) -> list[int]:
        return self.quiet_rounds() if self.enough_quiet() else list(range(self.rounds()))

    def seconds(self, name: str, rounds: list[int] | None = None) -> list[float]:
        """Wall seconds of `name` in the rounds used (or the rounds given)."""
        rounds = self.used() if rounds is None else rounds
        return [self.samples[name][i].seconds for i in rounds]

    def values(self, name: str) -> list[float]:
        """Seconds on the basis: wall, or CPU when falling back to it, over the rounds used."""
        cpu = not self.enough_quiet() and self.cpu_fallback
        return [self.samples[name][i].cpu_s if cpu else self.samples[name][i].seconds for i in self.used()]

    def med(self, name: str) -> float:
        return median(self.values(name))

    def ratio(self, num: str, den: str) -> float:
        """median(num) ÷ median(den) on the basis."""
        return self.med(num) / self.med(den)

    def pair_ratios(self, num: str, den: str) -> list[float]:
        return [a / b for a, b in zip(self.values(num), self.values(den))]

    def used_results(self, name: str) -> list[Any]:
        return [self.results[name][i] for i in self.used()]

    def report(self, ratios: dict[str, tuple[str, str]]) -> dict:
        """The raw numbers for the JSON: every sample, which rounds were quiet and used, the basis,
        and each ratio also by wall time (all rounds, quiet rounds) and by CPU time as cross-checks."""
        everything = list(range(self.rounds()))
        quiet = self.quiet_rounds()

        def wall(n: str, rounds: list[int]) -> float:
            return median(self.seconds(n, rounds))

        def cpu(n: str) -> float:
            return median(self.samples[n][i].cpu_s for i in everything)

        out = {
            "basis": self.basis(),
            "rounds": self.rounds(), "warmup_rounds": self.warmup, "quiet_rounds": quiet,
            "rounds_used": "quiet" if self.enough_quiet() else "all (too few quiet rounds)",
            "waited_for_quiet_s": self.waited_s,
            "medians_s": {n: self.med(n) for n in self.names},
            "medians_wall_s": {n: wall(n, self.used()) for n in self.names},
            "medians_cpu_s": {n: cpu(n) for n in self.names},
            "samples_s": {n: [x.seconds for x in self.samples[n]] for n in self.names},
            "cpu_s": {n: [x.cpu_s for x in self.samples[n]] for n in self.names},
            "others_cores": {n: [x.others_cores for x in self.samples[n]] for n in self.names},
            "order": self.names,
        }
        for key, (num, den) in ratios.items():
            out[key] = {
                "ratio": self.ratio(num, den),
                "basis": self.basis(),
                "pair_ratios": self.pair_ratios(num, den),
                "ratio_wall_all_rounds": wall(num, everything) / wall(den, everything),
                "ratio_wall_quiet_rounds": wall(num, quiet) / wall(den, quiet) if quiet else None,
                "ratio_cpu_time": cpu(num) / cpu(den),
            }
        return out


def interleave(
    variants: dict[str, Callable[[], tuple[float, Any]]], reps: int, warmup: int = 1,
    log: Callable[[str], None] | None = None, max_rounds: int | None = None, max_wait_s: float = 20.0,
    cpu_fallback: bool = False,
) -> Runs:
    """Run each variant `warmup` times untimed, then rounds of A, B, C, ... in turn.

    A variant returns `timed(...)`: it times only what it measures (setup such as copying a cache
    stays outside). Before each round it waits (at most `max_wait_s`) for other processes to leave
    the CPU alone. Rounds go on until `reps` of them were quiet throughout, or `max_rounds`
    (default 2 × reps) were run; see `Runs` for what the medians are taken over."""
    max_rounds = max(reps, max_rounds or 2 * reps)
    runs = Runs(list(variants), {n: [] for n in variants}, {n: [] for n in variants}, warmup=warmup, min_quiet=min(3, reps),
                cpu_fallback=cpu_fallback)
    for round_ in range(warmup):
        for name, fn in variants.items():
            s, _ = fn()
            if log:
                log(f"  warmup {name}: {s:.3f}s")
    while runs.rounds() < max_rounds and (runs.rounds() < reps or len(runs.quiet_rounds()) < reps):
        runs.waited_s += wait_for_quiet(max_wait_s)
        for name, fn in variants.items():
            _last.clear()
            s, result = fn()
            sample = _last[0] if _last else Sample(s, float("nan"), None)
            runs.samples[name].append(sample)
            runs.results[name].append(result)
            if log:
                busy = "?" if sample.others_cores is None else f"{sample.others_cores:.2f}"
                log(f"  round {runs.rounds()} {name}: {s:.3f}s (cpu {sample.cpu_s:.2f}s, others {busy} cores)")
    return runs


def rounded(x: Any, digits: int = 4) -> Any:
    """Floats rounded (recursively), for JSON that a person reads."""
    if isinstance(x, float):
        return round(x, digits) if math.isfinite(x) else x
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rounded(v, digits) for v in x]
    return x


# -- a trained model's benchmarks --------------------------------------------------------------


def add_trained_model_args(parser) -> None:
    """--model, --index and --data: a main job's outputs, for benchmarks that run the trained model."""
    parser.add_argument("--model", required=True, help="a trained model directory (the train stage's paths.model)")
    parser.add_argument("--index", required=True, help="its index directory (the index stage's paths.index)")
    parser.add_argument("--data", default="data", help="the `onegen data build` directory")


def load_trained(model_dir: str, index_dir: str):
    """The model, in eval mode, and its index (refused if another model built it)."""
    from components.model.onegen import OneGenModel
    from components.retrieval.index import DocumentIndex

    model = OneGenModel.from_pretrained(model_dir).eval()
    return model, DocumentIndex.load(index_dir, expected_fingerprint=model.fingerprint())


def example_rows(data_dir: str | Path, split: str, sample: int | None = None) -> list[dict]:
    """The rows of `<data_dir>/<split>.jsonl`; a seeded random sample of `sample` of them when there are more."""
    rows = [json.loads(line) for line in Path(data_dir, f"{split}.jsonl").read_text().splitlines()]
    if sample is not None and sample < len(rows):
        import random

        rows = random.Random(0).sample(rows, sample)
    return rows


def questions_and_gold(rows: Sequence[dict]) -> tuple[list[str], list[set[str]]]:
    """Each example row's question (the user's message) and its gold pages (every hop's positives)."""
    return ([r["messages"][0]["content"] for r in rows],
            [{d for ids in r["positives"] for d in ids} for r in rows])


def minilm_vectors(data_dir: str | Path, corpus, questions: Sequence[str]):
    """(question vectors, document vectors) of the MiniLM baseline, the corpus's cached beside the
    data as the evaluate stage caches them."""
    from components.retrieval.minilm import MiniLMRetriever
    from pipelines.stages.evaluate import minilm_corpus

    retriever = MiniLMRetriever()
    docs, _ = minilm_corpus(str(data_dir), corpus, retriever.encode, None)
    return retriever.encode(list(questions)), docs


# -- results -----------------------------------------------------------------------------------


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command that reproduces a run: `python -m <module>` and the arguments it was given."""
    return " ".join([f"python -m {module}", *argv])


def write_result(out_dir: str | Path, result: dict) -> Path:
    """bench/results/<id>.json; the required fields must be there (ratio may be None only for a
    reference row), a ratio must be a finite number, 0 or more (0: the measured side scored nothing)."""
    missing = [k for k in REQUIRED if k not in result]
    if missing:
        raise ValueError(f"result {result.get('id')!r} lacks {missing}")
    ratio = result["ratio"]
    if ratio is not None and not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio >= 0):
        raise ValueError(f"result {result['id']!r}: ratio {ratio!r} is not a finite number >= 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result['id']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rounded(result), indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def load_results(results_dir: str | Path) -> list[dict]:
    results = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            results.append({"id": path.stem, "what": f"unreadable: {err}"})
    return results


# Rows whose JSON was written by another script, with no `what`/`notes` of their own.
KNOWN = {
    "minilm_baseline": {
        "what": "reference: all-MiniLM-L6-v2 retrieval of the gold page for the 558 in-corpus FanOutQA dev sub-questions, 10,033 vital articles",
        "notes": "`bench/minilm_baseline.py`: MiniLM embeds every article as \"title: description\" and each "
        "leaf sub-question; exact dot-product ranking over the whole corpus, ties count against the gold "
        "page. A quality reference for in-stream retrieval to beat, not a ratio: it has no goal.",
    },
}
ORDER = ["p1_in_stream_overhead", "p2_vs_pipeline_same_size", "p3_vs_pipeline_minilm", "p4_decode_vs_hf_generate",
         "p4_decode_vs_hf_generate_1_thread", "p11_vs_llama_cpp", "decode_step_profile", "decode_compile",
         "p5_batch_8_vs_1", "p5_http_batch_8_vs_1", "p10_open_loop", "continuous_batch", "p9_http_vs_in_process", "serve_latency",
         "gritlm_caching", "minilm_baseline"]


def _ratio_cell(r: dict) -> str:
    if r.get("ratio") is not None:
        return f"{r['ratio']:.3f}"
    recalls = [(k, r[k]) for k in ("recall@1", "recall@5", "recall@10") if k in r]
    if recalls:
        return "— (" + ", ".join(f"R@{k.split('@')[1]} {v:.3f}" for k, v in recalls) + ")"
    return "—"


def _met_cell(r: dict) -> str:
    met = r.get("met")
    return "—" if met is None else ("yes" if met else "**no**")


def _cell(text: Any) -> str:
    return str(text if text is not None else "—").replace("|", "\\|").replace("\n", " ")


def render_results_md(results: list[dict]) -> str:
    def place(r: dict) -> tuple[float, str]:  # the known ids in ORDER, others before the reference rows
        return (ORDER.index(r["id"]) if r.get("id") in ORDER else ORDER.index("minilm_baseline") - 0.5, str(r.get("id")))

    results = sorted(results, key=place)
    lines = [
        "# Benchmark results",
        "",
        "Regenerated from every JSON file in `bench/results/` by `python -m bench.report` (and by "
        "every benchmark after it writes its results); do not edit by hand. A ratio is always against a baseline timed in "
        "the same process or the same run, repetitions interleaved (A, B, A, B, …), medians taken; the raw "
        "numbers are in each JSON file. The machines are shared: every timed call also records its CPU time "
        "and how many cores other processes kept busy meanwhile; rounds go on until enough are *quiet* "
        f"(others < {QUIET_CORES} cores during every call of the round) or a round limit is reached, each "
        "round waiting a few seconds for a quiet machine first. The medians use wall time over the quiet "
        "rounds when there are at least 3; otherwise, for single-threaded runs, this process's CPU time "
        "over all rounds (the work done, which other processes' load does not stretch the way it stretches "
        "wall time); otherwise wall time over all rounds. Each JSON names its `basis` and gives the ratio "
        "on the other bases as cross-checks. A run may pin torch to one thread (`--threads 1`, shown in the "
        "device column): on a shared 2-core machine a 2-thread process stalls at every OpenMP barrier while "
        "another process holds a core (a 49k-float `clone()` measured 3.9 ms instead of 14 µs), which swamps "
        "what is being measured.",
        "",
        "| id | what it measures | ratio | goal | met | device | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        known = KNOWN.get(r.get("id"), {})
        lines.append(
            "| " + " | ".join([
                f"`{r.get('id')}`",
                _cell(r.get("what") or known.get("what")),
                _ratio_cell(r),
                _cell(r.get("goal")),
                _met_cell(r),
                _cell(r.get("device")),
                f"`{_cell(r.get('command'))}`" if r.get("command") else "—",
            ]) + " |"
        )
    lines += ["", "## How measured / limits", ""]
    for r in results:
        known = KNOWN.get(r.get("id"), {})
        notes = r.get("notes") or known.get("notes") or ""
        lines += [f"**`{r.get('id')}`**: {notes}".rstrip(), ""]
        for extra in r.get("details_md", []):
            lines.append(f"- {extra}")
        if r.get("details_md"):
            lines.append("")
    for r in results:  # a result may carry a section of its own (a breakdown that is no ratio)
        if r.get("section_md"):
            lines += [f"## {r['section_md']['title']}", "", *r["section_md"]["lines"], ""]
    return "\n".join(lines).rstrip() + "\n"


def write_results_md(results_dir: str | Path, path: str | Path | None = None) -> Path:
    """Render RESULTS.md from all JSON files in `results_dir` (default: beside it)."""
    results_dir = Path(results_dir)
    path = Path(path) if path is not None else results_dir.parent / "RESULTS.md"
    path.write_text(render_results_md(load_results(results_dir)))
    return path
