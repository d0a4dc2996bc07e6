"""Top singular values of recurrent weight matrices, per gate block.

Pascanu, Mikolov & Bengio (2013): the per-step Jacobian of a recurrent net is ``W_hhᵀ·diag(σ′(·))`` and
``‖diag σ′‖ ≤ γ`` (γ = 1 for tanh and relu, γ = 1/4 for the logistic sigmoid). A largest singular value
``σ_max`` of the recurrent matrix below ``1/γ`` is *sufficient* for gradients to vanish geometrically with
the lag; above ``1/γ`` is *necessary* for them to explode. The *bound ratio* ``σ_max·γ`` reads directly:
``> 1`` can explode, ``< 1`` must vanish.

LSTM and GRU stack their gate blocks in one ``weight_hh`` (LSTM ``4H×H`` in the order i, f, g, o;
GRU ``3H×H`` in the order r, z, n), and the whole-matrix norm only lies between the largest block norm and
the root of the sum of their squares, so everything here works per block.

Recurrent layers are found in a model by :func:`find_recurrent_weights`: ``torch.nn.RNN/LSTM/GRU`` (every
layer and direction) and their ``*Cell`` modules, :class:`~lightning_rnn.nn.RNNStack`, and any module of
yours that follows a two-member protocol:

* ``recurrent_weights() -> dict[str, Tensor]``: the hidden-to-hidden matrices, each ``(G*H, H_in)`` with
  its G gate blocks stacked along the rows (``{"W": self.W}`` for a plain cell);
* optionally ``recurrent_gates``: the gate layout — a key of :data:`GATE_BLOCKS` (``"lstm"``, ``"gru"``,
  ``"rnn_tanh"``, ``"rnn_relu"``) or a sequence of ``(gate name, γ)`` pairs in row order; default one
  block ``"h"`` with γ = 1 (tanh).

Two estimators:

* exact: :func:`torch.linalg.svdvals` (a full SVD, ``O(H³)`` per block);
* fast: :func:`power_iteration` with a persistent, warm-started right singular vector — ``2·num_iters``
  matrix-vector products per block and call. It converges *from below*: the estimate is a lower bound of
  ``σ_max`` and is exact up to ``(σ₂/σ₁)^(2·iters)`` once warmed up.

Pure PyTorch; no lightning import.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_rnn.nn._cells import CELLS

__all__ = [
    "GATE_BLOCKS",
    "BlockSpectralNorm",
    "RecurrentWeight",
    "find_recurrent_weights",
    "gate_blocks",
    "power_iteration",
    "recurrent_spectral_norms",
    "spectral_norm_exact",
]

#: Gate blocks of ``weight_hh`` (in PyTorch's stacking order) and the bound γ of their nonlinearity's
#: derivative, per cell kind.
GATE_BLOCKS: dict[str, tuple[tuple[str, float], ...]] = {
    "rnn_tanh": (("h", 1.0),),
    "rnn_relu": (("h", 1.0),),
    "lstm": (("i", 0.25), ("f", 0.25), ("g", 1.0), ("o", 0.25)),
    "gru": (("r", 0.25), ("z", 0.25), ("n", 1.0)),
}

_TORCH_MODES = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}
_WEIGHT_HH = re.compile(r"^weight_hh_l(\d+)(_reverse)?$")


@dataclass(frozen=True)
class RecurrentWeight:
    """One recurrent matrix ``weight_hh`` of one layer and direction.

    Attributes:
        name: layer name used in metric keys: ``"<module path>.l<k>"`` (``"_reverse"`` appended for the
            backward direction); ``"l<k>"`` for a top-level module; the module path for a cell;
            ``"<module path>.<key>"`` for a key of a module's ``recurrent_weights()`` that is not
            ``weight_hh_l<k>``.
        cell: ``"rnn_tanh" | "rnn_relu" | "lstm" | "gru"`` (a key of :data:`GATE_BLOCKS`), or ``"custom"``
            with ``gates`` given.
        weight: the parameter itself, shape ``(G*H, H_in)`` with G gate blocks.
        gates: the ``(name, γ)`` of each gate block in row order; None: ``GATE_BLOCKS[cell]``.
    """

    name: str
    cell: str
    weight: Tensor
    gates: tuple[tuple[str, float], ...] | None = None

    @property
    def blocks(self) -> tuple[tuple[str, float], ...]:
        """The ``(name, γ)`` of each gate block in row order."""
        return self.gates if self.gates is not None else GATE_BLOCKS[self.cell]


def _cell_kind(module: nn.Module) -> str | None:
    """The cell kind of a recurrent module, or None when ``module`` is not one we know."""
    if isinstance(module, nn.RNNBase):
        return _TORCH_MODES.get(module.mode)
    if isinstance(module, nn.LSTMCell):
        return "lstm"
    if isinstance(module, nn.GRUCell):
        return "gru"
    if isinstance(module, nn.RNNCell):
        return f"rnn_{module.nonlinearity}"
    if callable(getattr(module, "recurrent_weights", None)):  # RNNStack and a user's cell: the protocol
        return "custom"
    return None


def _protocol_gates(path: str, module: nn.Module) -> tuple[str, tuple[tuple[str, float], ...]]:
    """(cell kind, gate layout) of a module that follows the ``recurrent_weights()`` protocol."""
    gates = getattr(module, "recurrent_gates", None)
    if gates is None:  # lightning_rnn.nn.RNNStack names its cell
        cell = getattr(module, "cell", None)
        if isinstance(cell, str) and cell.lower() in CELLS:
            kind = "rnn_tanh" if cell.lower() == "rnn" else cell.lower()
            return kind, GATE_BLOCKS[kind]
        return "rnn_tanh", GATE_BLOCKS["rnn_tanh"]
    if isinstance(gates, str):
        if gates not in GATE_BLOCKS:
            raise ValueError(
                f"Expected {path or type(module).__name__}.recurrent_gates in {sorted(GATE_BLOCKS)} or a sequence of "
                f"(name, gamma) pairs, got {gates!r}"
            )
        return gates, GATE_BLOCKS[gates]
    try:
        layout = tuple((str(name), float(gamma)) for name, gamma in gates)
    except (TypeError, ValueError):
        layout = ()
    if not layout:
        raise ValueError(
            f"Expected {path or type(module).__name__}.recurrent_gates in {sorted(GATE_BLOCKS)} or a non-empty "
            f"sequence of (name, gamma) pairs, got {gates!r}"
        )
    return "custom", layout


def _weights_of(path: str, module: nn.Module, cell: str) -> list[RecurrentWeight]:
    if isinstance(module, nn.RNNCellBase):
        return [RecurrentWeight(path or "cell", cell, module.weight_hh)]
    if cell == "custom":
        kind, gates = _protocol_gates(path, module)
        weights = module.recurrent_weights()
        where = f"{path or type(module).__name__}.recurrent_weights()"
        if not isinstance(weights, Mapping) or not weights:
            raise ValueError(f"Expected {where} to return a non-empty dict[str, Tensor], got {weights!r}")
        out = []
        for key, weight in weights.items():
            if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[0] % len(gates):
                shape = list(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
                raise ValueError(
                    f"Expected {where}[{key!r}] to be a 2-D Tensor (G*H, H_in) with G = {len(gates)} gate blocks, "
                    f"got {shape}"
                )
            match = _WEIGHT_HH.match(str(key))
            layer = f"l{match.group(1)}{match.group(2) or ''}" if match else str(key)
            out.append(RecurrentWeight(f"{path}.{layer}" if path else layer, kind, weight,
                                       None if kind in GATE_BLOCKS and gates == GATE_BLOCKS[kind] else gates))
        return out
    found = []
    for pname, param in module.named_parameters():
        match = _WEIGHT_HH.match(pname.rsplit(".", 1)[-1])
        if match is None:
            continue
        layer = f"l{match.group(1)}{match.group(2) or ''}"
        found.append(RecurrentWeight(f"{path}.{layer}" if path else layer, cell, param))
    return found


def find_recurrent_weights(module: nn.Module, modules: Sequence[str] | None = None) -> list[RecurrentWeight]:
    """Find the recurrent matrices of every recurrent layer inside ``module``.

    Recognised: :class:`torch.nn.RNN` / :class:`~torch.nn.LSTM` / :class:`~torch.nn.GRU` (every layer and
    direction), the matching ``*Cell`` modules, and every module with a ``recurrent_weights()`` method —
    ``lightning_rnn.nn.RNNStack`` and a user's own cell (see the module docstring for the protocol and its
    optional ``recurrent_gates``). Submodules of a recognised module are not searched again.

    Args:
        module: the model to walk (``module`` itself may be recurrent).
        modules: optional module paths (as in ``module.named_modules()``) to use instead of searching;
            each must name a recognised recurrent module.

    Returns:
        One :class:`RecurrentWeight` per layer and direction, in module order.

    Raises:
        ValueError: a path in ``modules`` does not exist or is not a recurrent module.

    Example::

        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LSTM(4, 8, num_layers=2))
        >>> [(w.name, w.cell, tuple(w.weight.shape)) for w in find_recurrent_weights(net)]
        [('1.l0', 'lstm', (32, 8)), ('1.l1', 'lstm', (32, 8))]
    """
    named = dict(module.named_modules())
    if modules is not None:
        if isinstance(modules, str):
            modules = [modules]
        found: list[RecurrentWeight] = []
        for path in modules:
            if path not in named:
                raise ValueError(f"Expected a module path of the model, got {path!r}")
            cell = _cell_kind(named[path])
            if cell is None:
                raise ValueError(
                    f"Expected {path!r} to be a recurrent module (lightning_rnn.nn.RNNStack, torch.nn.RNN/LSTM/GRU, "
                    f"a *Cell, or a module with a recurrent_weights() method), got {type(named[path]).__name__}"
                )
            found.extend(_weights_of(path, named[path], cell))
        return found

    found = []
    claimed: list[str] = []
    for path, sub in named.items():
        if any(path.startswith(prefix + ".") or prefix == "" for prefix in claimed):
            continue
        cell = _cell_kind(sub)
        if cell is not None:
            claimed.append(path)
            found.extend(_weights_of(path, sub, cell))
    return found


def gate_blocks(weight: Tensor, cell: str | int) -> Tensor:
    """View a stacked ``weight_hh`` as its gate blocks.

    ``cell`` is a key of :data:`GATE_BLOCKS` or the number of gate blocks G.

    Inputs:
        weight: ``(G*H, H_in)`` with G = 4 (lstm: i, f, g, o), 3 (gru: r, z, n) or 1 (rnn).

    Outputs:
        blocks: ``(G, H, H_in)``, a view (no copy).
    """
    if isinstance(cell, int) and not isinstance(cell, bool):
        if cell < 1:
            raise ValueError(f"Expected a number of gate blocks >= 1, got {cell}")
        num_gates = cell
    elif cell not in GATE_BLOCKS:
        raise ValueError(f"Expected cell in {sorted(GATE_BLOCKS)}, got {cell!r}")
    else:
        num_gates = len(GATE_BLOCKS[cell])
    if weight.dim() != 2:
        raise ValueError(f"Expected a 2-D weight_hh, got shape {list(weight.shape)}")
    if weight.shape[0] % num_gates:
        raise ValueError(
            f"Expected weight_hh rows divisible by {num_gates} gate blocks for {cell!r}, got shape {list(weight.shape)}"
        )
    return weight.view(num_gates, weight.shape[0] // num_gates, weight.shape[1])


def spectral_norm_exact(matrices: Tensor) -> Tensor:
    """Largest singular value of each matrix (a full SVD).

    Inputs:
        matrices: ``(*, M, K)``.

    Outputs:
        sigma: ``(*,)``.
    """
    return torch.linalg.svdvals(matrices.detach().float() if matrices.dtype in (torch.float16, torch.bfloat16)
                                else matrices.detach())[..., 0]


def power_iteration(matrices: Tensor, v: Tensor | None = None, num_iters: int = 2,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Estimate the largest singular value of each matrix by power iteration on ``WᵀW``.

    One iteration is ``u = normalise(W v)``, ``w = Wᵀ u``, ``σ = ‖w‖``, ``v = w / σ``. ``σ`` is a lower
    bound of ``σ_max`` that increases with every iteration; pass the returned ``v`` back in on the next
    call (warm start) and a couple of iterations track a slowly changing matrix.

    Args:
        matrices: ``(*, M, K)``; treated as constants (no autograd).
        v: ``(*, K)`` right singular vector estimates from the previous call, or None to start from a
            random vector (drawn from ``generator``, never from the global RNG).
        num_iters: iterations (each two matrix-vector products per matrix); must be >= 1.
        generator: CPU generator for the random start; a fixed-seed one when None.

    Inputs:
        matrices: ``(*, M, K)``; v: ``(*, K)`` or None.

    Outputs:
        sigma: ``(*,)``, the estimates; v: ``(*, K)`` unit vectors, to feed back in.

    Example::

        >>> W = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
        >>> sigma, v = power_iteration(W, num_iters=30)
        >>> round(float(sigma), 4)
        3.0
    """
    if num_iters < 1:
        raise ValueError(f"Expected num_iters >= 1, got {num_iters}")
    W = matrices.detach()
    if W.dtype in (torch.float16, torch.bfloat16):
        W = W.float()
    if v is None:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        v = torch.randn(W.shape[:-2] + W.shape[-1:], generator=generator, dtype=W.dtype).to(W.device)
    else:
        v = v.detach().to(device=W.device, dtype=W.dtype)
        if v.shape != W.shape[:-2] + W.shape[-1:]:
            raise ValueError(f"Expected v of shape {list(W.shape[:-2] + W.shape[-1:])}, got {list(v.shape)}")
    tiny = torch.finfo(W.dtype).tiny
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(tiny)
    sigma = v.new_zeros(W.shape[:-2])
    with torch.no_grad():
        for _ in range(num_iters):
            u = (W @ v.unsqueeze(-1)).squeeze(-1)  # (*, M)
            u = u / u.norm(dim=-1, keepdim=True).clamp_min(tiny)
            w = (W.transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1)  # (*, K)
            sigma = w.norm(dim=-1)
            v = w / sigma.unsqueeze(-1).clamp_min(tiny)
    return sigma, v


@dataclass(frozen=True)
class BlockSpectralNorm:
    """σ_max of one gate block of one recurrent layer.

    Attributes:
        layer: layer name (see :class:`RecurrentWeight`).
        block: gate name (``"i", "f", "g", "o"``; ``"r", "z", "n"``; ``"h"`` for a plain RNN).
        sigma: largest singular value (a lower bound when estimated by power iteration).
        gamma: bound of the gate nonlinearity's derivative (1/4 sigmoid, 1 tanh/relu).
        bound_ratio: ``sigma * gamma`` — ``> 1`` can explode, ``< 1`` must vanish.
    """

    layer: str
    block: str
    sigma: float
    gamma: float

    @property
    def bound_ratio(self) -> float:
        return self.sigma * self.gamma

    @property
    def key(self) -> str:
        return f"{self.layer}/{self.block}"


def recurrent_spectral_norms(
    weights: nn.Module | Iterable[RecurrentWeight],
    *,
    exact: bool = False,
    state: MutableMapping[str, Tensor] | None = None,
    num_iters: int = 2,
    warmup_iters: int = 50,
) -> list[BlockSpectralNorm]:
    """σ_max and the bound ratio σ_max·γ of every gate block of every recurrent layer.

    Args:
        weights: a model (searched with :func:`find_recurrent_weights`) or the weights themselves.
        exact: use :func:`torch.linalg.svdvals` instead of power iteration.
        state: power-iteration vectors keyed by layer name, read and updated in place (the explicit state
            of the fast estimator; keep the same dict between calls to warm-start). None: a cold start
            every call.
        num_iters: power iterations per call for a layer that has a vector in ``state``.
        warmup_iters: power iterations for a layer seen for the first time.

    Returns:
        One :class:`BlockSpectralNorm` per layer, direction and gate block.

    Example::

        >>> lstm = torch.nn.LSTM(4, 8)
        >>> norms = recurrent_spectral_norms(lstm, exact=True)
        >>> [(n.key, n.gamma) for n in norms]
        [('l0/i', 0.25), ('l0/f', 0.25), ('l0/g', 1.0), ('l0/o', 0.25)]
    """
    if isinstance(weights, nn.Module):
        weights = find_recurrent_weights(weights)
    if num_iters < 1 or warmup_iters < 1:
        raise ValueError(f"Expected num_iters >= 1 and warmup_iters >= 1, got {num_iters} and {warmup_iters}")
    out: list[BlockSpectralNorm] = []
    for rw in weights:
        blocks = gate_blocks(rw.weight.detach(), len(rw.blocks))  # (G, H, H_in)
        if exact:
            sigma = spectral_norm_exact(blocks)
        else:
            v = None if state is None else state.get(rw.name)
            if v is not None and v.shape != blocks.shape[:1] + blocks.shape[2:]:
                v = None  # the layer changed shape (e.g. a different model was loaded): start again
            sigma, v = power_iteration(blocks, v, num_iters=warmup_iters if v is None else num_iters)
            if state is not None:
                state[rw.name] = v
        for (block, gamma), s in zip(rw.blocks, sigma.tolist()):
            out.append(BlockSpectralNorm(rw.name, block, float(s), gamma))
    return out
