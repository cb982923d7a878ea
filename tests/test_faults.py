"""Fault injection: training survives kills, signals, divergence, damaged checkpoints, a full disk, a second
run in the same folder and a lost DDP rank. Every case is real: real processes and signals, real files damaged
on disk, a real tmpfs, real gloo processes.

The data: 300 TinyStories stories tokenized with our 512-id BPE; the model: a 2-layer LLaMA (d_model 64,
115k parameters) trained for 24 steps of 4 x 32 tokens in fp32 without torch.compile (bitwise resume needs
it), one thread per process (the same arithmetic in every process). `reference` is that run uninterrupted.
"""

import dataclasses
import json
import os
import random
import re
import shlex
import shutil
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
from tinylib.batches import RandomBatches
from tinylib.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    TrainState,
    damage,
    load_model,
    load_state,
    step_of,
)
from tinylib.data import open_split, prepare_dataset, read_meta
from tinylib.faults import DivergenceGuard, RunExistsError, RunLockedError, free_run_folder
from tinylib.metrics import read_metrics
from tinylib.model import build_model
from tinylib.optim import configure_optimizer, lr_scale
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
    """Step 7's loss forced to NaN (three tries). latest/ holds step 6, whose weights no step has judged yet
    (step 7's loss is the first computed on them), so the run returns to previous/ (step 4) with lr x 0.5."""
    cfg = config(data_dir, tmp_path / "nan", max_steps=12, eval_every=4, save_every=2, nan_at_steps=[7])
    result = train(cfg)
    assert result.step == 12
    printed = capsys.readouterr().out
    assert ("training diverged at step 7: 3 steps in a row were not applied (last: loss nan, gradient norm "
            in printed)
    assert (f"rolled back to {tmp_path / 'nan' / 'previous' / 'latest-step4'} (step 4) with the peak lr x "
            f"0.5: {cfg.lr:.3g} -> {cfg.lr / 2:.3g} (rollback 1 of 2)" in printed)
    for folder in ("latest", "best"):
        assert all(torch.isfinite(w).all() for w in weights(tmp_path / "nan" / folder).values())
    lr = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "nan") if "train_loss" in r}
    assert sorted(lr) == list(range(1, 13))

    def scheduled(step: int) -> float:  # the lr of step `step` (it is set from the step count before it)
        return cfg.lr * lr_scale(step - 1, warmup=cfg.warmup_steps, floor=cfg.min_lr_ratio, total=12)

    assert [lr[s] for s in (3, 4)] == pytest.approx([scheduled(s) for s in (3, 4)], rel=1e-12)
    assert [lr[s] for s in (5, 12)] == pytest.approx([0.5 * scheduled(s) for s in (5, 12)], rel=1e-12)


def test_a_second_rollback_runs_at_a_quarter_of_the_lr_and_a_resumed_run_keeps_it(data_dir, tmp_path, capsys):
    """NaN at steps 7 and 11: the first rollback halves the peak lr, the second halves it again (it used to
    restore the optimizer's saved peak and halve that, retrying at x 0.5 twice)."""
    out = tmp_path / "nan2"
    cfg = config(data_dir, out, max_steps=14, eval_every=4, save_every=2, nan_at_steps=[7, 11])
    train(cfg)
    printed = capsys.readouterr().out
    assert f"with the peak lr x 0.5: {cfg.lr:.3g} -> {cfg.lr / 2:.3g} (rollback 1 of 2)" in printed
    assert "training diverged at step 11" in printed
    assert f"with the peak lr x 0.5: {cfg.lr / 2:.3g} -> {cfg.lr / 4:.3g} (rollback 2 of 2)" in printed
    lr = {r["step"]: r["lr"] for r in read_metrics(out) if "train_loss" in r}
    assert sorted(lr) == list(range(1, 15))
    scheduled = {s: cfg.lr * lr_scale(s - 1, warmup=cfg.warmup_steps, floor=cfg.min_lr_ratio, total=14)
                 for s in lr}
    assert [lr[s] / scheduled[s] for s in (4, 5, 8, 9, 14)] == pytest.approx([1, 0.5, 0.5, 0.25, 0.25])
    # saved with the checkpoint: the optimizer's peaks and the guard's count, which a resumed run takes up
    assert {g["base_lr"] for g in load_state(out / "latest")["optimizer"]["param_groups"]} == {cfg.lr / 4}
    assert json.loads((out / "latest" / "config.json").read_text())["guard_rollbacks"] == 2
    train(dataclasses.replace(cfg, resume=True, nan_at_steps=[]))
    printed = capsys.readouterr().out
    assert f"the divergence guard rolled back 2 time(s): peak lr {cfg.lr / 4:.3g}" in printed
    assert f"the run in {out} is finished: step 14 of the 14 it planned, so there is nothing left" in printed


def test_a_learning_rate_that_diverges_stops_with_a_message_and_no_nan_weights(data_dir, tmp_path):
    """lr 10000 (the issue's case): step 1's update multiplies the weights' norm by ~10^5 and leaves a finite
    loss (it used to be accepted and saved); the next verdict sees it, and with nothing saved yet the run
    stops."""
    with pytest.raises(RuntimeError, match=r"training diverged at step 2: the weights' norm went from "
                                           r"[\d.]+ to [\d.e+]+ in step 1 \(more than x 2\): that update "
                                           r"wrecked them.*no checkpoint to roll back to yet .*Lower the"):
        train(config(data_dir, tmp_path / "lr", lr=1e4))
    assert not (tmp_path / "lr" / "latest").exists()


def test_a_rollback_never_lands_on_the_weights_the_diverging_update_wrote(data_dir, tmp_path):
    """An update that wrecks the weights is applied (its own loss was computed before it) and may be saved:
    here latest/ holds step 7, weights x 1000. The next verdict reads their norm, refuses, and rolls back at
    once to step 6 (the newest checkpoint a later step confirmed), never to the wrecked latest/."""
    out = tmp_path / "run"
    cfg = config(data_dir, out, until_step=6, save_every=1, keep_previous=2)
    train(cfg)
    healthy = weights(out / "latest")
    model = build_model(cfg, read_meta(data_dir)["vocab_size"])
    batches = RandomBatches(open_split(data_dir, "train"), cfg.batch_size, cfg.seq_len, seed=cfg.seed)
    state = TrainState(model, configure_optimizer(model, cfg, torch.device("cpu")), batches)
    state.resume(out)
    guard = DivergenceGuard(cfg)
    guard.watch(model)
    assert guard.accept(7, torch.tensor(5.0), torch.tensor(1.0))  # step 7's loss judges step 6's weights
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1000)  # what step 7's update did
    state.step = 7
    state.save(out / "latest", {"tokenizer": "tinystories-512"}, keep_previous=2)
    guard.watch(model)
    assert not guard.accept(8, torch.tensor(5.0), torch.tensor(1.0)) and guard.must_roll_back()
    said = guard.roll_back(state, out, "tinystories-512", None)
    assert re.match(r"training diverged at step 8: the weights' norm went from [\d.]+ to [\d.e+]+ in step 7 "
                    r"\(more than x 2\): that update wrecked them", said), said
    assert f"rolled back to {out / 'previous' / 'latest-step6'} (step 6)" in said
    assert state.step == 6
    assert_same({k: v for k, v in model.state_dict().items() if k in healthy}, healthy)


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
    assert next(line for line in lines if line.startswith("EXIT")) == "EXIT 2"
    error = next(line for line in proc.stderr.splitlines() if line.startswith("error:"))
    assert error.startswith(f"error: disk full: checkpoint {mnt / 'run' / 'latest'} needs about ")
    assert "bytes free; nothing was written (the files already there are intact)" in error
    assert "Traceback" not in proc.stderr
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


# --- a new run never destroys an old one; a torn log line ---------------------------------------------------

def test_a_new_run_in_a_folder_holding_one_is_refused_and_overwrite_moves_it_aside(data_dir, tmp_path):
    out = tmp_path / "run"
    train(config(data_dir, out, max_steps=8, eval_every=4))
    before = weights(out / "latest")
    log = (out / "metrics.jsonl").read_text()
    with pytest.raises(RunExistsError, match=re.escape(f"{out} already holds a run (latest/ (step 8), best/ "
                                                       "(step 8)") + r".*--resume.*--overwrite"):
        train(config(data_dir, out, max_steps=4))
    assert_same(weights(out / "latest"), before)  # untouched
    assert (out / "metrics.jsonl").read_text() == log
    train(config(data_dir, out, max_steps=4, eval_every=2, overwrite=True))
    [aside] = tmp_path.glob("run.old-*")
    assert_same(weights(aside / "latest"), before)  # moved, not deleted
    assert (aside / "metrics.jsonl").read_text() == log
    assert step_of(out / "latest") == 4 and train_steps(out) == [1, 2, 3, 4]


def test_default_run_folders_do_not_collide_and_resume_finds_the_newest(tmp_path):
    base = tmp_path / "tiny-ts"
    assert free_run_folder(base, resume=False) == base
    (base / "latest").mkdir(parents=True)
    assert free_run_folder(base, resume=False) == tmp_path / "tiny-ts-2"
    (tmp_path / "tiny-ts-2" / "best").mkdir(parents=True)
    assert free_run_folder(base, resume=False) == tmp_path / "tiny-ts-3"
    assert free_run_folder(base, resume=True) == tmp_path / "tiny-ts-2"


def test_a_torn_last_line_in_the_metrics_log_is_dropped_with_a_warning_and_resume_works(data_dir, tmp_path,
                                                                                         reference):
    out = tmp_path / "run"
    train(config(data_dir, out, until_step=12))
    with (out / "metrics.jsonl").open("a") as f:  # a crash or a full disk cut this write off
        f.write('{"step": 13, "tokens": 1664, "train_lo')
    torn = re.escape(f"{out / 'metrics.jsonl'}:") + r"\d+: dropped a torn last line"
    with pytest.warns(UserWarning, match=torn):
        assert train_steps(out) == list(range(1, 13))
    with pytest.warns(UserWarning, match="dropped a torn last line"):
        train(config(data_dir, out, resume=True))
    assert_same(weights(out / "latest"), reference)
    assert train_steps(out) == list(range(1, STEPS + 1))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines.insert(3, "{not json")
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{out / 'metrics.jsonl'}:4: not a JSON record")):
        read_metrics(out)  # damage inside the log is not a torn write: it is named, not skipped


# --- one clear error per user mistake -----------------------------------------------------------------------

def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=300, cwd=cwd or Path(__file__).resolve().parents[1])


def assert_user_error(proc: subprocess.CompletedProcess, message: str) -> None:
    """Exit status 2, `error: ...` with the message on stderr, no traceback."""
    assert proc.returncode == 2, proc.stdout[-1000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.search(message, proc.stderr), proc.stderr[-2000:]
    assert proc.stderr.count("error: ") == 1 and proc.stderr.rstrip().splitlines()[-1].startswith("error: ")


def liar(data_dir, data_4096, tmp_path) -> Path:
    """Tokens of the 4096-id BPE under a meta.json copied from the 512-id folder."""
    folder = tmp_path / "liar"
    shutil.copytree(data_4096, folder)
    meta = json.loads((folder / "meta.json").read_text())
    true = json.loads((Path(data_dir) / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "tokenizer": true["tokenizer"], "vocab_size": 512}))
    return folder


TRAIN_MISTAKES = {  # case: (flags, message)
    "--config with invalid JSON": (["--config", "{bad}"], r"--config \S+bad.json: not valid JSON: Expecting"),
    "a typo in model_overrides": (["--model-overrides", '{"d_modle": 64}'],
                                  r"unknown ModelConfig fields \['d_modle'\]"),
    "a typo in --config's model_overrides": (["--config", '{"model_overrides": {"d_modle": 64}}'],
                                             r"unknown ModelConfig fields \['d_modle'\]"),
    "--max-steps 0": (["--max-steps", "0"], r"--max-steps 0 must be an integer >= 1"),
    "--max-steps -5": (["--max-steps", "-5"], r"--max-steps -5 must be an integer >= 1"),
    "--eval-every -1": (["--eval-every", "-1"], r"--eval-every -1 must be an integer >= 0 \(0: evaluate at"),
    "an unknown preset": (["--preset", "llama_huge"], r"preset='llama_huge' is not a preset; choose one of"),
    "--resume on a missing folder": (["--resume"], r"--resume: \S+ does not exist, so there is no run to "
                                                   r"continue"),
    "a model too large for the memory": (["--model-overrides", '{"d_model": 1000000, "n_head": 1}'],
                                         r"has [\d,]+ parameters \(d_model 1000000, .* need [\d,.]+ GiB \(16 "
                                         r"bytes per parameter\) but cpu has [\d,.]+ GiB available"),
    "meta.json lying about its tokenizer": (["--data", "LIAR"], r"train.bin holds token id [\d,]+ but "
                                            r"meta.json's vocabulary has 512 ids"),
    "a truncated token file": (["--data", "CUT"], r"train.bin has [\d,]+ bytes but meta.json says"),
}


@pytest.mark.parametrize("case", list(TRAIN_MISTAKES))
def test_a_training_mistake_prints_one_error_and_exits_2(data_dir, data_4096, tmp_path, case):
    flags, message = TRAIN_MISTAKES[case]
    out = tmp_path / "run"
    if "--config" in flags:
        text = flags[flags.index("--config") + 1]
        file = tmp_path / ("bad.json" if text == "{bad}" else "cfg.json")
        file.write_text(text if text == "{bad}" else json.dumps({**json.loads(text), "data": str(data_dir)}))
        flags = ["--config", str(file)]
    if "LIAR" in flags:
        flags = ["--data", str(liar(data_dir, data_4096, tmp_path))]
    if "CUT" in flags:
        cut = tmp_path / "cut"
        shutil.copytree(data_dir, cut)
        (cut / "train.bin").write_bytes((cut / "train.bin").read_bytes()[:-3])
        flags = ["--data", str(cut)]
    base = ["--data", str(data_dir), "--preset", "llama_tiny", "--out-dir", str(out), "--max-steps", "2",
            "--batch-size", "2", "--seq-len", "16", "--compile", "off", "--no-progress"]
    proc = run_cli("tinylib.train", *base, *flags)
    assert_user_error(proc, message)
    assert not out.exists()  # nothing made: no empty folder with a .lock


def test_mistakes_at_the_other_entry_points_print_one_error_and_exit_2(data_dir, tmp_path):
    (tmp_path / "defaults5.yaml").write_text("defaults: 5\nexperiments:\n  - name: a\n")
    cases = [
        (("tinylib.data", "--tokenizer", "nope", "--out", tmp_path / "d"), r"unknown tokenizer 'nope'"),
        (("tinylib.finetune", "--parent", tmp_path / "none"), r"no checkpoint at \S+none"),
        (("tinylib.finetune", "--max-steps", "0"), r"--max-steps 0 must be an integer >= 1"),
        (("tinylib.experiments", "list", tmp_path / "defaults5.yaml"),
         r"defaults5.yaml: defaults: expected a mapping of field\(s\) \(key: value lines\), got 5"),
        (("tinylib.interp.induction", "--data", tmp_path / "none"), r"no meta.json in \S+none"),
    ]
    for args, message in cases:
        assert_user_error(run_cli(*args), message)


def test_resume_edge_cases(data_dir, tmp_path, capsys):
    """A config.json without its step falls back to previous/; --resume on a finished run says so."""
    out = tmp_path / "run"
    train(config(data_dir, out, max_steps=8, save_every=2, eval_every=4))
    meta = json.loads((out / "latest" / "config.json").read_text())
    (out / "latest" / "config.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "step"}))
    capsys.readouterr()
    train(config(data_dir, out, max_steps=8, save_every=2, eval_every=4, resume=True))
    printed = capsys.readouterr().out
    assert f"skipped damaged checkpoint {out / 'latest'}: {out / 'latest' / 'config.json'} lacks ['step']" \
        in printed
    assert f"resumed from {out / 'previous' / 'latest-step6'} at step 6" in printed
    train(config(data_dir, out, max_steps=60, resume=True))
    assert (f"the run in {out} is finished: step 8 of the 8 it planned, so there is nothing left to train"
            in capsys.readouterr().out)


def test_stale_temp_folders_a_symlinked_latest_and_a_grown_state_file(data_dir, tmp_path):
    """A .latest.tmp-* left by SIGKILL is removed by the next save (one checkpoint's bytes each); a latest/
    that is a symlink is replaced with --keep-previous 0 (the second save failed with NotADirectoryError);
    a state.pt that grew is not called 'cut off'."""
    out = tmp_path / "run"
    train(config(data_dir, out, until_step=4, save_every=2, keep_previous=0))
    (out / ".latest.tmp-killed").mkdir()
    (out / ".latest.tmp-killed" / "model.safetensors").write_bytes(b"x" * 1000)
    elsewhere = tmp_path / "elsewhere"
    (out / "latest").rename(elsewhere)
    (out / "latest").symlink_to(elsewhere)
    train(config(data_dir, out, save_every=2, keep_previous=0, resume=True))
    assert not list(out.glob(".latest.tmp-*")) and not (out / "latest").is_symlink()
    assert step_of(out / "latest") == STEPS and step_of(elsewhere) == 4  # the link went, not its target
    with (out / "latest" / "state.pt").open("ab") as f:
        f.write(b"extra")
    assert "state.pt has" in damage(out / "latest") and "(grown since: appended to or replaced)" in damage(
        out / "latest")
