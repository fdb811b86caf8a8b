"""Cross-worker negatives give the gradient of the global batch: two gloo processes, each with its own
small batch, run one step of the real training loop with `all_gather`; their gradients, averaged
as DDP and DeepSpeed do, must equal the gradient of one process's loss over both batches together.

The model is two shared linear maps standing in for the LM: one makes the query vectors, one the
document vectors, so that both sides' parameter gradients are checked. The same holds for the losses
balanced by their own RMS (`PerLossRMS`), which must average the workers' gradients first."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from components.config import LossConfig
from components.data.collate import PAD_KEY, Batch
from components.model.onegen import Output

H = 8
EMPTY = torch.zeros((0, 0), dtype=torch.long)
CASES = [LossConfig(kind=kind, in_batch_negatives=ib, temperature=0.2) for kind in ("infonce", "bpr") for ib in (True, False)]
# Each loss's gradient balanced by its own RMS: the workers' gradients must be averaged *before*
# they are normalised, or each worker normalises its partial gradient of the global batch.
BALANCED = LossConfig(temperature=0.2, balance="per_loss_rms")

# Per worker: document keys, and per query (target index, acceptable positive keys, hard negative
# indices), indices local to the worker. Widths differ between the workers (padding); rank 0's
# first query also accepts key 105, a document only rank 1 has (it must not be that query's
# negative), and rank 1 holds its own copy of page 100.
SHARDS = [
    {"keys": [100, 101, 102, 103],
     "queries": [(0, [100, 105], [1, 2]), (1, [101], [3]), (2, [102], [0])]},
    {"keys": [104, 105, 106, 100],
     "queries": [(0, [104], [1]), (1, [105], [3])]},
]  # fmt: skip


def scoring_batch(keys: list[int], queries: list[tuple]) -> Batch:
    """A Batch with only the fields the retrieval loss reads."""
    width = max(len(q[1]) for q in queries)
    negatives = max(len(q[2]) for q in queries)
    return Batch(
        input_ids=EMPTY, attention_mask=EMPTY, labels=EMPTY,
        query_rows=torch.zeros(len(queries), dtype=torch.long), query_cols=torch.zeros(len(queries), dtype=torch.long),
        doc_input_ids=EMPTY, doc_attention_mask=EMPTY, doc_last=torch.zeros(len(keys), dtype=torch.long),
        doc_keys=torch.tensor(keys),
        positive=torch.tensor([q[0] for q in queries]),
        positive_keys=torch.tensor([q[1] + [PAD_KEY] * (width - len(q[1])) for q in queries]),
        hard_negatives=torch.tensor([q[2] + [-1] * (negatives - len(q[2])) for q in queries]),
    )


def concatenated() -> Batch:
    """Both shards as one batch: the second's document indices shifted past the first's documents."""
    first = len(SHARDS[0]["keys"])
    queries = SHARDS[0]["queries"] + [(t + first, k, [n + first for n in h]) for t, k, h in SHARDS[1]["queries"]]
    return scoring_batch(SHARDS[0]["keys"] + SHARDS[1]["keys"], queries)


def features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Input features of every query and every document, both shards, in rank order."""
    g = torch.Generator().manual_seed(seed)
    n_queries = sum(len(s["queries"]) for s in SHARDS)
    n_docs = sum(len(s["keys"]) for s in SHARDS)
    return torch.randn(n_queries, H, generator=g), torch.randn(n_docs, H, generator=g)


class TwoTowers(nn.Module):
    """Shared weights (the same on every worker, as under DDP), each worker's own inputs."""

    def __init__(self, query_features: torch.Tensor, doc_features: torch.Tensor):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.query_side = nn.Parameter(torch.randn(H, H, generator=g))
        self.doc_side = nn.Parameter(torch.randn(H, H, generator=g))
        self.query_features, self.doc_features = query_features, doc_features

    def forward(self, batch: Batch) -> Output:
        queries = F.normalize(self.query_features @ self.query_side, dim=-1)
        docs = F.normalize(self.doc_features @ self.doc_side, dim=-1)
        return Output(self.query_side.sum() * 0.0, 0, self.query_side.sum() * 0.0, queries, docs)


class AverageLikeDDP:
    """An `Update` that backpropagates, then averages every gradient over the workers (as DDP and
    DeepSpeed do), and keeps them for the test instead of stepping."""

    lr = 0.0

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, loss: torch.Tensor) -> None:
        import torch.distributed as dist

        loss.backward()
        for p in self.model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def rows_of(rank: int) -> tuple[slice, slice]:
    q0 = sum(len(s["queries"]) for s in SHARDS[:rank])
    d0 = sum(len(s["keys"]) for s in SHARDS[:rank])
    return slice(q0, q0 + len(SHARDS[rank]["queries"])), slice(d0, d0 + len(SHARDS[rank]["keys"]))


def _worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    import torch.distributed as dist

    from components.model.balance import PerLossRMS
    from components.model.gather import all_gather, all_reduce_mean
    from components.model.train_loop import train

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    query_features, doc_features = features()
    queries, docs = rows_of(rank)
    batch = scoring_batch(**SHARDS[rank])
    results = []
    for cfg in CASES + [BALANCED]:
        model = TwoTowers(query_features[queries], doc_features[docs])
        balance = PerLossRMS(model.parameters(), reduce=all_reduce_mean)
        result = train(model, AverageLikeDDP(model), [batch], cfg, max_steps=1, gather=all_gather, balance=balance)
        results.append({"ret_loss": result.steps[0].ret_loss, "query_side": model.query_side.grad,
                        "doc_side": model.doc_side.grad, "documents_scored": result.steps[0].documents_scored})
    torch.save(results, f"{result_file}.{rank}")
    dist.destroy_process_group()


def reference(cfg: LossConfig) -> dict:
    """One process, both batches together: the global objective."""
    from components.model.losses import retrieval_loss

    model = TwoTowers(*features())
    out = model(concatenated())
    loss = retrieval_loss(out.query_vectors, out.doc_vectors, concatenated(), cfg)
    loss.backward()
    return {"ret_loss": loss.item(), "query_side": model.query_side.grad, "doc_side": model.doc_side.grad}


def balanced_reference() -> dict:
    """The balanced gradient of the global batch: its retrieval gradient normalised (the stand-in's
    next-token loss is 0), in one process."""
    from components.model.balance import PerLossRMS
    from components.model.losses import retrieval_loss

    model = TwoTowers(*features())
    out = model(concatenated())
    loss = retrieval_loss(out.query_vectors, out.doc_vectors, concatenated(), BALANCED)
    PerLossRMS(model.parameters()).surrogate([out.lm_loss, loss]).backward()
    return {"ret_loss": loss.item(), "query_side": model.query_side.grad, "doc_side": model.doc_side.grad}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.timeout(120)
def test_averaged_gradients_of_two_workers_equal_the_gradient_of_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "result")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"result.{rank}") for rank in range(2)]
    for case, cfg in enumerate(CASES + [BALANCED]):
        want = reference(cfg) if cfg is not BALANCED else balanced_reference()
        for rank, results in enumerate(ranks):
            got = results[case]
            errors = {side: relative_error(got[side], want[side]) for side in ("query_side", "doc_side")}
            print(f"{cfg.kind} in_batch_negatives={cfg.in_batch_negatives} rank {rank}: relative error {errors}")
            assert max(errors.values()) < 1e-5, (cfg, rank, errors)
            assert got["ret_loss"] == pytest.approx(want["ret_loss"], rel=1e-6)  # the global mean is what is logged
            assert got["documents_scored"] == 8
