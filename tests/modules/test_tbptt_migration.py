"""Lightning 1.x TBPTT spellings get one clear error naming the lightning-rnn replacement (one test per row)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest

from ._tbptt_models import SeqRegressor, loader, make_data, trainer


def test_truncated_bptt_steps_set_in_init():
    class Old(SeqRegressor):
        def __init__(self):
            super().__init__()
            self.truncated_bptt_steps = 2

    with pytest.raises(AttributeError, match=r"pass tbptt_steps=2 to TBPTTModule.__init__"):
        Old()


def test_truncated_bptt_steps_as_class_attribute():
    class Old(SeqRegressor):
        truncated_bptt_steps = 2

    with pytest.raises(TypeError, match=r"pass tbptt_steps=2"):
        Old()


def test_truncated_bptt_steps_reads_as_tbptt_steps():
    assert SeqRegressor(tbptt_steps=3).truncated_bptt_steps == 3


def test_tbptt_split_batch_override():
    class Old(SeqRegressor):
        def tbptt_split_batch(self, batch, split_size):
            return [batch]

    with pytest.raises(TypeError, match=r"override slice_batch\(batch, start, end\)"):
        Old()


def test_hiddens_in_training_step():
    class Old(SeqRegressor):
        def training_step(self, batch, batch_idx, hiddens):
            return {"loss": None, "hiddens": hiddens}

    with pytest.raises(TypeError, match=r"implement tbptt_step\(chunk, state\)"):
        Old()


def test_epoch_end_hooks_are_refused_by_lightning():
    class Old(SeqRegressor):
        def training_epoch_end(self, outputs):
            pass

    x, y = make_data(n=2, length=8)
    with pytest.raises(NotImplementedError, match="on_train_epoch_end"):
        trainer().fit(Old(tbptt_steps=4), loader(x, y, 2))


def test_trainer_truncated_bptt_steps_is_refused_by_lightning():
    with pytest.raises(TypeError, match="truncated_bptt_steps"):
        pl.Trainer(truncated_bptt_steps=2)  # type: ignore[call-arg]
