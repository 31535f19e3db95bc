"""DDP on CPU (gloo): gathered negatives reproduce the single-process global-batch loss and gradients;
train_multi_gpu.py runs under torchrun; the launcher environment is read correctly."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from ace_lora.errors import UserInputError
from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.factory import build_model
from ace_lora.model.loss import create_loss
from ace_lora.train.distributed import (
    StoppedByMainRank,
    barrier,
    init_distributed,
    run_on_main,
    shutdown,
    single_process,
    world_from_env,
)
from ace_lora.train.step import train_step, warmup_cosine_schedule, wrap_ddp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORLD, PER_RANK = 2, 3
REPORTS = ["there is edema.", "findings suggesting pneumonia.", "a chest x-ray image of atelectasis.",
           "there is pleural effusion.", "findings suggesting edema.", "there is cardiomegaly."]


def global_batch(model):
    generator = torch.Generator().manual_seed(7)
    images = torch.randn(WORLD * PER_RANK, 3, 64, 64, generator=generator)
    labels = torch.zeros(WORLD * PER_RANK, 14)
    labels[[0, 4], 3] = 1  # rows 0 (rank 0) and 4 (rank 1) share a label: not negatives of each other
    labels[[1, 2], 11] = 1  # a same-label pair within rank 0
    labels[3, 9] = labels[5, 1] = 1
    return images, model.tokenize(REPORTS), labels


def seeded_model(model_name):
    """Dropout off everywhere (LoRA p=0, eval mode) and non-zero B, so every LoRA factor gets a gradient."""
    torch.manual_seed(0)
    model = build_model(model_name, AceLoRAConfig(dropout=0.0)).eval()
    model.use_loss(model_loss(model))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    return model


def model_loss(model):
    """The loss that follows the model: label-guided InfoNCE, or the label-guided sigmoid loss for SigLIP."""
    return create_loss(None, has_logit_bias=model.logit_bias is not None)


def loss_and_grads(model, step_model, batch, context, gather=True):
    """train_step's loss and the trainables' gradients (lr 0: the weights stay, the gradients remain readable)."""
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.0)
    loss, _ = train_step(step_model, batch, optimizer, warmup_cosine_schedule(optimizer, 0, 1),
                         torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"), precision="fp32",
                         loss_fn=model_loss(model), gather_negatives=gather, context=context)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def ddp_worker(rank, model_name, port, out_path):
    """One of two gloo ranks: loss and gradients on its half of the batch, with and without gathering."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    model = seeded_model(model_name)
    images, ids, labels = global_batch(model)
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    ddp = wrap_ddp(model, context.device)
    results = {gather: loss_and_grads(model, ddp, (images[mine], ids[mine], labels[mine]), context, gather)
               for gather in (True, False)}
    if rank == 0:
        torch.save(results, out_path)
    shutdown(context)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["biomedclip", "hf-siglip"])
def test_gathered_negatives_match_one_process_on_the_global_batch(tiny_model_name, tiny_transformers, tmp_path,
                                                                    layout):
    """Two gloo ranks with gathered negatives: the loss and every trainable's gradient of one process on the
    global batch (BiomedCLIP's label-guided InfoNCE; a transformers SigLIP's sigmoid loss with its trained bias)."""
    model_name = tiny_model_name if layout == "biomedclip" else tiny_transformers["siglip"]
    model = seeded_model(model_name)
    loss, grads = loss_and_grads(model, model, global_batch(model), single_process("cpu"))

    out = tmp_path / "rank0.pt"
    mp.spawn(ddp_worker, args=(model_name, free_port(), str(out)), nprocs=WORLD, join=True)
    gathered_loss, gathered_grads = torch.load(out, weights_only=True)[True]
    assert gathered_loss == pytest.approx(loss, abs=1e-5)
    assert gathered_grads.keys() == grads.keys()
    assert any(".lora_A" in n for n in grads) and all(g.abs().sum() > 0 for g in grads.values())
    # the tolerance, 1e-5, absolute; measured max difference on CPU: 6e-8 (float32 summation order)
    for name, grad in grads.items():
        torch.testing.assert_close(gathered_grads[name], grad, atol=1e-5, rtol=1e-6, msg=name)
    local_loss, _ = torch.load(out, weights_only=True)[False]  # per-rank negatives: a different objective
    assert abs(local_loss - loss) > 1e-3


def failing_on_main_worker(rank, port, out_dir):
    """Rank 0's work fails: both ranks must leave run_on_main with an error (not wait in a collective)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    context = init_distributed("cpu")

    def work():
        raise UserInputError("cannot read image x.jpg")
    try:
        assert run_on_main(lambda: "ok", context, "evaluation") == ("ok" if rank == 0 else None)
        run_on_main(work, context, "evaluation")
        outcome = "no error"
    except UserInputError as error:
        outcome = f"{type(error).__name__}: {error}"
    barrier(context)  # the group is still usable: every rank got here
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(outcome)
    shutdown(context)


def test_a_failure_on_rank_0_stops_every_rank(tmp_path):
    mp.spawn(failing_on_main_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    assert (tmp_path / "rank0.txt").read_text() == "UserInputError: cannot read image x.jpg"
    assert (tmp_path / "rank1.txt").read_text() == (f"{StoppedByMainRank.__name__}: rank 1: stopping because "
                                                    "evaluation failed on rank 0 (see its error)")


@pytest.mark.slow
def test_torchrun_demo_on_cpu(tmp_path):
    out = tmp_path / "ddp_demo"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           os.path.join(ROOT, "train_multi_gpu.py"), "--demo", "--max-steps", "3", "--output-dir",
                           str(out), "--no-progress"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout and done.stdout.count("training 78593 parameters") == 1  # rank 0 only
    last = torch.load(out / "checkpoints/last.pt", weights_only=True)
    assert last["step"] == 3 and len(last["rng"]) == 2  # every rank's RNG state is kept
    assert last["config"]["batch_size"] == 25 and last["steps_per_epoch"] == 600 // (2 * 25)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [0, 3]  # before training, and the final weights
    assert (out / "ACE-LoRA_weights_last.pt").is_file() and (out / "demo_metrics.json").is_file()


def test_world_from_launcher_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_STEP_ID",
                 "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    assert world_from_env() is None
    monkeypatch.setenv("SLURM_PROCID", "0")  # an `salloc -n 8` (or batch) shell: no srun step, no ranks to wait for
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert world_from_env() is None
    monkeypatch.setenv("SLURM_STEP_ID", "0")  # a task of `srun -n 8`
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert world_from_env() == (5, 1, 8)
    monkeypatch.setenv("RANK", "3")  # torchrun's variables win
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert world_from_env() == (3, 3, 4)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(UserInputError, match="MASTER_ADDR and MASTER_PORT not set"):
        init_distributed("cpu")
