"""Fault injection: training survives kills, signals, divergence, damaged checkpoints, a full disk, a second
run in the same folder and a lost DDP rank. Every case is real: real processes and signals, real files damaged
on disk, a real tmpfs, real gloo processes.

The data: 300 TinyStories stories tokenized with our 512-id BPE; the model: a 2-layer LLaMA (d_model 64,
115k parameters) trained for 24 steps of 4 x 32 tokens in fp32 without torch.compile (bitwise resume needs
it), one thread per process (the same arithmetic in every process). `reference` is that run uninterrupted.
"""

import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import psutil
import pytest
import torch

from tests.test_train import small_config, weights
from tinylib.checkpoint import CheckpointError, CheckpointMismatchError, load_model, load_state, step_of
from tinylib.data import prepare_dataset
from tinylib.faults import RunLockedError
from tinylib.metrics import read_metrics
from tinylib.optim import lr_scale
from tinylib.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 24
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data_dir(tinystories_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ts512"
    prepare_dataset(tinystories_dir, "tinystories-512", out, max_stories=300, num_proc=1, progress=False)
    return out


@pytest.fixture(scope="module")
def data_4096(tinystories_dir, tmp_path_factory):
    """The same stories under another tokenizer (our 4096-id BPE): a checkpoint of the 512 run must not
    resume on them."""
    out = tmp_path_factory.mktemp("data") / "ts4096"
    prepare_dataset(tinystories_dir, "tinystories-4096", out, max_stories=300, num_proc=1, progress=False)
    return out


def config(data_dir, out_dir, **kw):
    return small_config(data_dir, out_dir, **{"max_steps": STEPS, "eval_every": 12, **kw})


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory, one_thread) -> dict:
    out = tmp_path_factory.mktemp("reference")
    train(config(data_dir, out))
    return weights(out / "latest")


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def cli(data_dir, out_dir, *extra, config_file=None, **kw) -> list[str]:
    """The training command line for `config(...)`, read from a JSON file as a user would write it."""
    file = config_file or Path(out_dir).with_name(Path(out_dir).name + ".json")
    file.write_text(json.dumps(config(data_dir, out_dir, **kw).to_dict()))
    return [sys.executable, "-m", "tinylib.train", "--config", str(file), *extra]


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not predicate():
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, "timed out waiting for the run"
        time.sleep(0.02)


def train_steps(out_dir) -> list[int]:
    return [r["step"] for r in read_metrics(out_dir) if "train_loss" in r]


def test_sigkill_at_three_random_moments_then_resume_is_bitwise_identical(data_dir, tmp_path, reference):
    """SIGKILL once the run has saved a random step of 2-6, of 9-13, of 16-20 (save_every=1), 0-30 ms later
    (anywhere in the next step: forward, backward, update or a save); then --resume to the end."""
    out, rng, killed_at = tmp_path / "run", random.Random(16), []
    for i, (lo, hi) in enumerate([(2, 6), (9, 13), (16, 20)]):
        target = rng.randint(lo, hi)
        proc = subprocess.Popen(cli(data_dir, out, save_every=1, resume=i > 0), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(lambda target=target: (step_of(out / "latest") or 0) >= target, proc)
        time.sleep(rng.uniform(0, 0.03))
        proc.kill()
        assert proc.wait() == -signal.SIGKILL
        killed_at.append(step_of(out / "latest"))
    assert killed_at == sorted(killed_at) and killed_at[-1] < STEPS, killed_at
    done = subprocess.run(cli(data_dir, out, save_every=1, resume=True), env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {out / 'latest'} at step {killed_at[-1]}" in done.stdout
    assert_same(weights(out / "latest"), reference)
    assert train_steps(out) == list(range(1, STEPS + 1))  # one record per step, as one run writes


def test_sigterm_saves_at_the_next_step_and_the_printed_command_resumes(data_dir, tmp_path, reference):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli(data_dir, out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_until(lambda: (out / "metrics.jsonl").is_file() and len(train_steps(out)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "SIGTERM received: saving a checkpoint at the end of this step" in stderr
    stopped = step_of(out / "latest")
    assert 3 <= stopped < STEPS and json.loads(stdout.splitlines()[-2])["stopped_by"] == "SIGTERM"
    last = stdout.splitlines()[-1]
    assert last.startswith(f"stopped by SIGTERM at step {stopped}, saved in {out}/latest; resume with: "
                           "python -m tinylib.train --config ")
    command = shlex.split(last.split("resume with: ")[1])
    assert command[-1] == "--resume"
    done = subprocess.run([sys.executable, *command[1:]], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same(weights(out / "latest"), reference)


def test_a_second_run_in_the_same_folder_is_refused_and_the_first_is_untouched(data_dir, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(cli(data_dir, out, max_steps=100_000, eval_every=10**6), env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (out / "metrics.jsonl").is_file() and len(train_steps(out)) >= 2, first)
    holder = rf"is in use by another run \(pid {first.pid} on host {socket.gethostname()}, started 20\d\d-"
    with pytest.raises(RunLockedError, match=re.escape(str(out)) + " " + holder):
        train(config(data_dir, out))
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 0
    steps = train_steps(out)
    assert steps == list(range(1, len(steps) + 1))  # one run's lines, none interleaved or truncated


def test_nan_loss_is_not_applied_and_the_run_rolls_back_with_a_lower_lr(data_dir, tmp_path, capsys):
    """Step 7's loss forced to NaN (three tries): the run returns to latest/ (step 6) with lr x 0.5."""
    cfg = config(data_dir, tmp_path / "nan", max_steps=12, eval_every=4, save_every=2, nan_at_steps=[7])
    result = train(cfg)
    assert result.step == 12
    assert ("training diverged at step 7: 3 steps in a row were not applied (last: loss nan, gradient norm "
            in capsys.readouterr().out)
    for folder in ("latest", "best"):
        assert all(torch.isfinite(w).all() for w in weights(tmp_path / "nan" / folder).values())
    lr = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "nan") if "train_loss" in r}
    assert sorted(lr) == list(range(1, 13))

    def scheduled(step: int) -> float:  # the lr of step `step` (it is set from the step count before it)
        return cfg.lr * lr_scale(step - 1, warmup=cfg.warmup_steps, floor=cfg.min_lr_ratio, total=12)

    assert [lr[s] for s in (5, 6)] == pytest.approx([scheduled(s) for s in (5, 6)], rel=1e-12)
    assert [lr[s] for s in (7, 12)] == pytest.approx([0.5 * scheduled(s) for s in (7, 12)], rel=1e-12)


def test_a_learning_rate_that_diverges_stops_with_a_message_and_no_nan_weights(data_dir, tmp_path):
    """lr 10000 (the issue's case): nothing to roll back to before the first save, so the run stops."""
    with pytest.raises(RuntimeError, match=r"training diverged at step \d+: 3 steps in a row were not "
                                           r"applied .*no checkpoint to roll back to yet. Lower the"):
        train(config(data_dir, tmp_path / "lr", lr=1e4))
    assert not (tmp_path / "lr" / "latest").exists()


@pytest.mark.parametrize("fault", ["truncated weights", "bit flip in state.pt"])
def test_a_damaged_latest_falls_back_to_the_previous_checkpoint(data_dir, tmp_path, reference, capsys, fault):
    out = tmp_path / "run"
    train(config(data_dir, out, save_every=4, until_step=12))
    assert [p.name for p in sorted((out / "previous").iterdir())] == ["latest-step8"]
    file = out / "latest" / ("model.safetensors" if fault.startswith("truncated") else "state.pt")
    data = bytearray(file.read_bytes())
    if fault.startswith("truncated"):
        file.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0x10
        file.write_bytes(data)
    latest, best = re.escape(str(out / "latest")), re.escape(str(out / "best"))
    damaged = f"checkpoint {latest} is damaged: .* Use {best} instead"
    with pytest.raises(CheckpointError, match=damaged) if fault.startswith("truncated") else nullcontext():
        load_model(out / "latest")  # the weights of a bit-flipped state.pt's checkpoint are whole
    train(config(data_dir, out, save_every=4, resume=True))
    printed = capsys.readouterr().out
    why = ("model.safetensors has" if fault.startswith("truncated") else
           "state.pt does not match the SHA-256 recorded when it was written")
    assert f"skipped damaged checkpoint {out / 'latest'}: {why}" in printed
    assert f"resumed from {out / 'previous' / 'latest-step8'} at step 8" in printed
    assert [p.name.split("-")[:2] for p in (out / "damaged").iterdir()] == [["latest", "step12"]]  # set aside
    assert_same(weights(out / "latest"), reference)


def test_foreign_and_mismatched_checkpoints_and_pickled_code_get_clear_messages(data_dir, data_4096,
                                                                                tmp_path):
    out = tmp_path / "run"
    train(config(data_dir, out, max_steps=2, eval_every=100))
    # a Hugging Face folder is not ours
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["x"]}))
    (tmp_path / "hf" / "model.safetensors").write_bytes((out / "latest" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"hf is not a tinylib checkpoint: its config.json has no "
                                              r"'model' entry .* loads with tinylib.interop.hf"):
        load_model(tmp_path / "hf")
    # resuming with another model or another tokenizer's data names each difference
    with pytest.raises(CheckpointMismatchError, match=r"cannot resume from .*latest: it was saved by a "
                                                      r"different setup: d_model=64 \(this run: 32\)"):
        narrow = {**small_config(data_dir, out).model_overrides, "d_model": 32}
        train(config(data_dir, out, resume=True, model_overrides=narrow))
    with pytest.raises(CheckpointMismatchError, match=r"vocab_size=512 \(this run: 4096\).*tokenizer='"
                                                      r"tinystories-512' \(this run's data: 'tinystories-40"):
        train(config(data_4096, out, resume=True))
    # a state.pt carrying a pickled os.system call: refused, nothing runs
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Evil()}, out / "latest" / "state.pt")
    with pytest.raises(CheckpointError, match=r"state.pt holds pickled code \(posix.system\), which a "
                                              r"tinylib checkpoint never contains: it was refused and"):
        load_state(out / "latest")
    assert not marker.exists()


DISK_FULL = """
import os, sys, torch
from tinylib.train import main
from tinylib.checkpoint import save_checkpoint, load_model
out = sys.argv[1]
try:
    main(sys.argv[2:] + ["--out-dir", out])
except SystemExit as e:
    print("EXIT", e.code, flush=True)
print("FILES", sorted(os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs))
try:  # state the size estimate cannot see (a big pickled list): the write itself runs out of space
    model = load_model(out + "/best")
    save_checkpoint(out + "/other", model, {"step": 1}, state={"blob": list(range(10**6))})
except OSError as e:
    print("WRITE", type(e).__name__, e)
print("AFTER", sorted(os.listdir(out)))
"""


def test_a_full_disk_leaves_no_partial_file_and_names_the_folder_and_bytes(data_dir, tmp_path):
    """A 3 MiB tmpfs (a private mount namespace): best/ and one latest/ fit, the next latest/ does not."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = cli(data_dir, mnt / "run", save_every=2, eval_every=4, max_steps=12,
               config_file=tmp_path / "run.json")  # beside the mount point: the mount would hide it
    script = (f"mount -t tmpfs -o size=3m tmpfs {mnt} || exit 99; "
              f"{shlex.join([sys.executable, '-c', DISK_FULL, str(mnt / 'run'), *args[3:]])}")
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script], env=ENV, capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode == 99 or "unshare" in proc.stderr[:300]:
        pytest.skip(f"this machine cannot mount a small tmpfs in a private namespace: {proc.stderr.strip()}")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exit_line = next(line for line in lines if line.startswith("EXIT"))
    assert exit_line.startswith(f"EXIT error: disk full: checkpoint {mnt / 'run' / 'latest'} needs about ")
    assert "bytes free; nothing was written (the files already there are intact)" in exit_line
    files = next(line for line in lines if line.startswith("FILES"))
    assert ".tmp" not in files and "latest/model.safetensors" in files  # the earlier latest/ is whole
    write = next(line for line in lines if line.startswith("WRITE"))
    assert write.startswith(f"WRITE DiskFullError disk full: checkpoint {mnt / 'run' / 'other'} needs about")
    assert next(line for line in lines if line.startswith("AFTER")) == \
        "AFTER ['.lock', 'best', 'latest', 'metrics.jsonl']"


def test_a_killed_ddp_rank_ends_the_run_in_bounded_time_and_resume_continues(data_dir, tmp_path, reference):
    """2 gloo processes (micro-batch 2 each = the reference's 4); rank 1 is SIGKILLed once step 2 is saved."""
    out = tmp_path / "ddp"
    args = cli(data_dir, out, batch_size=2, save_every=1, dist_timeout_s=30)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                *args[1:]]
    proc = subprocess.Popen(torchrun, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: (step_of(out / "latest") or 0) >= 2, proc)
    rank1 = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    rank1[0].kill()
    t0 = time.monotonic()
    output, _ = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30 and proc.returncode != 0
    assert "error: rank 0: lost contact with another training process at step" in output
    killed_at = step_of(out / "latest")
    assert killed_at < STEPS
    done = subprocess.run([*torchrun, "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {out / 'latest'} at step {killed_at}" in done.stdout
    assert train_steps(out) == list(range(1, STEPS + 1))
    for k, v in weights(out / "latest").items():  # 2 x 2 rows all-reduced == 4 rows, to rounding
        torch.testing.assert_close(v, reference[k], atol=1e-5, rtol=1e-4)
