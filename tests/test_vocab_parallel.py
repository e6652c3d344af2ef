"""The vocabulary-split embedding at each rank's boundary ids: every rank's share, summed as the all-reduce
sums them, is the whole embedding's row, and a rank contributes exact zeros for every id it does not hold.
The ranks run in this process (the all-reduce stands in as the sum of their outputs)."""
from types import SimpleNamespace

import pytest
import torch

from gpt_oss_triton.model import PRESETS
from gpt_oss_triton.model.parallel.modules import VocabParallelEmbedding
from gpt_oss_triton.model.parallel.plan import ShardPlan

LOCAL = SimpleNamespace(all_reduce_=lambda y: y)  # each rank's output before the all-reduce


@pytest.mark.parametrize("ranks", [2, 4])
def test_each_rank_embeds_exactly_its_rows(ranks):
    config = PRESETS["tiny"]
    V, H = config.vocab_size, config.hidden_size
    weight = torch.randn(V, H, generator=torch.Generator().manual_seed(ranks)) + 3.0  # no row is near zero
    shares = [ShardPlan(config, r, ranks).vocab for r in range(ranks)]
    assert shares[0][0] == 0 and shares[-1][1] == V
    edges = sorted({i for v0, v1 in shares for i in (v0 - 1, v0, v0 + 1, v1 - 1, v1) if 0 <= i < V})
    tokens = torch.tensor([edges, edges[::-1]])
    total = torch.zeros(*tokens.shape, H)
    for v0, v1 in shares:
        emb = VocabParallelEmbedding(v1 - v0, H, v0, LOCAL, torch.float32)
        emb.weight.data.copy_(weight[v0:v1])
        out = emb(tokens)
        inside = (tokens >= v0) & (tokens < v1)
        assert torch.equal(out[inside], weight[tokens[inside]]), (v0, v1)
        assert (out[~inside] == 0).all(), (v0, v1)
        total += out
    assert torch.equal(total, weight[tokens])
