import math

import pytest
import torch
import torch.nn.functional as F

from components import tokens as st
from components.config import LossConfig
from components.data.collate import PAD_KEY, Batch, Collator
from components.model.losses import bpr, joint_loss, retrieval_loss
from tests.conftest import make_example

EMPTY = torch.zeros((0, 0), dtype=torch.long)


def scoring_batch(doc_keys, positive, positive_keys, hard_negatives=None) -> Batch:
    """A Batch with only the fields the retrieval loss reads."""
    q = len(positive)
    return Batch(
        input_ids=EMPTY, attention_mask=EMPTY, labels=EMPTY, query_rows=torch.zeros(q, dtype=torch.long),
        query_cols=torch.zeros(q, dtype=torch.long), doc_input_ids=EMPTY, doc_attention_mask=EMPTY,
        doc_last=torch.zeros(len(doc_keys), dtype=torch.long), doc_keys=torch.tensor(doc_keys),
        positive=torch.tensor(positive), positive_keys=torch.tensor(positive_keys),
        hard_negatives=torch.tensor(hard_negatives if hard_negatives is not None else [[-1]] * q),
    )


def test_bpr_on_a_hand_computed_case():
    queries = torch.tensor([[1.0, 0.0]])
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # scores 1, 0, 0.6
    loss = bpr(queries @ docs.T, torch.tensor([0]), torch.zeros(1, 3, dtype=torch.bool))
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(-0.4))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_equals_cross_entropy_on_the_explicit_similarity_matrix():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(4, 8), dim=-1)
    d = F.normalize(torch.randn(6, 8), dim=-1)
    target = torch.tensor([0, 2, 5, 1])
    batch = scoring_batch(doc_keys=list(range(100, 106)), positive=target.tolist(), positive_keys=[[100 + t] for t in target.tolist()])
    loss = retrieval_loss(q, d, batch, LossConfig(kind="infonce", temperature=0.1))
    explicit = torch.stack([torch.stack([q[i] @ d[j] for j in range(6)]) for i in range(4)])
    torch.testing.assert_close(loss, F.cross_entropy(explicit / 0.1, target))


def test_other_acceptable_positives_are_not_counted_as_negatives():
    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # doc 1 is another acceptable page for the query: only doc 2 is a negative
    batch = scoring_batch([10, 11, 12], positive=[0], positive_keys=[[10, 11]])
    loss = retrieval_loss(q, d, batch, LossConfig(temperature=1.0))
    torch.testing.assert_close(loss, F.cross_entropy(torch.tensor([[1.0, 0.0]]), torch.tensor([0])))
    ungated = retrieval_loss(q, d, scoring_batch([10, 11, 12], [0], [[10, PAD_KEY]]), LossConfig(temperature=1.0))
    assert ungated > loss


def test_without_in_batch_negatives_only_hard_negatives_count():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    batch = scoring_batch([1, 2, 3], positive=[0, 1], positive_keys=[[1], [2]], hard_negatives=[[2], [-1]])
    loss = retrieval_loss(q, d, batch, LossConfig(kind="bpr", in_batch_negatives=False))
    # query 0: one term against doc 2; query 1 has no negatives at all
    torch.testing.assert_close(loss, -F.logsigmoid(torch.tensor(1.0 - 0.6)))


def test_the_papers_bpr_pairs_each_query_with_its_own_hard_negatives_only():
    """OneGen's `bpr_loss`: the mean over (query, own hard negative) pairs of -log σ(s⁺ − s⁻), cosine
    scores, no temperature; the other queries' documents are not negatives."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]])
    # query 0: positive doc 0 (score 1), hard negatives docs 2, 3 (scores 0.6, 0.8)
    # query 1: positive doc 1 (score 1), hard negatives docs 3, 4 (scores 0.6, 0.0)
    batch = scoring_batch([10, 11, 12, 13, 14], positive=[0, 1], positive_keys=[[10], [11]], hard_negatives=[[2, 3], [3, 4]])
    paper = LossConfig(kind="bpr", in_batch_negatives=False)
    softplus = lambda x: math.log(1 + math.exp(-x))  # -log σ(x)  # noqa: E731
    by_hand = (softplus(1 - 0.6) + softplus(1 - 0.8) + softplus(1 - 0.6) + softplus(1 - 0.0)) / 4
    assert retrieval_loss(q, d, batch, paper).item() == pytest.approx(by_hand, abs=1e-6)
    # with in-batch negatives, query 0 also meets docs 1 and 4, query 1 docs 0 and 2
    in_batch = (softplus(1 - 0.6) + softplus(1 - 0.8) + softplus(1 - 0.0) + softplus(1 + 1.0)
                + softplus(1 - 0.6) + softplus(1 - 0.0) + softplus(1 - 0.0) + softplus(1 - 0.8)) / 8
    assert retrieval_loss(q, d, batch, LossConfig(kind="bpr")).item() == pytest.approx(in_batch, abs=1e-6)


def test_joint_loss_weights():
    assert joint_loss(torch.tensor(2.0), torch.tensor(3.0), LossConfig(lambda_gen=0.5, lambda_ret=2.0)).item() == 7.0


def test_gradients_reach_the_ret_positions_and_the_new_token_rows(tiny_model, small_corpus):
    rows = [tiny_model.formatter.example(make_example("Who?[RQ] Ada.", [["ada"]], [["paris"]]), small_corpus, 512)]
    batch = Collator(tiny_model.formatter.pad_id)(rows)
    out = tiny_model(batch)
    retrieval_loss(out.query_vectors, out.doc_vectors, batch, LossConfig()).backward()
    grad = tiny_model.hf.get_input_embeddings().weight.grad
    ids = st.token_ids(tiny_model.tokenizer)
    assert grad[ids[st.QUERY]].abs().sum() > 0 and grad[ids[st.DOCUMENT]].abs().sum() > 0
    assert grad[ids[st.ENTITY]].abs().sum() == 0  # a token that is not in the batch gets nothing


def _worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    import torch.distributed as dist

    from components.model.gather import all_gather

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    q_all = F.normalize(torch.randn(4, 8), dim=-1)
    d_all = F.normalize(torch.randn(5, 8), dim=-1)
    sizes = [(2, 3), (2, 2)]  # (queries, docs) per worker: uneven on purpose
    q0 = sum(s[0] for s in sizes[:rank])
    d0 = sum(s[1] for s in sizes[:rank])
    q = q_all[q0 : q0 + sizes[rank][0]].clone()
    d = d_all[d0 : d0 + sizes[rank][1]].clone().requires_grad_(True)
    batch = scoring_batch(list(range(d0, d0 + sizes[rank][1])), positive=[0, 1], positive_keys=[[d0], [d0 + 1]])
    loss = retrieval_loss(q, d, batch, LossConfig(temperature=0.2), gather=all_gather)
    loss.backward()
    # Every worker computes the loss of the global batch: both workers' queries against all documents.
    expected = F.cross_entropy((q_all @ d_all.T) / 0.2, torch.tensor([0, 1, 3, 4]))
    torch.save({"loss": loss.detach(), "expected": expected, "grad_nonzero": bool(d.grad.abs().sum() > 0)}, f"{result_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_cross_worker_negatives_through_all_gather(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "result")), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"result.{rank}")
        torch.testing.assert_close(result["loss"], result["expected"])  # all 4 queries against all 5 documents
        assert result["grad_nonzero"]
