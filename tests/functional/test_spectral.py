"""Per-gate spectral norms: power iteration against svdvals, block slicing, module discovery."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_rnn.functional.spectral import (
    GATE_BLOCKS,
    find_recurrent_weights,
    gate_blocks,
    power_iteration,
    recurrent_spectral_norms,
    spectral_norm_exact,
)
from lightning_rnn.nn.rnn import RNNStack


def _with_singular_values(s: torch.Tensor, cols: int | None = None, seed: int = 0) -> torch.Tensor:
    """U diag(s) Vᵀ with random orthogonal U, V (rows = len(s))."""
    g = torch.Generator().manual_seed(seed)
    m = s.numel()
    k = cols or m
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    d = torch.zeros(m, k, dtype=torch.float64)
    d[range(min(m, k)), range(min(m, k))] = s[: min(m, k)]
    return u @ d @ v.T


@pytest.mark.parametrize("shape", [(32, 32), (48, 16), (3, 24, 24)])
def test_power_iteration_matches_svdvals_on_random_matrices(shape):
    w = torch.randn(*shape, dtype=torch.float64)
    sigma, v = None, None
    for _ in range(300):  # warm-started calls of 2 iterations each
        sigma, v = power_iteration(w, v, num_iters=2)
    exact = torch.linalg.svdvals(w)[..., 0]
    torch.testing.assert_close(sigma, exact, rtol=1e-3, atol=0)
    assert bool((sigma <= exact * (1 + 1e-9)).all())  # converges from below


def test_power_iteration_known_singular_values_and_lower_bound():
    s = torch.tensor([2.5, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    w = _with_singular_values(s, cols=7)
    prev, v = 0.0, None
    for _ in range(40):
        sigma, v = power_iteration(w, v, num_iters=1)
        assert float(sigma) >= prev - 1e-12  # monotone from below
        assert float(sigma) <= 2.5 + 1e-9
        prev = float(sigma)
    assert abs(float(sigma) - 2.5) / 2.5 < 1e-3
    torch.testing.assert_close(spectral_norm_exact(w), torch.tensor(2.5, dtype=torch.float64))


def test_power_iteration_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    power_iteration(torch.randn(5, 5, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(torch.rand(3), expected)


def test_power_iteration_bad_input():
    with pytest.raises(ValueError, match="num_iters"):
        power_iteration(torch.eye(3), num_iters=0)
    with pytest.raises(ValueError, match="Expected v of shape"):
        power_iteration(torch.eye(3), torch.ones(4))


def _blocky_weight(cell: str, hidden: int, norms: list[float]) -> torch.Tensor:
    blocks = [_with_singular_values(torch.linspace(n, n / 10, hidden, dtype=torch.float64), seed=i)
              for i, n in enumerate(norms)]
    return torch.cat(blocks, 0).float()


@pytest.mark.parametrize("cell,norms", [("lstm", [0.5, 1.5, 3.0, 7.0]), ("gru", [4.0, 0.3, 2.2]), ("rnn_tanh", [1.7])])
@pytest.mark.parametrize("exact", [True, False])
def test_blocks_sliced_in_torch_gate_order(cell, norms, exact):
    hidden = 6
    torch_cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}[cell]
    rnn = torch_cls(3, hidden, num_layers=2)
    with torch.no_grad():
        rnn.weight_hh_l1.copy_(_blocky_weight(cell, hidden, norms))
    state: dict = {}
    res = recurrent_spectral_norms(rnn, exact=exact, state=None if exact else state, warmup_iters=500)
    got = {r.key: r for r in res}
    names = [b for b, _ in GATE_BLOCKS[cell]]
    assert [r.key for r in res] == [f"l{k}/{b}" for k in (0, 1) for b in names]
    for (block, gamma), norm in zip(GATE_BLOCKS[cell], norms):
        entry = got[f"l1/{block}"]
        assert entry.sigma == pytest.approx(norm, rel=1e-3)
        assert entry.gamma == gamma
        assert entry.bound_ratio == pytest.approx(norm * gamma, rel=1e-3)
    # layer 0 against svdvals of torch's own slicing of the gates
    gates = rnn.weight_hh_l0.detach().chunk(len(names), 0)
    for block, g in zip(names, gates):
        assert got[f"l0/{block}"].sigma == pytest.approx(float(torch.linalg.svdvals(g)[0]), rel=1e-3)
    if not exact:
        assert set(state) == {"l0", "l1"}


def test_gamma_values():
    assert dict(GATE_BLOCKS["lstm"]) == {"i": 0.25, "f": 0.25, "g": 1.0, "o": 0.25}
    assert dict(GATE_BLOCKS["gru"]) == {"r": 0.25, "z": 0.25, "n": 1.0}
    assert dict(GATE_BLOCKS["rnn_tanh"]) == {"h": 1.0}
    assert dict(GATE_BLOCKS["rnn_relu"]) == {"h": 1.0}


def test_find_recurrent_weights_walks_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.GRU(4, 5, bidirectional=True)
            self.stack = RNNStack("lstm", 10, 6, num_layers=2)
            self.cell = nn.RNNCell(3, 7, nonlinearity="relu")
            self.head = nn.Linear(6, 2)

    net = Net()
    found = [(w.name, w.cell, tuple(w.weight.shape)) for w in find_recurrent_weights(net)]
    assert found == [
        ("enc.l0", "gru", (15, 5)), ("enc.l0_reverse", "gru", (15, 5)),
        ("stack.l0", "lstm", (24, 6)), ("stack.l1", "lstm", (24, 6)),
        ("cell", "rnn_relu", (7, 7)),
    ]
    assert find_recurrent_weights(net)[2].weight is net.stack.weight_hh_l0
    assert [w.name for w in find_recurrent_weights(net, modules=["stack"])] == ["stack.l0", "stack.l1"]
    with pytest.raises(ValueError, match="recurrent module"):
        find_recurrent_weights(net, modules=["head"])
    with pytest.raises(ValueError, match="module path"):
        find_recurrent_weights(net, modules=["nope"])
    assert find_recurrent_weights(nn.Linear(2, 2)) == []


def test_rnnstack_matches_torch_module_with_same_weights():
    stack = RNNStack("gru", 4, 5, num_layers=2)
    ref = nn.GRU(4, 5, num_layers=2)
    ref.load_state_dict(stack.state_dict())
    a = recurrent_spectral_norms(stack, exact=True)
    b = recurrent_spectral_norms(ref, exact=True)
    assert [(x.key, x.sigma) for x in a] == [(x.key, x.sigma) for x in b]


def test_gate_blocks_bad_input():
    with pytest.raises(ValueError, match="Expected cell in"):
        gate_blocks(torch.zeros(8, 2), "transformer")
    with pytest.raises(ValueError, match="divisible by 4"):
        gate_blocks(torch.zeros(6, 2), "lstm")


def _svd_reference(weight: torch.Tensor, gates: int) -> list[float]:
    """σ_max of each gate block by a full SVD of the row slice (an independent slicing)."""
    h = weight.shape[0] // gates
    return [float(torch.linalg.svdvals(weight.detach()[g * h : (g + 1) * h])[0]) for g in range(gates)]


@pytest.mark.parametrize("module,kind,gates", [
    (nn.RNN(3, 5, num_layers=2, bidirectional=True, nonlinearity="relu"), "rnn_relu", 1),
    (nn.RNN(3, 5, num_layers=3), "rnn_tanh", 1),
    (nn.LSTM(3, 5, num_layers=2, bidirectional=True), "lstm", 4),
    (nn.LSTM(3, 6, num_layers=2, proj_size=4), "lstm", 4),
    (nn.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True), "gru", 3),
    (RNNStack("lstm", 3, 5, num_layers=2, bidirectional=True), "lstm", 4),
    (RNNStack("gru", 3, 5, num_layers=3), "gru", 3),
    (RNNStack("rnn", 3, 5, num_layers=2, bidirectional=True), "rnn_tanh", 1),
])
def test_every_layer_and_direction_against_svdvals(module, kind, gates):
    torch.manual_seed(0)
    layers = module.num_layers
    directions = 2 if module.bidirectional else 1
    names = [f"l{k}{'_reverse' if d else ''}" for k in range(layers) for d in range(directions)]
    found = find_recurrent_weights(module)
    assert [w.name for w in found] == names and {w.cell for w in found} == {kind}
    for exact in (True, False):
        norms = recurrent_spectral_norms(found, exact=exact, warmup_iters=500)
        assert len(norms) == len(names) * gates
        for i, name in enumerate(names):
            weight = getattr(module, f"weight_hh_{name}")
            expected = _svd_reference(weight, gates)
            got = [n.sigma for n in norms[i * gates : (i + 1) * gates]]
            assert [n.layer for n in norms[i * gates : (i + 1) * gates]] == [name] * gates
            torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-4 if exact else 1e-3, atol=0)
            assert [n.block for n in norms[i * gates : (i + 1) * gates]] == [b for b, _ in GATE_BLOCKS[kind]]


class _UserCell(nn.Module):
    """A user's own recurrent cell: h_t = tanh(W h_{t-1} + U x_t), found through recurrent_weights()."""

    def __init__(self, hidden: int = 6, gates: object = None) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(hidden, hidden))
        self.U = nn.Linear(3, hidden)
        if gates is not None:
            self.recurrent_gates = gates

    def recurrent_weights(self) -> dict[str, torch.Tensor]:
        return {"W": self.W}


class _UserGatedCell(nn.Module):
    """Two stacked gate blocks, a sigmoid gate and a tanh candidate, named through recurrent_gates."""

    recurrent_gates = (("gate", 0.25), ("cand", 1.0))

    def __init__(self, hidden: int = 5) -> None:
        super().__init__()
        self.w_hh = nn.Parameter(torch.randn(2 * hidden, hidden))
        self.w_hh2 = nn.Parameter(torch.randn(2 * hidden, hidden))

    def recurrent_weights(self) -> dict[str, torch.Tensor]:
        return {"first": self.w_hh, "weight_hh_l1": self.w_hh2}


def test_user_cell_through_the_protocol_against_svdvals():
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 3)
            self.cell = _UserCell()
            self.gated = _UserGatedCell()

    model = Model()
    found = find_recurrent_weights(model)
    assert [(w.name, w.cell) for w in found] == [("cell.W", "rnn_tanh"), ("gated.first", "custom"),
                                                ("gated.l1", "custom")]
    norms = recurrent_spectral_norms(model, exact=True)
    assert [(n.key, n.gamma) for n in norms] == [
        ("cell.W/h", 1.0), ("gated.first/gate", 0.25), ("gated.first/cand", 1.0),
        ("gated.l1/gate", 0.25), ("gated.l1/cand", 1.0),
    ]
    expected = (_svd_reference(model.cell.W, 1) + _svd_reference(model.gated.w_hh, 2)
                + _svd_reference(model.gated.w_hh2, 2))
    torch.testing.assert_close(torch.tensor([n.sigma for n in norms]), torch.tensor(expected), rtol=1e-5, atol=0)
    # a cell that names a torch gate layout
    lstm_like = _UserCell(hidden=3, gates="lstm")
    lstm_like.W = nn.Parameter(torch.randn(12, 3))
    norms = recurrent_spectral_norms(lstm_like, exact=True)
    assert [n.key for n in norms] == ["W/i", "W/f", "W/g", "W/o"]
    torch.testing.assert_close(torch.tensor([n.sigma for n in norms]), torch.tensor(_svd_reference(lstm_like.W, 4)))


def test_user_cell_protocol_bad_input():
    with pytest.raises(ValueError, match=r"recurrent_gates in"):
        find_recurrent_weights(_UserCell(gates="transformer"))
    with pytest.raises(ValueError, match=r"recurrent_gates in"):
        find_recurrent_weights(_UserCell(gates=()))
    bad = _UserCell(hidden=5, gates="gru")  # 5 rows are not 3 gate blocks
    with pytest.raises(ValueError, match=r"recurrent_weights\(\)\['W'\] to be a 2-D Tensor .* G = 3"):
        find_recurrent_weights(bad)

    class Empty(nn.Module):
        def recurrent_weights(self):
            return {}

    with pytest.raises(ValueError, match="non-empty dict"):
        find_recurrent_weights(Empty())
