"""Contrastive losses: the CLIP InfoNCE loss, SigLIP's sigmoid loss, their label-guided variants, the registry.

LOSSES maps each `--loss` name (ace_lora.model.config.LOSS_KINDS) to a ContrastiveLoss; the trainer resolves
it once with `create_loss` (as open_clip's create_loss) and hands it to every step, and checkpoints
record the loss by that name.

Label-guided InfoNCE: for row i, every j != i whose CheXpert label vector equals row i's is not a
negative (two studies with the same findings are not a mismatch), so its logit is set to -inf in both
directions before the cross-entropies; the diagonal positive always stays.

Sigmoid loss (SigLIP-trained models, which have a logit bias b): -1/B sum_ij log sigmoid(z_ij (s x_i.y_j + b))
with z = +1 for a positive pair and -1 otherwise; label-guided, a pair whose label vectors are equal is a
positive too (with a sigmoid each pair is its own binary decision, so "not a negative" means "positive").
The default loss follows the model: label-guided sigmoid for a model with a logit bias, label-guided
InfoNCE otherwise (`default_loss`).
"""
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather

from ace_lora.errors import UserInputError
from ace_lora.model.config import LOSS_KINDS


def false_negative_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: True where j != i and labels[j] == labels[i] (all 14 entries)."""
    same = (labels[:, None, :] == labels[None, :, :]).all(dim=-1)
    return same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)


def label_guided_info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                          labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy over s * image @ text^T.

    image, text: (B, D) normalised embeddings; labels: (B, 14) or None for the plain CLIP loss.
    """
    logits = logit_scale * image.float() @ text.float().T  # (B, B)
    if labels is not None:
        logits = logits.masked_fill(false_negative_mask(labels), float("-inf"))  # the mask is symmetric
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def label_guided_sigmoid(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                         labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss over s * image @ text^T + b (summed over pairs, divided by B, as
    open_clip's SigLipLoss); labels (B, 14) make label-equal pairs positives."""
    logits = logit_scale * image.float() @ text.float().T + logit_bias  # (B, B)
    positive = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    if labels is not None:
        positive = positive | false_negative_mask(labels)
    signs = positive.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / len(logits)


def gather_batch(image: torch.Tensor, text: torch.Tensor, labels: Optional[torch.Tensor]):
    """All-gather embeddings (differentiable) and labels across ranks, in rank order.

    Each rank then computes the loss over the global batch. The all-gather backward sums the
    gradients of all ranks' (identical) losses, i.e. world_size * dL/dx, and DDP's gradient average
    divides by world_size again: the result is the gradient of one global-batch loss.
    """
    image = torch.cat(all_gather(image), dim=0)
    text = torch.cat(all_gather(text), dim=0)
    if labels is not None:
        gathered = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, labels)
        labels = torch.cat(gathered, dim=0)
    return image, text, labels


@dataclass(frozen=True)
class ContrastiveLoss:
    """A registered loss: `loss(image, text, scale, labels, bias)`; labels are used only if `uses_labels`,
    the logit bias (the model's own, trained) only by a `sigmoid` loss, which needs one."""

    name: str
    uses_labels: bool
    sigmoid: bool = False

    def __call__(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                 labels: Optional[torch.Tensor] = None, logit_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        labels = labels if self.uses_labels else None
        if self.sigmoid:
            return label_guided_sigmoid(image, text, logit_scale, logit_bias, labels)
        return label_guided_info_nce(image, text, logit_scale, labels)


LOSSES: Dict[str, ContrastiveLoss] = {name: ContrastiveLoss(name, **kind) for name, kind in LOSS_KINDS.items()}


def default_loss(has_logit_bias: bool) -> str:
    """The loss that follows the model: SigLIP-trained models (a logit bias) the sigmoid one."""
    return "label_guided_siglip" if has_logit_bias else "label_guided"


def create_loss(name: str, has_logit_bias: bool = False) -> ContrastiveLoss:
    """The registered loss `name` (None: `default_loss` of the model); a sigmoid loss needs a logit bias."""
    name = name or default_loss(has_logit_bias)
    if name not in LOSSES:
        raise UserInputError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    if LOSSES[name].sigmoid and not has_logit_bias:
        raise UserInputError(f"--loss {name} is SigLIP's sigmoid loss and needs a model with a logit bias (a SigLIP-"
                             "trained model); this one has none: use label_guided or clip")
    return LOSSES[name]
