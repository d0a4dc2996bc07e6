"""A non-finite loss or gradient never reaches the parameters; non-finite inputs are named or skipped."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_rnn import TBPTTStep
from lightning_rnn.callbacks import AdaptiveGradientClipping
from lightning_rnn.modules.tbptt import NonFiniteStepError

from ._tbptt_models import SeqRegressor, loader, make_data, trainer


class Poisoned(SeqRegressor):
    """Chunk number i (counting training chunks) in ``poison`` gets a NaN loss, NaN gradients, a NaN state row
    or no loss at all."""

    def __init__(self, poison=(), how="loss", **kwargs):
        super().__init__(**kwargs)
        self.poison, self.how, self.calls = set(poison), how, 0
        self.states: list = []

    def tbptt_step(self, chunk, state):
        if self.training:
            self.states.append(state)
        step = super().tbptt_step(chunk, state)
        if self.training:
            i, self.calls = self.calls, self.calls + 1
            if i in self.poison or "all" in self.poison:
                if self.how == "loss":
                    step.loss = step.loss * float("nan")
                elif self.how == "grad":  # finite loss, NaN gradient: d sqrt(0 * b) / db = inf * 0
                    step.loss = step.loss + torch.sqrt(self.head.bias.sum() * 0.0)
                elif self.how == "noloss":
                    step = TBPTTStep(step.loss.detach(), step.state, weight=0)
                elif self.how == "state":  # row 0 of h turns NaN (e.g. an overflow inside the cell)
                    h, c = step.state
                    step.state = (h.index_fill(1, torch.tensor([0]), float("nan")), c)
        return step

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _fit(model, batches=2, **kwargs):
    x, y = make_data(n=2 * batches, length=12)
    t = trainer(**kwargs)
    t.fit(model, loader(x, y, 2))
    return t


@pytest.mark.parametrize("how", ["loss", "grad"])
def test_skipped_step_leaves_parameters_and_optimizer_state_bit_identical(how):
    torch.manual_seed(0)
    bad = Poisoned(poison={2}, how=how, tbptt_steps=4)
    ref = copy.deepcopy(bad)
    ref.how = "noloss"  # the uninterrupted reference: chunk 2 simply takes no step
    t_bad, t_ref = _fit(bad), _fit(ref)
    assert bad.skipped_steps == 1 and ref.skipped_steps == 0
    assert t_bad.global_step == t_ref.global_step == 5
    for (name, p), q in zip(bad.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), name
    sb, sr = bad.optimizers().optimizer.state_dict()["state"], ref.optimizers().optimizer.state_dict()["state"]
    for key in sr:
        for field in sr[key]:
            assert torch.equal(torch.as_tensor(sb[key][field]), torch.as_tensor(sr[key][field])), (key, field)
    assert t_bad.callback_metrics["train/skipped_steps"] == 1


def test_nonfinite_state_rows_are_reset_and_training_goes_on():
    model = Poisoned(poison={0}, how="state", tbptt_steps=4, carry_state=True)
    t = _fit(model)
    # chunk 0 steps; chunk 1 reads the NaN row, its loss is NaN and it is skipped; row 0 is reset, row 1 kept
    assert model.skipped_steps == 1 and t.global_step == 5
    h, c = model.states[2]
    assert torch.all(h[:, 0] == 0) and torch.all(c[:, 0] == 0)
    assert torch.all(torch.isfinite(h)) and torch.any(h[:, 1] != 0)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_consecutive_skips_stop_training_with_a_clear_error():
    model = Poisoned(poison={"all"}, how="loss", tbptt_steps=4, max_consecutive_skips=3)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(NonFiniteStepError, match="3 consecutive TBPTT chunks.*max_consecutive_skips"):
        _fit(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nonfinite_inputs_are_named_or_skipped():
    x, y = make_data(n=4, length=8)
    x[2, 3, 1] = float("nan")  # batch 1 (rows 2-3)
    with pytest.raises(ValueError, match=r"training batch 1, got NaN/inf in batch\[0\].*nonfinite_inputs=\"skip\""):
        trainer().fit(SeqRegressor(tbptt_steps=4), loader(x, y, 2))
    model = SeqRegressor(tbptt_steps=4, nonfinite_inputs="skip")
    ref = copy.deepcopy(model)
    t = trainer()
    t.fit(model, loader(x, y, 2))
    assert t.global_step == 2 and model.skipped_steps == 1
    trainer().fit(ref, loader(x[:2], y[:2], 2))  # the same run without the bad batch
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters()))


def test_adaptive_clipping_builds_on_the_engine_skip():
    cb = AdaptiveGradientClipping()
    model = Poisoned(poison={2}, how="loss", tbptt_steps=4)
    t = _fit(model, callbacks=[cb])
    assert model.skipped_steps == 1 and t.global_step == 5
    assert cb.state_dict()["optimizers"][0]["nonfinite_steps"] == 0  # the callback never saw the bad step
    assert all(torch.isfinite(p).all() for p in model.parameters())
