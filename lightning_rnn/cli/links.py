"""Which model arguments the data module fills in: computed from what the chosen data module provides and
what the chosen model accepts, by name.

A model argument ``name`` is linked when the data module has a non-None attribute/property ``name`` (or
``name + "_size"``: ``src_vocab`` <- ``src_vocab_size``; ``vocab_size`` also from ``len(data.vocab)``) and the
model's ``__init__`` accepts ``name`` (a named parameter, or any name through ``**kwargs``). Nothing else
reaches the model or its saved ``hyper_parameters``: an unset link never lands there as ``None``.

The parser needs the candidate names before it knows the classes (a linked argument is not required in the
config): :data:`DATA_LINKS` is derived from the shipped modules and data modules (each model argument whose
name a shipped data module provides) — renaming an argument on both sides keeps it linked.
"""

from __future__ import annotations

import inspect
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule

__all__ = ["DATA_LINKS", "accepted_arguments", "candidate_links", "data_value"]


def accepted_arguments(cls: type) -> tuple[set[str], bool]:
    """``(named __init__ parameters, whether it takes **kwargs)`` of a class."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return set(), False
    named = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def data_value(datamodule: Any, name: str) -> Any:
    """What ``datamodule`` provides for the model argument ``name`` (None if nothing)."""
    if datamodule is None:
        return None
    for attr in (name, f"{name}_size"):
        value = getattr(datamodule, attr, None)
        if value is not None and not callable(value):
            return value
    if name == "vocab_size":
        vocab = getattr(datamodule, "vocab", None)
        if vocab is None and callable(getattr(datamodule, "build_vocab", None)):
            vocab = datamodule.build_vocab()
        return len(vocab) if vocab is not None else None
    return None


def _public_members(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def candidate_links(models: list[type], datamodules: list[type]) -> tuple[str, ...]:
    """Model argument names some data module provides (the names the parser links)."""
    provided = set().union(*(_public_members(c) for c in datamodules)) - _public_members(LightningDataModule)
    names = set()
    for model in models:
        named, _ = accepted_arguments(model)
        names |= {n for n in named if n in provided or f"{n}_size" in provided}
    return tuple(sorted(names))


def _shipped() -> tuple[list[type], list[type]]:
    import lightning_rnn
    import lightning_rnn.data

    models = [getattr(lightning_rnn, n) for n in lightning_rnn.__all__]
    models = [m for m in models if inspect.isclass(m) and issubclass(m, LightningModule)]
    datas = [getattr(lightning_rnn.data, n) for n in lightning_rnn.data.__all__]
    datas = [d for d in datas if inspect.isclass(d) and issubclass(d, LightningDataModule)]
    return models, datas


#: The model arguments the CLI links to the data module (always including ``vocab_size`` and ``num_classes``)
DATA_LINKS: tuple[str, ...] = tuple(sorted({"vocab_size", "num_classes", *candidate_links(*_shipped())}))
