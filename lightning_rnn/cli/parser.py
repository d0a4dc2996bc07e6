"""``LightningRNNCLI``: Lightning's ``LightningCLI`` with the data module's sizes linked into the model,
checkpoints that are data (loaded ``weights_only``, saved atomically) and that the CLI itself can reuse."""

from __future__ import annotations

import importlib
import inspect
import time
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.cli import _InstantiatorFn as _LightningInstantiator
from lightning.pytorch.utilities import rank_zero_warn

from lightning_rnn.callbacks.checkpoint_dir import CheckpointDirCheck
from lightning_rnn.callbacks.resume import ExactResume
from lightning_rnn.checkpoint_io import CheckpointError, SafeCheckpointIO, load_checkpoint
from lightning_rnn.cli.errors import PROG, CLIError, one_line
from lightning_rnn.cli.links import DATA_LINKS, accepted_arguments, data_value
from lightning_rnn.cli.report import fit_report
from lightning_rnn.cli.sources import check_source
from lightning_rnn.cli.vocab import VocabInCheckpoint

__all__ = ["LightningRNNCLI"]


def _import_class(class_path: Any) -> type | None:
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None
    return cls if inspect.isclass(cls) else None


class _ModelInstantiator(_LightningInstantiator):
    """Lightning's model instantiator, given only the links the model accepts and the data module provides
    (so ``hyper_parameters`` never hold an unset link as None), checking a ``--ckpt_path``'s sizes."""

    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict, **kwargs: Any) -> Any:
        named, var_kw = accepted_arguments(class_type)
        links = {}
        for key, value in applied_instantiation_links.items():
            name = key.rsplit(".", 1)[-1]
            if key.startswith("model.") and name in DATA_LINKS:
                accepted = name in named or var_kw
                if value is None or not accepted:
                    if not accepted or kwargs.get(name, None) is None:
                        kwargs.pop(name, None)
                    continue
                self.cli._check_checkpoint_size(name, value)
            links[key] = value
        return super().__call__(class_type, *args, applied_instantiation_links=links, **kwargs)


class _DataInstantiator(_LightningInstantiator):
    """Lightning's data-module instantiator; with ``--ckpt_path`` the data module's state (vocabulary, ...) is
    restored from the checkpoint before the model's sizes are linked to it."""

    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict, **kwargs: Any) -> Any:
        datamodule = super().__call__(class_type, *args, applied_instantiation_links=applied_instantiation_links,
                                      **kwargs)
        checkpoint = self.cli._checkpoint
        state = checkpoint.get(type(datamodule).__qualname__) if checkpoint else None
        if isinstance(state, dict) and callable(getattr(datamodule, "load_state_dict", None)):
            datamodule.load_state_dict(state)
        return datamodule


class LightningRNNCLI(LightningCLI):
    """``LightningCLI`` preset for lightning-rnn.

    - models: any ``LightningModule`` (subclass mode; every lightning-rnn module is importable by its name);
      data: any ``LightningDataModule`` (subclass mode);
    - the model's arguments the data module knows are linked to it, by name (:mod:`lightning_rnn.cli.links`);
    - ``--ckpt_path`` works with every subcommand on the checkpoints ``fit`` writes: a file that is not a
      usable checkpoint, a checkpoint of another model class, or of other sizes than the data's, is one line;
    - checkpoints are loaded as data (``weights_only=True``) and written atomically
      (:class:`~lightning_rnn.checkpoint_io.SafeCheckpointIO`); the checkpoint directories are checked for
      writability and free space before the first step; a resumed ``fit`` continues exactly
      (:class:`~lightning_rnn.callbacks.ExactResume`);
    - the vocabulary travels in every checkpoint (the data module's state, else :class:`VocabInCheckpoint`);
    - after ``fit``: a report (:func:`~lightning_rnn.cli.report.fit_report`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", LightningModule)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"prog": PROG})
        self._checkpoint: dict[str, Any] | None = None
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for arg in DATA_LINKS:
            parser.link_arguments("data", f"model.init_args.{arg}", compute_fn=self._link_fn(arg),
                                  apply_on="instantiate")
        parser.add_argument("--report.prompt", type=str, default="def ",
                            help="prompt of the sample printed after fit (language models)")
        parser.add_argument("--report.max_new_tokens", type=int, default=300,
                            help="length of the sample printed after fit (0: no sample)")

    def _add_instantiators(self) -> None:
        self.parser.add_instantiator(_ModelInstantiator(cli=self, key="model"), LightningModule, subclasses=True)
        self.parser.add_instantiator(_DataInstantiator(cli=self, key="data"), LightningDataModule, subclasses=True)

    # ------------------------------------------------------------------ --ckpt_path
    def _sub_config(self) -> Any:
        return self.config.get(self.config.get("subcommand"), self.config) if self.config.get("subcommand") \
            else self.config

    def _parse_ckpt_path(self) -> None:
        """Load ``--ckpt_path`` as data (one line for a bad file), refuse a checkpoint of another model class,
        then let Lightning take the checkpoint's hyper-parameters."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path:
            return
        if str(ckpt_path) in ("last", "best", "hpc") or "://" in str(ckpt_path):
            super()._parse_ckpt_path()  # resolved by Lightning when the run starts (loaded by SafeCheckpointIO)
            return
        try:
            self._checkpoint = load_checkpoint(ckpt_path, what="--ckpt_path")
        except CheckpointError as err:
            raise CLIError(f"{err}: pass a .ckpt file written by `lightning-rnn fit`") from None
        saved = self._checkpoint.get("hyper_parameters", {}).get("_class_path")
        configured = getattr(self._sub_config().get("model"), "class_path", None)
        if saved and configured and saved != configured:
            saved_cls, configured_cls = _import_class(saved), _import_class(configured)
            if not (saved_cls and configured_cls and issubclass(configured_cls, saved_cls)):
                raise CLIError(f"--ckpt_path {ckpt_path!r} is a checkpoint of {saved}, the config's model is "
                               f"{configured}: use the config it was trained with (or --model {saved})")
        super()._parse_ckpt_path()

    def _check_checkpoint_size(self, name: str, value: Any) -> None:
        """A linked size that differs from the one the checkpoint was trained with: one line."""
        saved = (self._checkpoint or {}).get("hyper_parameters", {})
        if name in saved and saved[name] is not None and saved[name] != value:
            raise CLIError(f"--ckpt_path was trained with {name}={saved[name]!r}, the data module gives {value!r}: "
                           "use the data it was trained with")

    # ------------------------------------------------------------------ links
    def _model_config(self) -> Any:
        return self._sub_config().get("model")

    def _configured_model_class(self) -> type | None:
        return _import_class(getattr(self._model_config(), "class_path", None))

    def _model_default(self, arg: str) -> Any:
        cls = self._configured_model_class()
        try:
            param = inspect.signature(cls).parameters.get(arg) if cls is not None else None
        except (TypeError, ValueError):
            param = None
        return None if param is None or param.default is inspect.Parameter.empty else param.default

    def _user_value(self, arg: str) -> Any:
        """``model.init_args.<arg>`` set in the config / command line (None if unset or the default)."""
        init_args = getattr(self._model_config(), "init_args", None)
        if init_args is None or arg not in init_args:
            return None
        value = init_args[arg]
        return None if value is None or value == self._model_default(arg) else value

    def _link_fn(self, arg: str) -> Any:
        def compute(datamodule: Any) -> Any:
            value = data_value(datamodule, arg)
            user = self._user_value(arg)
            if value is None:
                self._unlinked.add(arg)
                return user
            if user is not None and user != value:
                return self._conflict(arg, user, value, datamodule)
            return value

        compute.__name__ = compute.__qualname__ = f"{arg}_from_data"
        return compute

    def _conflict(self, arg: str, user: Any, value: Any, datamodule: Any) -> Any:
        """A config value of a linked argument that differs from the data module's: an error for lightning-rnn's
        modules (the argument means the data's size), the config's value with a warning for other models."""
        cls = self._configured_model_class()
        where = f"{type(datamodule).__name__}.{arg if getattr(datamodule, arg, None) is not None else arg + '_size'}"
        if cls is not None and cls.__module__.startswith("lightning_rnn."):
            raise CLIError(
                f"Expected model.init_args.{arg} to come from the data module ({where} = {value!r}), got {user!r} "
                f"set in the config: remove model.init_args.{arg} (the CLI links it)"
            )
        rank_zero_warn(
            f"model.init_args.{arg}={user!r} is set in the config; the data module has {where} = {value!r}, "
            f"which the CLI would link to it: keeping the config's value for {getattr(cls, '__name__', 'the model')}"
        )
        return user

    def before_instantiate_classes(self) -> None:
        data = self._sub_config().get("data")
        init_args = getattr(data, "init_args", None) if data is not None else None
        if init_args is not None and "source" in init_args:
            check_source(init_args["source"])

    def instantiate_classes(self) -> None:
        self._unlinked: set[str] = set()
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            cls = self._configured_model_class()
            named, _ = accepted_arguments(cls) if cls is not None else (set(), False)
            required = {n for n in named if self._model_default(n) is None}
            missing = sorted(a for a in self._unlinked if a in required and f"{a}" in str(err))
            if not missing:
                raise
            data_class = getattr(self._sub_config().get("data"), "class_path", "the data module")
            wanted = " and ".join(f"`{a}`" for a in missing)
            raise CLIError(
                f"Expected the data module {data_class} to have {wanted} (the CLI links it to the model's "
                f"{', '.join(missing)}), got none: add that attribute/property to the data module ({one_line(err)})"
            ) from err

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={}) or {}
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        from lightning.fabric.plugins import CheckpointIO

        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, SafeCheckpointIO()]
        trainer = super().instantiate_trainer(**kwargs)
        from lightning_rnn import Seq2SeqAttention, TBPTTModule

        extra: list[Any] = [CheckpointDirCheck()]
        if not isinstance(self.model, TBPTTModule | Seq2SeqAttention):  # those add ExactResume themselves
            extra.append(ExactResume())
        if self.datamodule is not None and VocabInCheckpoint.needed(self.datamodule):
            extra.append(VocabInCheckpoint())
        for cb in extra:
            if not any(type(c) is type(cb) for c in trainer.callbacks):
                trainer.callbacks.insert(0, cb)
        return trainer

    def before_fit(self) -> None:
        self._fit_start = time.time() - 1.0

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero or self.trainer.interrupted:
            return
        report = self._sub_config().get("report")
        prompt = getattr(report, "prompt", "def ") if report is not None else "def "
        n = getattr(report, "max_new_tokens", 300) if report is not None else 300
        print(fit_report(self.trainer, self.model, self.datamodule, prompt=prompt, max_new_tokens=n,
                         since=getattr(self, "_fit_start", None)), flush=True)


