import math

import pytest
import torch
import torch.nn.functional as F

from ace_lora.model.loss import false_negative_mask, label_guided_info_nce


def test_false_negative_mask():
    labels = torch.tensor([[1, 0], [1, 0], [0, 1]], dtype=torch.float)
    mask = false_negative_mask(labels)
    assert mask.tolist() == [[False, True, False], [True, False, False], [False, False, False]]


def test_clip_loss_matches_hand_computation():
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    s = 2.0
    logits = s * img @ txt.T
    row0 = -torch.log_softmax(logits[0], 0)[0]
    row1 = -torch.log_softmax(logits[1], 0)[1]
    col0 = -torch.log_softmax(logits[:, 0], 0)[0]
    col1 = -torch.log_softmax(logits[:, 1], 0)[1]
    expected = ((row0 + row1) / 2 + (col0 + col1) / 2) / 2
    torch.testing.assert_close(label_guided_info_nce(img, txt, torch.tensor(s)), expected)


def test_false_negative_leaves_the_denominator():
    """Rows 0 and 1 share labels: each one's loss is as if the other were not in the batch."""
    torch.manual_seed(0)
    img = F.normalize(torch.randn(3, 4), dim=-1)
    txt = F.normalize(torch.randn(3, 4), dim=-1)
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    s = 10.0
    logits = s * img @ txt.T
    # Row 0 (image -> text): denominator over texts {0, 2}; row 2 keeps all three.
    i2t = [-(logits[0, 0] - torch.logsumexp(logits[0, [0, 2]], 0)),
           -(logits[1, 1] - torch.logsumexp(logits[1, [1, 2]], 0)),
           -(logits[2, 2] - torch.logsumexp(logits[2], 0))]
    t2i = [-(logits[0, 0] - torch.logsumexp(logits[[0, 2], 0], 0)),
           -(logits[1, 1] - torch.logsumexp(logits[[1, 2], 1], 0)),
           -(logits[2, 2] - torch.logsumexp(logits[:, 2], 0))]
    expected = (sum(i2t) / 3 + sum(t2i) / 3) / 2
    got = label_guided_info_nce(img, txt, torch.tensor(s), labels)
    torch.testing.assert_close(got, expected)
    assert not math.isclose(got.item(), label_guided_info_nce(img, txt, torch.tensor(s)).item(), rel_tol=1e-4)


def test_all_identical_labels_give_zero_loss_and_finite_grads():
    img = F.normalize(torch.randn(4, 3), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(4, 3), dim=-1)
    loss = label_guided_info_nce(img, txt, torch.tensor(5.0), torch.ones(4, 14))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(img.grad).all()


def test_the_loss_registry_resolves_each_name_once_and_the_clip_loss_ignores_labels():
    from ace_lora.errors import UserInputError
    from ace_lora.model.config import LOSS_KINDS
    from ace_lora.model.loss import LOSSES, create_loss
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    labels = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 0]])
    scale = torch.tensor(10.0)
    assert tuple(LOSSES) == tuple(LOSS_KINDS)
    assert [(loss.uses_labels, loss.sigmoid) for loss in LOSSES.values()] == [(True, False), (False, False),
                                                                              (False, True), (True, True)]
    assert create_loss("label_guided")(image, text, scale, labels) == label_guided_info_nce(image, text, scale, labels)
    assert create_loss("clip")(image, text, scale, labels) == label_guided_info_nce(image, text, scale, None)
    assert create_loss("label_guided")(image, text, scale, labels) != create_loss("clip")(image, text, scale, labels)
    with pytest.raises(UserInputError, match="unknown loss 'focal'"):
        create_loss("focal")


def test_the_sigmoid_loss_against_a_direct_computation():
    """SigLIP: -1/B sum_ij log sigmoid(z_ij (s x_i.y_j + b)), z = +1 on positives; label-guided: equal label
    vectors are positives too. Computed pair by pair here."""
    from ace_lora.errors import UserInputError
    from ace_lora.model.loss import create_loss, default_loss
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    labels = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 0]])  # rows 0 and 1 share their labels
    scale, bias = torch.tensor(10.0), torch.tensor(-3.0)

    def direct(same):
        total = 0.0
        for i in range(4):
            for j in range(4):
                z = 1.0 if i == j or same(i, j) else -1.0
                total += -math.log(1 / (1 + math.exp(-z * (scale.item() * float(image[i] @ text[j]) + bias.item()))))
        return total / 4

    plain = create_loss("siglip", has_logit_bias=True)(image, text, scale, labels, bias)
    guided = create_loss("label_guided_siglip", has_logit_bias=True)(image, text, scale, labels, bias)
    assert plain.item() == pytest.approx(direct(lambda i, j: False), rel=1e-5)
    assert guided.item() == pytest.approx(direct(lambda i, j: bool((labels[i] == labels[j]).all())), rel=1e-5)
    assert guided.item() != pytest.approx(plain.item(), rel=1e-3)
    assert default_loss(has_logit_bias=True) == "label_guided_siglip" and default_loss(False) == "label_guided"
    assert create_loss(None, has_logit_bias=True).name == "label_guided_siglip"
    with pytest.raises(UserInputError, match="--loss siglip is SigLIP's sigmoid loss and needs a model with a logit"):
        create_loss("siglip", has_logit_bias=False)
