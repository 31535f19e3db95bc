"""One optimisation step: the schedule's shape, and that no non-finite loss, gradient or weight gets through."""
import math

import pytest
import torch

from ace_lora.errors import TrainingDiverged
from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.factory import build_model
from ace_lora.model.loss import create_loss
from ace_lora.train.distributed import DistributedContext
from ace_lora.train.step import all_finite, train_step, warmup_cosine_schedule


def test_warmup_then_cosine():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine_schedule(optimizer, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.0, 0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3)]
    assert lrs == pytest.approx(expected)


def step_setup(model_name, lr=1e-3):
    torch.manual_seed(0)
    model = build_model(model_name, AceLoRAConfig())
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=lr)
    schedule = warmup_cosine_schedule(optimizer, 0, 10)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ids = model.tokenize(["findings suggesting edema", "there is pneumonia"])
    batch = (torch.rand(2, 3, 64, 64), ids, torch.eye(2, 14))  # different labels: a negative pair
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    return model, optimizer, schedule, scaler, batch, context


def run(model, optimizer, schedule, scaler, batch, context):
    return train_step(model, batch, optimizer, schedule, scaler, device=torch.device("cpu"), precision="fp32",
                      loss_fn=create_loss("label_guided"), gather_negatives=False, context=context)


def test_a_nan_gradient_stops_before_the_update(tiny_model_name):
    model, *rest = step_setup(tiny_model_name)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.image_hgnn.edge_adapter.down.weight.register_hook(lambda grad: grad * float("nan"))
    with pytest.raises(TrainingDiverged, match="a gradient became NaN or infinite"):
        run(model, *rest)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, before[name]), name  # no update was applied


def test_an_update_that_makes_a_weight_non_finite_stops_the_step(tiny_model_name):
    model, optimizer, *rest = step_setup(tiny_model_name)
    optimizer.param_groups[0]["lr"] = float("inf")  # finite loss and gradients, an infinite update
    with pytest.raises(TrainingDiverged, match="a trained weight became NaN or infinite in the update"):
        run(model, optimizer, *rest)


def test_a_finite_step_returns_the_loss_and_the_step_s_learning_rate(tiny_model_name):
    model, *rest = step_setup(tiny_model_name)
    loss, lr = run(model, *rest)
    assert loss > 0 and lr == 1e-3 and all_finite(model.trainable_parameters())
    assert all_finite([]) and not all_finite([torch.tensor([1.0, float("inf")])])
