"""The `lightning-rnn` command: fit end to end on the shipped demo config, W&B offline run, checkpoint with its
vocabulary, `generate`, `--print_config` round trip, one-line errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_rnn.cli import VOCAB_KEY, main
from lightning_rnn.cli.vocab import vocab_from_checkpoint
from lightning_rnn.data import CharVocab
from lightning_rnn.nn import RNNConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "char_lm.yaml"

# the shipped demo config, shrunk to seconds from the command line
TINY = [
    "--model.init_args.embedding_dim=8",
    "--model.init_args.encoder.hidden_size=16",
    "--model.init_args.tbptt_steps=8",
    "--data.init_args.batch_size=4",
    "--data.init_args.bptt=16",
    "--trainer.max_steps=20",
    "--trainer.val_check_interval=5",
    "--trainer.limit_val_batches=2",
    "--trainer.log_every_n_steps=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--report.max_new_tokens=40",
]


pytestmark = pytest.mark.usefixtures("cli_env")


def _corpus(path: Path) -> Path:
    import inspect
    import json as json_mod
    import json.decoder
    import json.encoder

    text = "".join(inspect.getsource(m) for m in (json_mod, json.decoder, json.encoder))
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny `lightning-rnn fit` of examples/char_lm.yaml; shared by the tests below."""
    tmp = tmp_path_factory.mktemp("fit")
    corpus = _corpus(tmp / "corpus.py")
    # a fresh process: a W&B run opened by another test in this process would capture this run's records
    # (and no WANDB_* variables inherited from it, e.g. the address of this process's W&B service)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_rnn.cli", "fit", "--config", str(CONFIG),
         f"--data.init_args.source={corpus}", *TINY],
        cwd=tmp,  # the config writes under ./runs
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"dir": tmp, "stdout": proc.stdout, "corpus": corpus}


def test_fit_writes_wandb_run_with_metrics_and_heatmap(fitted: dict) -> None:
    runs = sorted((fitted["dir"] / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    # the offline run's records (protobuf; history keys are stored as plain UTF-8 strings)
    records = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in ("train/loss", "val/loss", "val/bits_per_token", "throughput/tokens_per_sec", "grad_clip/norm",
                "gradient_flow/horizon"):
        assert key.encode() in records, f"{key} not logged in the W&B run"
    assert b"spectral" in records
    images = list((files / "media" / "images").rglob("*.png"))
    assert images, "expected at least one image (GradientFlowMonitor heatmap) in the W&B run"


def test_fit_prints_report_and_checkpoint_holds_vocab(fitted: dict) -> None:
    out = fitted["stdout"]
    assert "validation bits per char (best checkpoint):" in out
    bits = float(out.split("validation bits per char (best checkpoint):")[1].split()[0])
    ckpts = list((fitted["dir"] / "runs").rglob("best.ckpt"))
    assert len(ckpts) == 1
    ckpt = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    # the reported bits are the checkpoint's val/loss in bits
    score = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")][0]["best_model_score"]
    assert bits == pytest.approx(float(score) / torch.log(torch.tensor(2.0)).item(), abs=1e-3)
    vocab = vocab_from_checkpoint(ckpt)
    assert ckpt["TextStreamDataModule"]["vocab"] == vocab.to_dict()  # the data module's own state
    assert set("def ") <= set(vocab.itos) and set(vocab.itos) - {"<unk>"} <= set(fitted["corpus"].read_text())
    assert ckpt["hyper_parameters"]["vocab_size"] == len(vocab)  # linked from the data module
    assert "sample (temperature" in out and "W&B run:" in out and str(ckpts[0].resolve()) in out


def test_generate_from_checkpoint(fitted: dict, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = next((fitted["dir"] / "runs").rglob("best.ckpt"))
    main(["generate", "--ckpt", str(ckpt), "--prompt", "def ", "--max_new_tokens", "25", "--seed", "1"])
    first = capsys.readouterr().out
    main(["generate", "--ckpt", str(ckpt), "--prompt", "def ", "--max_new_tokens", "25", "--seed", "1"])
    second = capsys.readouterr().out
    assert first.startswith("def ") and len(first.rstrip("\n")) == 4 + 25
    assert first == second  # seeded


def test_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = _corpus(tmp_path / "c.py")
    args = ["fit", "--config", str(CONFIG), f"--data.init_args.source={corpus}", *TINY]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--print_config"])
    assert exc.value.code in (0, None)
    printed = capsys.readouterr().out
    saved = tmp_path / "saved.yaml"
    saved.write_text(printed)
    cfg = yaml.safe_load(printed)
    assert cfg["model"]["class_path"] == "lightning_rnn.RNNLanguageModel"
    assert cfg["model"]["init_args"]["encoder"]["hidden_size"] == 16 and cfg["trainer"]["max_steps"] == 20
    assert "vocab_size" not in cfg["model"]["init_args"]  # linked, not configurable
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(saved), "--print_config"])
    assert capsys.readouterr().out == printed
    # and the saved config trains
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(saved), "--trainer.max_steps=2", "--trainer.logger=false",
          "--report.max_new_tokens=0"])
    assert "no validation ran" in capsys.readouterr().out


def _error_line(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lightning-rnn: error: "), err
    return err[0]


@pytest.mark.parametrize("kind", ["missing", "empty_file", "empty_dir", "binary"])
def test_bad_source_is_one_line_error(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "corpus.txt"
    if kind == "empty_file":
        path.write_text("")
    elif kind == "empty_dir":
        path = tmp_path / "texts"
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 20)
    line = _error_line(capsys, ["fit", "--config", str(CONFIG), f"--data.init_args.source={path}", *TINY])
    assert str(path) in line
    expected = {"missing": "does not exist", "empty_file": "empty", "empty_dir": "empty", "binary": "not UTF-8"}
    assert expected[kind] in line


def test_bad_checkpoint_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.ckpt"
    assert "does not exist" in _error_line(capsys, ["generate", "--ckpt", str(missing)])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    assert "not a PyTorch checkpoint" in _error_line(capsys, ["generate", "--ckpt", str(garbage)])
    # a Lightning checkpoint whose weights do not fit RNNLanguageModel
    from lightning_rnn import RNNLanguageModel

    lm = RNNLanguageModel(encoder=RNNConfig(hidden_size=4), vocab_size=5, embedding_dim=4)
    state = {k: v for k, v in lm.state_dict().items() if not k.startswith("decoder")}
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": dict(lm.hparams),
                VOCAB_KEY: {"class_path": "lightning_rnn.data.vocab.CharVocab",
                            "state": CharVocab.build("abcd").to_dict()}}, wrong)
    assert "does not match RNNLanguageModel" in _error_line(capsys, ["generate", "--ckpt", str(wrong)])


def test_library_value_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _corpus(tmp_path / "c.py")
    line = _error_line(capsys, ["fit", "--config", str(CONFIG), f"--data.init_args.source={corpus}", *TINY,
                                "--model.init_args.encoder.cell=transformer"])
    assert "cell" in line and "lstm" in line


def _documented_last_ckpt_commands() -> list[list[str]]:
    """The `lightning-rnn ...` lines of README.md and docs/ that use the demo's `runs/checkpoints/last.ckpt`
    (resume, validate, test, predict, generate), each subcommand once, as argv."""
    import re
    import shlex

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found: dict[str, list[str]] = {}
    for page in pages:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            for line in block.splitlines():
                if line.startswith("lightning-rnn ") and "runs/checkpoints/last.ckpt" in line and (
                        "examples/char_lm.yaml" in line or line.startswith("lightning-rnn generate")):
                    argv = shlex.split(line, comments=True)[1:]
                    found.setdefault(argv[0], argv)
    return list(found.values())


def test_documented_last_ckpt_commands_run(fitted: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """What the README and the guides tell a user to run on the demo's `last.ckpt` works on the checkpoint
    `lightning-rnn fit` wrote (shrunk with the same overrides as the fit, W&B off)."""
    import shutil

    commands = _documented_last_ckpt_commands()
    assert {argv[0] for argv in commands} >= {"fit", "validate", "test", "generate"}, commands
    (tmp_path / "runs" / "checkpoints").mkdir(parents=True)
    shutil.copy(fitted["dir"] / "runs" / "checkpoints" / "last.ckpt", tmp_path / "runs" / "checkpoints")
    monkeypatch.chdir(tmp_path)
    shrink = [f"--data.init_args.source={fitted['corpus']}", "--trainer.logger=false",
              *[a for a in TINY if not a.startswith(("--report", "--trainer.max_steps"))]]
    for argv in commands:
        if argv[0] == "generate":
            main([*argv, "--max_new_tokens", "5"])
            assert capsys.readouterr().out.startswith("def ")
            continue
        argv = [a.replace("examples/char_lm.yaml", str(CONFIG)) for a in argv]
        extra = ["--trainer.max_steps=24", "--report.max_new_tokens=0"] if argv[0] == "fit" else []
        main([*argv, *shrink, *extra])
        out = capsys.readouterr().out
        if argv[0] == "fit":  # resumed from step 20: the report of a run that went on to 24
            assert torch.load(tmp_path / "runs" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 24
        else:
            assert out.strip(), argv


def test_flat_encoder_options_of_0_1_0_get_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--model.init_args.hidden_size` (and a config with `hidden_size:` under init_args) fail in the parser as any
    unknown option does, followed by one line naming where the setting moved."""
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIG), "--model.init_args.hidden_size=64", "--trainer.max_steps=1"])
    assert exc.value.code == 2
    hint = capsys.readouterr().err.strip().splitlines()[-1]
    assert hint.startswith("lightning-rnn: hint: ") and "--model.init_args.hidden_size -> --model.init_args.encoder." in hint
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"model": {"class_path": "lightning_rnn.RNNLanguageModel",
                                             "init_args": {"hidden_size": 32, "cell": "gru"}}}))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(old)])
    hint = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"model.init_args.hidden_size in {old}" in hint and f"model.init_args.cell in {old}" in hint
    with pytest.raises(SystemExit):  # an unknown option that did not move: no hint
        main(["fit", "--config", str(CONFIG), "--model.init_args.hiddn=64"])
    assert "hint" not in capsys.readouterr().err
