"""TBPTT engine against exact references: full BPTT, a hand-written chunk loop, unrolled forwards."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lightning_rnn.functional.tbptt import chunk_bounds

from .._cpu_features import cpu_bf16_lstm_supported
from ._tbptt_models import SeqRegressor, loader, make_data, trainer


def _manual_chunk_loop(model: SeqRegressor, x, y, k: int | None, lr: float) -> None:
    """Reference: forward on chunk, mean MSE, backward, SGD step, detach — written out by hand."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    state = None
    for start, end in chunk_bounds(x.shape[1], k):
        pred, state = model(x[:, start:end], state)
        loss = F.mse_loss(pred, y[:, start:end])
        opt.zero_grad()
        loss.backward()
        opt.step()
        state = tuple(s.detach() for s in state)


def _assert_same_params(a, b, atol=1e-6):
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, atol=atol, rtol=1e-5, msg=f"parameter {name} differs")


@pytest.mark.parametrize("k", [20, 50, None])
def test_k_at_least_T_equals_full_bptt(k):
    x, y = make_data(length=20)
    model = SeqRegressor(tbptt_steps=k)
    ref = copy.deepcopy(model)
    trainer(max_steps=1).fit(model, loader(x, y, 4))
    # full BPTT: one forward over the whole sequence, one SGD step
    opt = torch.optim.SGD(ref.parameters(), lr=ref.lr)
    pred, _ = ref(x)
    F.mse_loss(pred, y).backward()
    opt.step()
    _assert_same_params(model, ref)


@pytest.mark.parametrize("k", [3, 7, 6])
def test_k_less_than_T_equals_hand_written_loop(k):
    x, y = make_data(length=20)
    model = SeqRegressor(tbptt_steps=k)
    ref = copy.deepcopy(model)
    t = trainer()
    t.fit(model, loader(x, y, 4))
    _manual_chunk_loop(ref, x, y, k, ref.lr)
    _assert_same_params(model, ref)
    assert t.global_step == len(chunk_bounds(20, k))


def test_chunk_lengths_and_global_step_when_T_not_divisible():
    x, y = make_data(n=6, length=23)
    model = SeqRegressor(tbptt_steps=5, record=True)
    t = trainer()
    t.fit(model, loader(x, y, 2))  # 3 batches
    assert model.chunk_lengths == [5, 5, 5, 5, 3] * 3
    assert t.global_step == 15


def test_state_is_detached_at_every_boundary_and_fresh_per_batch():
    x, y = make_data(n=4, length=12)
    model = SeqRegressor(tbptt_steps=4, record=True)
    trainer().fit(model, loader(x, y, 2))
    # batch 1: None, carried, carried; batch 2: None (no carry_state), carried, carried
    assert model.seen_states[0] is None and model.seen_states[3] is None
    for st in model.seen_states[1:3] + model.seen_states[4:]:
        assert all(not s.requires_grad for s in st)


def test_chunked_evaluation_equals_unsplit_forward():
    x, y = make_data(n=3, length=30)
    model = SeqRegressor(tbptt_steps=7)
    (metrics,) = trainer().validate(model, loader(x, y, 3), verbose=False)
    with torch.no_grad():
        full, _ = model(x)
    assert metrics["val/loss"] == pytest.approx(F.mse_loss(full, y).item(), rel=1e-5)


class _GradProbe(SeqRegressor):
    """Records, for each update, which time steps of the input receive gradient from the update's loss."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.reached: list[list[int]] = []
        self._x = None

    def training_step(self, batch, batch_idx):
        x, y = batch
        self._x = x.clone().requires_grad_(True)
        return super().training_step((self._x, y), batch_idx)

    def manual_backward(self, loss, *args, **kwargs):
        (g,) = torch.autograd.grad(loss, self._x, retain_graph=True, allow_unused=True)
        steps = [] if g is None else torch.nonzero(g.abs().sum((0, 2)) > 0).flatten().tolist()
        self.reached.append(steps)
        super().manual_backward(loss, *args, **kwargs)


@pytest.mark.parametrize("k1,k2", [(4, 4), (4, 6), (3, 9), (5, 7)])
def test_k2_windows_backpropagate_exactly_k2_steps(k1, k2):
    x, y = make_data(n=2, length=20)
    model = _GradProbe(tbptt_steps=k1, tbptt_backprop_steps=k2)
    trainer().fit(model, loader(x, y, 2))
    bounds = chunk_bounds(20, k1)
    assert len(model.reached) == len(bounds)
    for (start, end), steps in zip(bounds, model.reached):
        assert steps == list(range(max(0, end - k2), end)), (start, end)


def test_k2_loss_counts_only_new_steps():
    x, y = make_data(n=2, length=12)
    model = SeqRegressor(tbptt_steps=4, tbptt_backprop_steps=8)
    ref = copy.deepcopy(model)
    trainer().fit(model, loader(x, y, 2))
    # reference: for each chunk, rerun the window from the saved state; loss on the k1 new steps only
    opt = torch.optim.SGD(ref.parameters(), lr=ref.lr)
    saved = {0: None}
    for start, end in chunk_bounds(12, 4):
        w0 = max(0, end - 8)
        state = saved[w0]
        if w0 < start:
            _, state = ref(x[:, w0:start], state)
            saved[start] = tuple(s.detach() for s in state)
        pred, state = ref(x[:, start:end], state)
        saved[end] = tuple(s.detach() for s in state)
        loss = F.mse_loss(pred, y[:, start:end])
        opt.zero_grad()
        loss.backward()
        opt.step()
    _assert_same_params(model, ref)


def test_carry_state_across_batches_and_reset_each_epoch():
    x, y = make_data(n=2, length=8)
    model = SeqRegressor(tbptt_steps=4, carry_state=True, record=True)
    # the same rows three times: consecutive "stream" batches of 2 rows
    data = [(x, y)] * 3
    trainer(max_epochs=2).fit(model, torch.utils.data.DataLoader(data, batch_size=None))
    states = model.seen_states
    assert len(states) == 12  # 2 epochs x 3 batches x 2 chunks
    assert states[0] is None and states[6] is None  # reset at every epoch start
    assert all(s is not None for i, s in enumerate(states) if i not in (0, 6))


def test_reset_mask_zeroes_selected_rows_of_carried_state():
    x, y = make_data(n=2, length=4)
    model = SeqRegressor(tbptt_steps=4, carry_state=True, record=True)

    class Dict(SeqRegressor):
        pass

    batches = [
        {"x": x, "y": y, "reset": torch.tensor([False, False])},
        {"x": x, "y": y, "reset": torch.tensor([True, False])},
    ]
    model.tbptt_step = (lambda chunk, state, f=model.tbptt_step: f((chunk["x"], chunk["y"]), state))
    trainer().fit(model, torch.utils.data.DataLoader(batches, batch_size=None))
    h, c = model.seen_states[1]
    assert torch.all(h[:, 0] == 0) and torch.all(c[:, 0] == 0)
    assert torch.any(h[:, 1] != 0)


def test_variable_bptt_draws_lengths_and_scales_lr():
    x, y = make_data(n=2, length=200)
    model = SeqRegressor(tbptt_steps=20, variable_bptt=True, record=True)
    lrs = []
    model.configure_optimizers = lambda: _RecordingSGD(model.parameters(), lr=0.01, log=lrs)
    trainer().fit(model, loader(x, y, 2))
    lengths = model.chunk_lengths
    assert sum(lengths) == 200 and len(set(lengths)) > 1
    assert all(n >= 5 for n in lengths[:-1])
    for n, lr in zip(lengths, lrs):
        assert lr == pytest.approx(0.01 * n / 20)
    assert model.optimizers().param_groups[0]["lr"] == pytest.approx(0.01)  # restored


class _RecordingSGD(torch.optim.SGD):
    def __init__(self, params, lr, log):
        super().__init__(params, lr=lr)
        self._log = log

    def step(self, closure=None):
        self._log.append(self.param_groups[0]["lr"])
        return super().step(closure)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "fp16-scaler"])
def test_module_clipping_is_applied_per_chunk(precision):
    """The clipped norm equals the threshold on *unscaled* gradients (Lightning #18089).

    "fp16-scaler" forces a real GradScaler on CPU (Lightning maps precision="16-mixed" to bf16 on CPU): had the
    module clipped the scaled gradients, the unscaled norm seen by the optimizer would be 0.01 / scale.
    """
    from lightning.pytorch.plugins.precision import MixedPrecision

    x, y = make_data(n=2, length=12)
    x = x * 100  # large gradients
    # CPU has no fp16 LSTM kernel (nor a bf16 one without AVX-512): those cases use a tanh RNN written with
    # nn.Linear (fp16/bf16 matmuls exist everywhere)
    linear = precision == "fp16-scaler" or (precision == "bf16-mixed" and not cpu_bf16_lstm_supported())
    model = (_LinearLoopRNN if linear else SeqRegressor)(tbptt_steps=4, gradient_clip_val=0.01)
    norms = []
    model.configure_optimizers = lambda: _NormSGD(model.parameters(), lr=0.01, log=norms)
    if precision == "fp16-scaler":
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        kwargs = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler)]}
    else:
        kwargs = {"precision": precision}
    trainer(**kwargs).fit(model, loader(x, y, 2))
    assert len(norms) == 3
    assert all(n == pytest.approx(0.01, rel=1e-3) for n in norms)
    if precision == "fp16-scaler":
        assert scaler.get_scale() >= 2.0**10  # the scaler was live and no step overflowed


class _LinearLoopRNN(SeqRegressor):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inp = torch.nn.Linear(3, 8)
        self.rec = torch.nn.Linear(8, 8, bias=False)

    def forward(self, x, state=None):
        h = torch.zeros(x.shape[0], 8, device=x.device) if state is None else state
        outs = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            outs.append(h)
        return self.head(torch.stack(outs, 1)).float(), h


class _NormSGD(torch.optim.SGD):
    def __init__(self, params, lr, log):
        super().__init__(params, lr=lr)
        self._log = log

    def step(self, closure=None):
        if closure is not None:  # Lightning's closure runs the hooks and the module's clipping
            closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        self._log.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return super().step()


def test_trainer_gradient_clip_val_is_refused_and_the_trainer_left_alone():
    x, y = make_data(n=2, length=8)
    for module_clip in (None, 0.5):
        t = trainer(gradient_clip_val=0.02)
        with pytest.raises(ValueError, match=r"Trainer\(gradient_clip_val=None\).*pass gradient_clip_val=0.02"):
            t.fit(SeqRegressor(gradient_clip_val=module_clip), loader(x, y, 2))
        assert t.gradient_clip_val == 0.02  # never rewritten


def test_accumulation_is_refused():
    x, y = make_data(n=2, length=8)
    with pytest.raises(ValueError, match="accumulate_grad_batches=1"):
        trainer(accumulate_grad_batches=2).fit(SeqRegressor(), loader(x, y, 2))


def _step_scheduler_model(mode: str, frequency: int) -> SeqRegressor:
    model = SeqRegressor(tbptt_steps=4, lr_scheduler_step=mode)

    def configure():
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        step = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": step, "interval": "step", "frequency": frequency}}

    model.configure_optimizers = configure
    return model


@pytest.mark.parametrize(
    "mode,frequency,expected", [("batch", 1, 4), ("batch", 2, 2), ("optimizer_step", 1, 12), ("optimizer_step", 4, 3)]
)
def test_step_schedulers_per_batch_or_per_optimizer_step(mode, frequency, expected):
    x, y = make_data(n=8, length=12)
    model = _step_scheduler_model(mode, frequency)
    t = trainer()
    t.fit(model, loader(x, y, 2))  # 4 batches x 3 chunks = 12 optimizer steps
    assert t.global_step == 12
    assert model.optimizers().param_groups[0]["lr"] == pytest.approx(0.5**expected)


def test_epoch_schedulers_are_stepped():
    x, y = make_data(n=4, length=12)
    model = SeqRegressor(tbptt_steps=4)

    def configure():
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)]

    model.configure_optimizers = configure
    trainer(max_epochs=2).fit(model, loader(x, y, 2))
    assert model.optimizers().param_groups[0]["lr"] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tbptt_steps": 0}, "tbptt_steps"),
        ({"tbptt_steps": -3}, "tbptt_steps"),
        ({"tbptt_steps": 4, "tbptt_backprop_steps": 3}, "tbptt_backprop_steps >= tbptt_steps"),
        ({"tbptt_backprop_steps": 3}, "tbptt_steps to be set"),
        ({"variable_bptt": True}, "variable_bptt"),
        ({"gradient_clip_val": -1.0}, "gradient_clip_val"),
        ({"gradient_clip_algorithm": "l3"}, "gradient_clip_algorithm"),
        ({"lr_scheduler_step": "epoch"}, "lr_scheduler_step"),
        ({"nonfinite_inputs": "ignore"}, "nonfinite_inputs"),
        ({"max_consecutive_skips": 0}, "max_consecutive_skips"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SeqRegressor(**kwargs)


def test_bad_batches_raise():
    model = SeqRegressor(tbptt_steps=4)
    x, y = make_data(n=2, length=8)
    with pytest.raises(ValueError, match=r"same length.*\(2, 8, 3\).*\(2, 7, 1\)"):
        trainer().fit(model, torch.utils.data.DataLoader([(x, y[:, :7])], batch_size=None))
    with pytest.raises(ValueError, match="at least one time step"):
        trainer().fit(model, torch.utils.data.DataLoader([(x[:, :0], y[:, :0])], batch_size=None))
