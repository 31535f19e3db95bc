"""fit_head: the best validation epoch's head is kept, epoch 0 is the untrained head, patience stops early."""
import torch
from torch import nn

from ace_lora.evaluation.dense.head_training import FitSettings, fit_head


def settings(**overrides):
    values = dict(epochs=30, lr=0.1, weight_decay=0.0, batch_size=8, patience=3, seed=0, device=torch.device("cpu"),
                  progress=False)
    return FitSettings(**{**values, **overrides})


def test_a_learnable_head_improves_and_the_best_state_is_restored():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0])
    head = nn.Linear(4, 1)
    loss = lambda h, idx: ((h(x[idx]).squeeze(-1) - y[idx]) ** 2).mean()  # noqa: E731
    validate = lambda h: -loss(h, torch.arange(64)).item()  # noqa: E731
    result = fit_head(head, 64, loss, validate, settings())
    assert result.best_epoch > 0 and result.best_score > result.records[0]["val_score"]
    assert validate(head) == result.best_score  # the head holds the best epoch's weights
    assert [r["epoch"] for r in result.records] == list(range(result.epochs_run + 1))


def test_a_head_that_never_improves_stops_after_patience_and_stays_untrained():
    head = nn.Linear(4, 1)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    result = fit_head(head, 16, lambda h, idx: h(torch.randn(len(idx), 4)).sum(), lambda h: 0.0,
                      settings(patience=2))
    assert result.best_epoch == 0 and result.epochs_run == 2
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())
