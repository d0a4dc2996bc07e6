"""State layout contract: row resets act on the batch dim of tensor, tuple and dict states, batch-first or not."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_rnn import TBPTTModule, TBPTTStep

from ._tbptt_models import SeqRegressor, trainer


class CellModel(TBPTTModule):
    """A user cell with a batch-first state (N, H): nn.GRUCell stepped by hand."""

    def __init__(self, hidden: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.cell = nn.GRUCell(3, hidden)
        self.head = nn.Linear(hidden, 1)
        self.seen: list = []

    def tbptt_step(self, chunk, state):
        x, y = chunk["x"], chunk["y"]  # (N, L, 3), (N, L, 1)
        if self.training:
            self.seen.append(None if state is None else state.clone())
        h = state
        outs = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)  # (N, H)
            outs.append(h)
        return TBPTTStep(F.mse_loss(self.head(torch.stack(outs, 1)), y), h)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _stream(n: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 3, generator=g)
    y = torch.randn(n, 3, 1, generator=g)
    return torch.utils.data.DataLoader(
        [
            {"x": x, "y": y, "reset": torch.zeros(n, dtype=torch.bool)},
            {"x": x, "y": y, "reset": torch.tensor([True] + [False] * (n - 1))},
        ],
        batch_size=None,
    )


def test_batch_first_state_with_n_equal_h_is_never_guessed():
    # N == H == 4: dim 0 and dim 1 both have the batch size; resetting "dim 1" would zero hidden unit 0
    with pytest.raises(ValueError, match=r"Cannot tell the batch dim of the state tensor state.*state_batch_dim"):
        trainer().fit(CellModel(hidden=4, carry_state=True), _stream(4))


@pytest.mark.parametrize("n,hidden,declared", [(4, 4, 0), (3, 5, None), (3, 5, 0)])
def test_batch_first_state_resets_rows(n, hidden, declared):
    model = CellModel(hidden=hidden, carry_state=True, state_batch_dim=declared)
    trainer().fit(model, _stream(n))
    first, second = model.seen  # the state entering batch 1 (None) and batch 2 (carried, row 0 reset)
    assert first is None
    assert torch.all(second[0] == 0)  # row 0 reset
    assert torch.all(second[1:] != 0)  # other rows kept, hidden unit 0 included


def test_declared_dims_for_dict_and_tuple_states():
    model = SeqRegressor(state_batch_dim={"rnn": 1, "memory": 0, "count": 0})
    state = {"rnn": (torch.ones(2, 3, 5), torch.ones(2, 3, 5)), "memory": torch.ones(3, 7, 5), "count": torch.ones(3)}
    assert model.state_batch_dims(state, rows=3) == [1, 1, 0, 0]
    out = model.reset_state_rows(state, torch.tensor([False, True, False]))
    assert torch.all(out["rnn"][0][:, 1] == 0) and torch.all(out["rnn"][0][:, [0, 2]] == 1)
    assert torch.all(out["memory"][1] == 0) and torch.all(out["memory"][[0, 2]] == 1)
    assert out["count"].tolist() == [1, 0, 1]
    kept = model.keep_state_rows(out, state, torch.tensor([False, True, False]))  # freeze row 1 at the old state
    assert all(torch.equal(a, b) for a, b in zip(kept["rnn"], state["rnn"])) and torch.equal(kept["memory"], state["memory"])


def test_default_layout_is_torchs_and_batch_first_3d_must_be_declared():
    model = SeqRegressor()
    assert model.state_batch_dims((torch.zeros(2, 3, 5), torch.zeros(2, 3, 5)), rows=3) == [1, 1]
    assert model.state_batch_dims({"h": torch.zeros(3, 5), "n": torch.zeros(3)}, rows=3) == [0, 0]
    with pytest.raises(ValueError, match=r"\(D\*num_layers, N, H\).*state_batch_dim"):
        model.state_batch_dims(torch.zeros(3, 7, 5), rows=3)  # batch-first memory (N, S, H)
    with pytest.raises(ValueError, match="declared state_batch_dim 0"):
        SeqRegressor(state_batch_dim=0).state_batch_dims(torch.zeros(2, 3, 5), rows=3)
    with pytest.raises(TypeError, match="state_batch_dim"):
        SeqRegressor(state_batch_dim="first")
