"""NTASGD: the non-monotone trigger, the average against the mean of the recorded iterates, validation and
checkpoints on the averaged weights, and an exact resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_rnn import RNNConfig, RNNLanguageModel
from lightning_rnn.callbacks import NTASGD

from ..modules._tbptt_models import trainer

#: validation score per epoch; with n=2 the rule first fires at epoch 5 (3.7 > min(5, 4, 3)), not at epoch 3
#: (3.5 is worse than 3 but not than the best before the last 2 evaluations, 5)
SCRIPT = [5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.0, 2.0, 1.0, 0.5]
SWITCH_EPOCH = 5
STEPS_PER_EPOCH = 4  # 2 batches x 2 chunks


class ScriptedLM(RNNLanguageModel):
    """A small LM that logs a scripted ``val/score`` and records every iterate and the weights it validates."""

    def __init__(self, **kwargs):
        super().__init__(16, 6, RNNConfig(hidden_size=6), tbptt_steps=4, optimizer="sgd", lr=0.5, **kwargs)
        self.iterates: list[list[torch.Tensor]] = []
        self.validated: dict[int, list[torch.Tensor]] = {}

    def configure_optimizers(self):
        opt = super().configure_optimizers()
        opt.register_step_post_hook(lambda *_: self.iterates.append([p.detach().clone() for p in self.parameters()]))
        return opt

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.validated[self.current_epoch] = [p.detach().clone() for p in self.parameters()]
        return super().validation_step(batch, batch_idx)

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        self.log("val/score", SCRIPT[self.current_epoch])


def _data():
    g = torch.Generator().manual_seed(0)
    train = [(torch.randint(0, 16, (3, 8), generator=g), torch.randint(0, 16, (3, 8), generator=g)) for _ in range(2)]
    val = [(torch.randint(0, 16, (3, 8), generator=g), torch.randint(0, 16, (3, 8), generator=g))]
    loader = torch.utils.data.DataLoader
    return loader(train, batch_size=None), loader(val, batch_size=None)


def _mean(iterates: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack(ps).mean(0) for ps in zip(*iterates)]


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def test_trigger_average_validation_and_checkpoint(tmp_path: Path):
    torch.manual_seed(0)
    model = ScriptedLM()
    cb = NTASGD(n=2, monitor="val/score")
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    t = trainer(max_epochs=8, callbacks=[cb, ckpt], enable_checkpointing=True, logger=CSVLogger(tmp_path, name="log"))
    train, val = _data()
    t.fit(model, train, val)

    switch = SWITCH_EPOCH * STEPS_PER_EPOCH + STEPS_PER_EPOCH  # global_step after epoch 5's training
    assert cb.switch_step == switch and cb.history == pytest.approx(SCRIPT[:8])
    with open(next(tmp_path.glob("log/*/metrics.csv"))) as f:  # the switch and its step are logged once
        logged = [row for row in csv.DictReader(f) if row.get("nt_asgd/switch_step")]
    assert [(int(row["step"]), float(row["nt_asgd/switch_step"])) for row in logged] == [(switch, switch)]
    assert len(model.iterates) == 8 * STEPS_PER_EPOCH
    since = model.iterates[switch:]  # the iterates produced by the steps after the switch
    assert cb.n_averaged == len(since) == 2 * STEPS_PER_EPOCH
    expected = _mean(since)
    _close(cb.averaged_parameters(), expected)
    _close([p.detach() for p in model.parameters()], expected)  # after fit the module holds the average
    # validation before the switch saw the iterate, after it the average of the iterates so far
    _close(model.validated[SWITCH_EPOCH], model.iterates[switch - 1])
    _close(model.validated[6], _mean(model.iterates[switch : switch + STEPS_PER_EPOCH]))
    # checkpoints: the averaged weights in state_dict, the training iterate and the average in the callback state
    names = [n for n, _ in model.named_parameters()]
    saved = torch.load(tmp_path / "epoch=6.ckpt", map_location="cpu", weights_only=True)
    for name, value in zip(names, _mean(model.iterates[switch : switch + STEPS_PER_EPOCH])):
        torch.testing.assert_close(saved["state_dict"][name], value, atol=1e-6, rtol=1e-5)
    state = saved["callbacks"]["NTASGD"]
    assert state["switch_step"] == switch and state["history"] == pytest.approx(SCRIPT[:7])
    _close(state["training_weights"], model.iterates[switch + STEPS_PER_EPOCH - 1])
    before = torch.load(tmp_path / "epoch=4.ckpt", map_location="cpu", weights_only=True)
    assert before["callbacks"]["NTASGD"]["switch_step"] is None
    for name, value in zip(names, model.iterates[SWITCH_EPOCH * STEPS_PER_EPOCH - 1]):
        torch.testing.assert_close(before["state_dict"][name], value)
    # load_from_checkpoint gives the averaged model
    reloaded = RNNLanguageModel.load_from_checkpoint(tmp_path / "epoch=6.ckpt", map_location="cpu")
    _close([p.detach() for p in reloaded.parameters()], _mean(model.iterates[switch : switch + STEPS_PER_EPOCH]))


def test_resume_after_the_switch_equals_the_uninterrupted_run(tmp_path: Path):
    torch.manual_seed(0)
    full = ScriptedLM()
    init = {k: v.clone() for k, v in full.state_dict().items()}
    cb_full = NTASGD(n=2, monitor="val/score")
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    train, val = _data()
    trainer(max_epochs=8, callbacks=[cb_full, ckpt], enable_checkpointing=True).fit(full, train, val)

    resumed = ScriptedLM()
    resumed.load_state_dict(init)
    cb = NTASGD(n=2, monitor="val/score")
    t = trainer(max_epochs=8, callbacks=[cb])
    t.fit(resumed, train, val, ckpt_path=tmp_path / "epoch=6.ckpt")
    assert cb.switch_step == cb_full.switch_step and cb.history == cb_full.history
    assert cb.n_averaged == cb_full.n_averaged
    for a, b in zip(resumed.iterates, full.iterates[-STEPS_PER_EPOCH:], strict=True):
        _close(a, b)  # training went on from the training iterate, not from the averaged weights
    _close(cb.averaged_parameters(), cb_full.averaged_parameters())


def test_arguments_and_setup_errors():
    with pytest.raises(ValueError, match="Expected n to be an int >= 1, got 0"):
        NTASGD(n=0)
    with pytest.raises(ValueError, match="Expected mode in"):
        NTASGD(mode="down")
    train, val = _data()
    bad = trainer(max_epochs=1, callbacks=[NTASGD(), ModelCheckpoint(save_weights_only=True)],
                  enable_checkpointing=True)
    with pytest.raises(ValueError, match="save_weights_only=False"):
        bad.fit(ScriptedLM(), train, val)
    missing = trainer(max_epochs=1, callbacks=[NTASGD(monitor="val/nope")])
    with pytest.raises(ValueError, match="'val/nope' monitored by NTASGD"):
        missing.fit(ScriptedLM(), train, val)


@pytest.mark.slow  # ~10 s: two processes
@pytest.mark.skipif(sys.platform == "win32" or not torch.distributed.is_available()
                    or not torch.distributed.is_gloo_available(), reason="needs POSIX and the gloo backend")
def test_ddp_ranks_switch_at_the_same_evaluation(tmp_path: Path):
    """2 gloo processes, each logging its own unsynchronised metric: rank 0's triggers after epoch 3, rank 1's
    never would; both ranks switch at rank 0's evaluation and hold identical averages."""
    here = Path(__file__).resolve().parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(here.parents[1]), env.get("PYTHONPATH", "")])
    env.pop("LOCAL_RANK", None)
    proc = subprocess.Popen([sys.executable, str(here / "_ddp_nt_asgd_script.py"), str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail("the 2-process DDP run did not finish within 240 s (a hang?)\n" + stderr[-3000:])
    assert proc.returncode == 0, stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    steps_per_epoch = r0["global_step"] // 6
    assert r0["history"] != r1["history"]  # the ranks saw different metrics
    assert r0["switch_step"] == r1["switch_step"] == 4 * steps_per_epoch
    assert r0["n_averaged"] == r1["n_averaged"] == 2 * steps_per_epoch
    flat0 = [x for p in r0["average"] for x in p]
    flat1 = [x for p in r1["average"] for x in p]
    assert max(abs(a - b) for a, b in zip(flat0, flat1)) <= 1e-6
    assert r0["params"] == r0["average"]  # after fit the module holds the average
