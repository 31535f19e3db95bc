"""The ACE-LoRA model: the frozen backbone plus LoRA, the hypergraph adapters and the scale."""
import torch
import torch.nn.functional as F

from ace_lora.model.backbone import load_backbone
from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.model import AceLoRAModel


def _randomise_lora(model):
    g = torch.Generator().manual_seed(0)
    for layers in (model.text_lora, model.vision_lora):
        for parts in layers.values():
            for factors in parts.values():
                factors.lora_B.data = 0.05 * torch.randn(factors.lora_B.shape, generator=g)


def test_model_lora_zero_b_unchanged_merged_equals_unmerged(tiny_model_name):
    torch.manual_seed(0)
    bare = AceLoRAModel(load_backbone(tiny_model_name), AceLoRAConfig(params=[], apply_gnn_encoders="none")).eval()
    model = AceLoRAModel(load_backbone(tiny_model_name), AceLoRAConfig(apply_gnn_encoders="none")).eval()
    images = torch.randn(2, 3, 64, 64)
    ids = model.tokenize(["findings suggesting edema.", "a chest x-ray image of pneumonia."])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), bare.encode_image(images))
        torch.testing.assert_close(model.encode_text(ids), bare.encode_text(ids))
        _randomise_lora(model)
        img, txt = model.encode_image(images), model.encode_text(ids)
        assert not torch.allclose(img, bare.encode_image(images), atol=1e-4)
        model.merge_lora(True)
        torch.testing.assert_close(model.encode_image(images), img, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.encode_text(ids), txt, rtol=1e-4, atol=1e-5)
        model.merge_lora(False)
        torch.testing.assert_close(model.encode_image(images), img, rtol=1e-4, atol=1e-5)


def test_only_lora_adapters_and_scale_train(tiny_model_name):
    model = AceLoRAModel(load_backbone(tiny_model_name), AceLoRAConfig())
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(("lora_" in n) or ("_hgnn." in n) or n == "logit_scale" for n in names)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("base.weight" in n for n in frozen) and any("embeddings" in n for n in frozen)
    # 2 BERT layers + 6 ViT blocks, q/k/v, widths 64: (4*64 + 64*4) each; 4 adapters 64<->128; 1 scale.
    expected = 8 * 3 * (4 * 64 + 64 * 4) + 4 * (64 * 128 + 128 + 128 * 64 + 64) + 1
    assert model.num_trainable() == expected


def test_embeddings_are_token_0_of_the_refined_normalised_tokens(tiny_model_name):
    torch.manual_seed(0)
    model = AceLoRAModel(load_backbone(tiny_model_name), AceLoRAConfig()).eval()
    images = torch.randn(2, 3, 64, 64)
    ids = model.tokenize(["findings suggesting edema.", "a chest x-ray image of pneumonia."])
    with torch.no_grad():
        tokens, attention = model.image_tokens(images)  # (B, N, D), (B, N-1)
        assert tokens.shape[:2] == (2, 17) and attention.shape == (2, 16)
        refined = model.image_hgnn(F.normalize(tokens, dim=-1), attention)
        torch.testing.assert_close(model.encode_image(images), refined[:, 0])
        text = model.encode_text(ids)
        torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
        # A prompt ensemble of one template is the plain text embedding.
        torch.testing.assert_close(model.encode_prompt_ensemble(ids, 1), text)
    image_emb, text_emb, scale, bias = model(images, ids)
    assert bias is None  # BiomedCLIP has no logit bias
    assert scale is model.logit_scale and scale.item() == model.base_logit_scale().item()
