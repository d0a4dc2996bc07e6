"""ExactResume: a run resumed from a checkpoint continues draw for draw like the uninterrupted run."""

from __future__ import annotations

import random
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

__all__ = ["ExactResume", "rng_state", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    """The process's random number generator states as plain data (tensors, ints, tuples): torch CPU, every
    CUDA device, Python's ``random`` and NumPy's global generator (when NumPy is installed)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with torch in practice
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA only where the same number of devices is visible)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            rank_zero_warn(f"The checkpoint holds the RNG states of {len(cuda)} CUDA devices, this process sees "
                           f"{torch.cuda.device_count()}: the CUDA RNG is not restored (dropout masks will differ).")
    np_state = state.get("numpy")
    if np_state is not None:
        try:
            import numpy as np
        except ImportError:  # pragma: no cover
            return
        np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype("uint32"), np_state["pos"],
                             np_state["has_gauss"], np_state["cached_gaussian"]))


class ExactResume(Callback):
    """Saves the RNG states with every checkpoint and restores them when ``fit`` resumes from it.

    Lightning restores the weights, the optimizer, the loops' counters and (for stateful loaders, e.g. the
    data modules of :mod:`lightning_rnn.data`) the position in the epoch. This callback adds the random
    number generators (torch CPU and CUDA, Python, NumPy), set when Lightning restores the checkpoint — the
    draws between the restore and the first batch are then the ones the uninterrupted run made between the
    save and its next batch (the shipped data modules' loaders draw none; a plain ``DataLoader`` draws one
    seed per epoch in both) — and hands a :class:`~lightning_rnn.TBPTTModule` its carried recurrent state
    back just before the first training batch (Lightning's ``on_train_epoch_start`` would otherwise reset
    it on a mid-epoch resume).

    Only ``fit`` resuming applies anything: ``validate`` / ``test`` / ``predict`` with ``ckpt_path`` and
    ``Module.load_from_checkpoint`` leave the process's RNG untouched.

    ``TBPTTModule`` adds it to the Trainer by itself (``configure_callbacks``); the ``lightning-rnn`` CLI too.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[ExactResume()], logger=False, enable_progress_bar=False)
    """

    def __init__(self) -> None:
        self._fitting = False

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state()}

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._fitting = trainer.state.fn == "fit"  # Lightning calls load_state_dict right after this hook

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rng = state_dict.get("rng")
        if rng is not None and self._fitting:
            set_rng_state(rng)
        self._fitting = False

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        restore = getattr(pl_module, "_restore_resumed_state", None)
        if callable(restore):  # TBPTTModule: the carried state saved with a mid-epoch checkpoint
            restore(mid_epoch=batch_idx > 0)
