"""ACE-LoRA on open_clip's own architecture (OpenAI CLIP's: VisionTransformer + causal TextTransformer inlined in
CLIP), on a tiny random config written offline: families, counts, frozen-model equality, training, checkpoints,
export to plain open_clip, and the refusals."""
import json
import os

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

import train
from ace_lora.errors import UserInputError
from ace_lora.model.checkpoint import read_released_checkpoint, save_released_checkpoint
from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.export import export_model
from ace_lora.model.factory import build_model, load_model_for_eval
from ace_lora.model.loss import create_loss
from ace_lora.model.tiny_model import TINY_OPENCLIP, write_tiny_openclip
from ace_lora.model.towers import FusedMultiheadAttention
from ace_lora.train.distributed import single_process
from ace_lora.train.step import train_step, warmup_cosine_schedule
from tests.conftest import error_exit_line

TEXTS = ["a chest x-ray image of edema.", "findings suggesting pleural effusion."]


@pytest.fixture(scope="module")
def openclip_name(tmp_path_factory):
    return write_tiny_openclip(str(tmp_path_factory.mktemp("tiny_openclip")))


def frozen(name):
    clip = open_clip.create_model_and_transforms(name)[0].eval()
    return clip


def images(n=3, size=64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def random_lora(model, std=0.05):
    torch.manual_seed(1)
    for layers in (model.text_lora, model.vision_lora):
        for parts in layers.values():
            for factors in parts.values():
                torch.nn.init.normal_(factors.lora_B, std=std)


def hand_count(cfg, r=4, projections=3, hidden=128, hgnn_towers=2):
    """LoRA (A: r x width, B: width x r) per projection and layer of both towers, the adapters, the scale."""
    lora = sum(tower["layers"] * projections * 2 * r * tower["width"] for tower in (cfg["vision_cfg"], cfg["text_cfg"]))
    dim = cfg["embed_dim"]
    adapter = dim * hidden + hidden + hidden * dim + dim
    return lora + hgnn_towers * 2 * adapter + 1


def test_the_towers_of_an_open_clip_model_and_their_counts(openclip_name):
    model = build_model(openclip_name)
    assert type(model.clip).__name__ == "CLIP"  # the text tower is inlined: there is no clip.text
    assert (model.vision.family, model.text.family) == ("open_clip-vit", "open_clip-text")
    assert model.architecture == {"vision": {"family": "open_clip-vit", "layers": 2, "output_dim": 64},
                                  "text": {"family": "open_clip-text", "layers": 2, "output_dim": 64}}
    assert all(isinstance(block.attn, FusedMultiheadAttention) for block in model.clip.visual.transformer.resblocks)
    assert model.num_trainable() == hand_count(TINY_OPENCLIP) == 72_449
    wider = build_model(openclip_name, AceLoRAConfig(r=8, params=["q", "v", "o"], apply_gnn_encoders="vision"))
    assert wider.num_trainable() == hand_count(TINY_OPENCLIP, r=8, hgnn_towers=1)  # o: width x width, as q/k/v
    assert model.embed_dim == 64 and model.image_hgnn.edge_adapter.down.in_features == 64  # widths from the model


def test_untrained_lora_leaves_the_frozen_models_embeddings(openclip_name):
    """B = 0: token 0 of each tower is the frozen model's own embedding; the bare model's embeddings are too."""
    clip = frozen(openclip_name)
    model = build_model(openclip_name).eval()
    ids = model.tokenize(TEXTS)
    with torch.no_grad():
        image_tokens, image_attention = model.image_tokens(images())
        text_tokens, text_attention = model.text_tokens(ids)
        torch.testing.assert_close(image_tokens[:, 0], clip.encode_image(images()), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(text_tokens[:, 0], clip.encode_text(ids), atol=1e-5, rtol=1e-5)
        bare = build_model(openclip_name, AceLoRAConfig(params=[], apply_gnn_encoders="none")).eval()
        torch.testing.assert_close(bare.encode_text(ids), F.normalize(clip.encode_text(ids), dim=-1), atol=1e-6,
                                   rtol=1e-6)
    assert image_tokens.shape == (3, 17, 64) and image_attention.shape == (3, 16)  # class token + 4x4 patches
    assert text_tokens.shape == (2, 32, 64) and text_attention.shape == (2, 31)
    # the end-of-text token plays the CLS role: under the causal mask it sees the positions before it only
    eot = ids.argmax(dim=-1)
    for row in range(2):
        assert text_attention[row, eot[row]:].abs().max() == 0 and text_attention[row, :eot[row]].min() > 0


def test_one_step_changes_only_the_trainables(openclip_name):
    torch.manual_seed(0)
    model = build_model(openclip_name).train()
    batch = (images(4).clamp(-2, 2), model.tokenize(TEXTS * 2), torch.eye(14)[:4])
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):  # B starts at 0: A moves from the second step on
        train_step(model, batch, optimizer, warmup_cosine_schedule(optimizer, 0, 10),
                   torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"), precision="fp32",
                   loss_fn=create_loss("label_guided"), gather_negatives=False, context=single_process("cpu"))
    for name, p in model.named_parameters():
        assert (not torch.equal(p, before[name])) == p.requires_grad, name


def test_checkpoints_record_the_architecture_and_load_only_onto_it(openclip_name, tiny_model_name, tmp_path):
    model = build_model(openclip_name, AceLoRAConfig()).eval()
    random_lora(model)
    path = str(tmp_path / "weights.pt")
    save_released_checkpoint(model, path)
    assert read_released_checkpoint(path)["metadata"]["architecture"] == model.architecture
    loaded = load_model_for_eval(openclip_name, path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images()), model.encode_image(images()), atol=1e-5, rtol=1e-5)
    with pytest.raises(UserInputError, match=r"trained on another vision tower \(family open_clip-vit, layers 2, "
                                             r"output_dim 64; this model: family timm-vit"):
        load_model_for_eval(tiny_model_name, path)
    biomedclip_file = str(tmp_path / "biomedclip.pt")  # BiomedCLIP's files record no architecture, as released
    save_released_checkpoint(build_model(tiny_model_name), biomedclip_file)
    assert "architecture" not in read_released_checkpoint(biomedclip_file)["metadata"]
    with pytest.raises(UserInputError, match=r"trained on BiomedCLIP's architecture \(timm ViT \+ BERT\); this model "
                                             r"has open_clip-vit \+ open_clip-text"):
        load_model_for_eval(openclip_name, biomedclip_file)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_export_merges_into_the_fused_in_proj_and_loads_with_plain_open_clip(openclip_name, tmp_path, method):
    from ace_lora.model.methods import get_method, peft_config_for
    cfg = AceLoRAConfig(method=method, params=["q", "k", "v", "o"] if method == "lora" else [],
                        apply_gnn_encoders="none", peft=peft_config_for(method, 4, 1.0, 0.0))
    model = build_model(openclip_name, cfg).eval()
    if get_method(method).own_lora:
        random_lora(model)
    else:  # peft: move its adapters away from their identity initialisation
        torch.manual_seed(2)
        for p in model.clip.parameters():
            if p.requires_grad:
                p.data.add_(torch.randn_like(p) * 0.05)
    export_model(model, openclip_name, str(tmp_path / "export"))
    clip = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'export'}")[0].eval()  # plain open_clip
    ids = model.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(clip.encode_image(images()), dim=-1), model.encode_image(images()),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(F.normalize(clip.encode_text(ids), dim=-1), model.encode_text(ids), atol=1e-5,
                                   rtol=1e-5)
    summary = json.loads((tmp_path / "export" / "ace_lora_config.json").read_text())
    assert summary["architecture"] == model.architecture


def test_zero_shot_and_prediction_follow_the_model(openclip_name, tmp_path):
    from PIL import Image

    from ace_lora.evaluation.predict import Predictor
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (70, 60), dtype=np.uint8)).save(paths[-1])
    model = load_model_for_eval(openclip_name)
    predictor = Predictor(model, torch.device("cpu"))
    probabilities = predictor.classify(paths, ["edema", "pneumonia"])
    assert probabilities.shape == (4, 2) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-6)
    maps = predictor.similarity_maps(paths[:1], ["edema"])
    assert maps[0].shape == (1, 70, 60)  # from the 4x4 patch grid up to the image's own size


def test_train_py_on_an_open_clip_model_and_its_refusals(openclip_name, capsys):
    train.main(["--dry-run", "--model", openclip_name])
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"trainable parameters: {hand_count(TINY_OPENCLIP)}"
    line = error_exit_line(capsys, train.main, ["--dry-run", "--model", "ViT-B-33"])
    assert line.startswith("error: unknown model 'ViT-B-33' (close: ViT-B-32") and "open_clip.list_models()" in line
    line = error_exit_line(capsys, train.main, ["--dry-run", "--model", "ViT-B-32", "--pretrained", "nope"])
    assert line.startswith("error: ViT-B-32 has no pretrained weights 'nope'; its tags: openai")
    line = error_exit_line(capsys, train.main, ["--dry-run", "--model", openclip_name, "--position", "bottom"])
    assert line == "error: LoRA position 'bottom' selects no layer of a 2-layer tower"
    line = error_exit_line(capsys, train.main, ["--dry-run", "--model", openclip_name, "--pretrained", "openai"])
    assert line.startswith("error: --pretrained is for open_clip model names")


def test_an_unsupported_tower_is_one_line(tmp_path, capsys):
    resnet = write_tiny_openclip(str(tmp_path / "resnet"), vision_cfg={"layers": [1, 1, 1, 1], "width": 16,
                                                                       "head_width": 16, "image_size": 64})
    line = error_exit_line(capsys, train.main, ["--dry-run", "--model", resnet])
    assert line.startswith("error: image tower ModifiedResNet is not supported; supported: timm ViT image towers")


def test_the_real_architectures_trainable_counts():
    """ViT-B-32 with random weights (no download): LoRA on q, k, v of 12 layers of width 768 (image) and 512
    (text), the adapters in the 512-d joint space, the scale."""
    cfg = open_clip.get_model_config("ViT-B-32")
    model = build_model("ViT-B-32")
    assert model.num_trainable() == hand_count(cfg) == 895_489


def test_the_demo_learns_on_an_open_clip_model(tmp_path):
    out = tmp_path / "demo"
    assert train.main(["--demo", "--demo-model", "openclip", "--output-dir", str(out), "--epochs", "6",
                       "--no-progress"]) == 0
    metrics = json.loads((out / "demo_metrics.json").read_text())
    assert metrics["auroc_after"] > metrics["auroc_before"] + 0.1
    assert os.path.isdir(out / "demo_data" / "tiny_openclip")


# ---- SigLIP's structure: a timm ViT with an attention-pool (MAP) head, a bidirectional text tower, a logit bias
@pytest.fixture(scope="module")
def siglip_name(tmp_path_factory):
    from ace_lora.model.tiny_model import write_tiny_siglip
    return write_tiny_siglip(str(tmp_path_factory.mktemp("tiny_siglip")))


def test_a_siglip_shaped_model_pools_with_its_latent_query_and_trains_its_bias(siglip_name, tmp_path):
    clip = frozen(siglip_name)
    model = build_model(siglip_name).eval()
    assert model.architecture["vision"] == {"family": "timm-vit", "layers": 6, "output_dim": 64, "head": "map"}
    assert model.architecture["text"]["family"] == "open_clip-text" and model.text.pool_type == "last"
    assert model.logit_bias.requires_grad and model.logit_bias.item() == clip.logit_bias.item()
    plain_count = build_model(siglip_name, AceLoRAConfig(apply_gnn_encoders="none")).num_trainable()
    assert model.num_trainable() == plain_count + 4 * (64 * 128 + 128 + 128 * 64 + 64)  # the bias is in both
    ids = model.tokenize(TEXTS)
    with torch.no_grad():
        image_tokens, attention = model.image_tokens(images())
        torch.testing.assert_close(image_tokens[:, 0], clip.encode_image(images()), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.text_tokens(ids)[0][:, 0], clip.encode_text(ids), atol=1e-5, rtol=1e-5)
    assert image_tokens.shape == (3, 17, 64) and attention.shape == (3, 16)  # the pooled token + the 16 patches
    # the released format carries the trained bias; the default loss follows the model (the sigmoid one)
    with torch.no_grad():
        model.logit_bias.fill_(-4.5)
    path = str(tmp_path / "siglip.pt")
    save_released_checkpoint(model, path, loss="label_guided_siglip")
    assert read_released_checkpoint(path)["weights"]["logit_bias"].item() == -4.5
    assert load_model_for_eval(siglip_name, path).logit_bias.item() == -4.5


def test_train_py_picks_the_sigmoid_loss_for_a_siglip_shaped_model(siglip_name, openclip_name, tmp_path, capsys):
    from ace_lora.data.synthetic import write_demo_dataset
    data = write_demo_dataset(str(tmp_path / "data"), n_train=8, n_test_per_class=1)
    out = tmp_path / "run"
    assert train.main(["--model", siglip_name, "--train-csv", data.train_csv, "--output-dir", str(out),
                       "--batch-size", "4", "--epochs", "1", "--num-workers", "0", "--device", "cpu",
                       "--no-progress"]) == 0
    assert "loss: label_guided_siglip" in (out / "config.yaml").read_text()
    trained = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert trained["trainable"]["logit_bias"].item() != -10.0  # the bias trained
    line = error_exit_line(capsys, train.main, ["--model", openclip_name, "--train-csv", data.train_csv, "--output-dir",
                                                str(tmp_path / "clip"), "--loss", "siglip", "--num-workers", "0"])
    assert line.startswith("error: --loss siglip is SigLIP's sigmoid loss and needs a model with a logit bias")


def test_openai_weights_get_their_quick_gelu_and_bool_masks_keep_their_meaning():
    from ace_lora.model.backbone import named_model
    assert named_model("ViT-B-32@openai") == ("ViT-B-32", "openai", True)  # trained with QuickGELU (open_clip warns)
    assert named_model("ViT-B-32")[2] is False
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    fused = FusedMultiheadAttention(mha).eval()
    x = torch.randn(2, 5, 8)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)  # nn.MultiheadAttention: True = not allowed
    with torch.no_grad():
        torch.testing.assert_close(fused(x, x, x, attn_mask=causal)[0], mha(x, x, x, attn_mask=causal)[0],
                                   atol=1e-6, rtol=1e-5)
    with pytest.raises(NotImplementedError):
        fused(x, torch.randn(2, 5, 8), x)


def test_a_siglip_model_trained_with_infonce_freezes_its_bias(siglip_name, tmp_path):
    from ace_lora.data.synthetic import write_demo_dataset
    data = write_demo_dataset(str(tmp_path / "data"), n_train=8, n_test_per_class=1)
    out = tmp_path / "run"
    assert train.main(["--model", siglip_name, "--train-csv", data.train_csv, "--output-dir", str(out),
                       "--batch-size", "4", "--epochs", "1", "--num-workers", "0", "--device", "cpu", "--loss", "clip",
                       "--no-progress"]) == 0
    trained = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["trainable"]
    assert "logit_bias" not in trained  # unused by InfoNCE: frozen, so DDP never waits for its gradient
    assert load_model_for_eval(siglip_name, str(out / "checkpoints" / "last.pt")).logit_bias.item() == -10.0


# ---- transformers towers (CLIPModel, SiglipModel) ------------------------------------------------------------
def transformers_inputs(model):
    torch.manual_seed(3)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    ids = model.tokenize(["a chest x-ray image of edema", "there is pneumonia and pleural effusion"])
    return images, ids


@pytest.mark.parametrize("layout", ["clip", "siglip"])
def test_transformers_towers_give_the_models_own_embeddings(tiny_transformers, layout):
    """LoRA B = 0 and no hypergraph: token 0 is get_image_features / get_text_features; the bare model (no
    checkpoint) is the transformers model's own normalised embedding."""
    from ace_lora.model.factory import load_model_for_eval
    for model in (build_model(tiny_transformers[layout], AceLoRAConfig(apply_gnn_encoders="none")).eval(),
                  load_model_for_eval(tiny_transformers[layout])):
        images, ids = transformers_inputs(model)
        with torch.no_grad():
            pixels = model.input_spec.normalise(images)
            image = model.clip.get_image_features(pixel_values=pixels).pooler_output
            text = model.clip.get_text_features(input_ids=ids).pooler_output
            assert torch.allclose(model.vision.tokens(pixels)[0][:, 0], image, atol=1e-5)
            assert torch.allclose(model.text.tokens(ids)[0][:, 0], text, atol=1e-5)
            assert torch.allclose(model.encode_image(images), F.normalize(image, dim=-1), atol=1e-5)
            assert torch.allclose(model.encode_text(ids), F.normalize(text, dim=-1), atol=1e-5)


@pytest.mark.parametrize("layout", ["clip", "siglip"])
def test_transformers_trainable_counts_by_hand(tiny_transformers, layout):
    """Width 64, 2 layers per tower, r 4: LoRA on q, k, v (4 * (64 + 64) each), two adapters of 64 -> 128 -> 64 per
    tower, the scale, and for SigLIP (a sigmoid loss by default) the logit bias."""
    model = build_model(tiny_transformers[layout], AceLoRAConfig())
    lora = 2 * 2 * 3 * 4 * (64 + 64)
    adapters = 2 * 2 * (64 * 128 + 128 + 128 * 64 + 64)
    assert model.num_trainable() == lora + adapters + 1 + (layout == "siglip")
    assert model.architecture == {"vision": {"family": f"hf-{layout}-vision", "layers": 2, "output_dim": 64},
                                  "text": {"family": f"hf-{layout}-text", "layers": 2, "output_dim": 64}}


@pytest.mark.parametrize("layout", ["clip", "siglip"])
def test_transformers_cls_rows_match_the_models_own_attention(tiny_transformers, layout):
    """The text tower's row is the pooled token's softmax row of the last layer (CLIP: the first end-of-text under
    the causal mask; SigLIP: the last position, bidirectional), the pooled column dropped; the CLIP image row is the
    class token's pre-softmax row (checked through log-probability differences, which the softmax keeps)."""
    model = build_model(tiny_transformers[layout], AceLoRAConfig()).eval()
    images, ids = transformers_inputs(model)
    with torch.no_grad():
        _, text_row = model.text.tokens(ids)
        eager = type(model.clip).from_pretrained(tiny_transformers[layout][3:], attn_implementation="eager").eval()
        probs = eager.text_model(input_ids=ids, output_attentions=True).attentions[-1]  # (B, H, L, L)
        pooled = model.text.pooled_position(ids) if layout == "clip" else torch.full((2,), ids.shape[1] - 1)
        row = probs[torch.arange(2), :, pooled].mean(dim=1)  # (B, L)
        keep = ~torch.nn.functional.one_hot(pooled, ids.shape[1]).bool()
        assert torch.allclose(text_row, row[keep].view(2, -1), atol=1e-6)
        if layout == "clip":
            _, image_row = model.vision.tokens(model.input_spec.normalise(images))
            attentions = eager.vision_model(pixel_values=model.input_spec.normalise(images),
                                            output_attentions=True).attentions[-1]  # (B, H, N, N)
            log_ratio = (attentions[:, :, 0, 1:].log() - attentions[:, :, 0, 1:2].log()).mean(dim=1)
            assert torch.allclose(image_row - image_row[:, :1], log_ratio, atol=1e-4)


@pytest.mark.parametrize("layout", ["clip", "siglip"])
def test_transformers_one_step_changes_only_the_trainables(tiny_transformers, layout):
    torch.manual_seed(0)
    model = build_model(tiny_transformers[layout]).train()
    images, ids = transformers_inputs(model)
    batch = (images, ids, torch.eye(14)[:2])
    loss = create_loss(None, has_logit_bias=model.logit_bias is not None)
    model.use_loss(loss)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):  # B starts at 0: A moves from the second step on
        train_step(model, batch, optimizer, warmup_cosine_schedule(optimizer, 0, 10),
                   torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"), precision="fp32",
                   loss_fn=loss, gather_negatives=False, context=single_process("cpu"))
    for name, p in model.named_parameters():
        assert (not torch.equal(p, before[name])) == p.requires_grad, name


def test_transformers_checkpoints_load_only_onto_their_architecture(tiny_transformers, tmp_path):
    model = build_model(tiny_transformers["siglip"], AceLoRAConfig()).eval()
    random_lora(model)
    path = str(tmp_path / "weights.pt")
    save_released_checkpoint(model, path, loss="label_guided_siglip")
    assert read_released_checkpoint(path)["metadata"]["architecture"] == model.architecture
    loaded = load_model_for_eval(tiny_transformers["siglip"], path)
    images, ids = transformers_inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.encode_text(ids), model.encode_text(ids), atol=1e-5, rtol=1e-5)
    assert torch.equal(loaded.logit_bias, model.logit_bias)
    with pytest.raises(UserInputError, match=r"trained on another vision tower \(family hf-siglip-vision, layers 2, "
                                             r"output_dim 64; this model: family hf-clip-vision"):
        load_model_for_eval(tiny_transformers["clip"], path)


@pytest.mark.parametrize("layout, method", [("clip", "ace_lora"), ("siglip", "ace_lora"), ("siglip", "dora")])
def test_transformers_export_loads_with_plain_automodel_and_its_processor(tiny_transformers, tmp_path, layout, method):
    """Export merges LoRA (or peft's tuner) into q/k/v and writes a save_pretrained folder with the tokenizer and
    the image processor: AutoModel gives ace_lora's embeddings without the hypergraph (1e-5), AutoProcessor its
    inputs, and ace_lora.load rebuilds the whole model from the folder."""
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    from ace_lora.model.methods import peft_config_for
    name = tiny_transformers[layout]
    cfg = AceLoRAConfig() if method == "ace_lora" else AceLoRAConfig(
        method=method, params=[], apply_gnn_encoders="none", peft=peft_config_for(method, 4, 1.0, 0.0))
    model = build_model(name, cfg).eval()
    random_lora(model)
    torch.manual_seed(2)
    for p in model.clip.parameters():  # peft: move its adapters away from their identity initialisation
        if p.requires_grad:
            p.data.add_(torch.randn_like(p) * 0.05)
    out = tmp_path / "export"
    export_model(model, name, str(out))
    plain, processor = AutoModel.from_pretrained(str(out)).eval(), AutoProcessor.from_pretrained(str(out))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 70), dtype=np.uint8))
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    ids = model.tokenize(TEXTS)
    with torch.no_grad():
        assert torch.equal(pixels, model.input_spec.normalise(model.eval_pixels(image)[None]))
        model.merge_lora(True)
        torch.testing.assert_close(plain.get_image_features(pixel_values=pixels).pooler_output,
                                   model.vision.tokens(pixels)[0][:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(plain.get_text_features(input_ids=ids).pooler_output,
                                   model.text.tokens(ids)[0][:, 0], atol=1e-5, rtol=1e-5)
        reloaded = load_model_for_eval(None, str(out))
        torch.testing.assert_close(reloaded.encode_image(pixels), model.encode_image(pixels), atol=1e-5, rtol=1e-5)
    # the trained scale and bias are the plain model's own: its logits are the trained model's
    assert torch.allclose(plain.logit_scale.exp(), model.logit_scale.reshape(1))
    if layout == "siglip":
        assert torch.equal(plain.logit_bias, model.logit_bias.reshape(1))
    summary = json.loads((out / "ace_lora_config.json").read_text())
    assert summary["backbone_library"] == "transformers" and summary["architecture"] == model.architecture
    assert "library_name: transformers" in (out / "README.md").read_text()


def test_a_transformers_export_with_a_non_positive_scale_is_refused_before_anything_is_written(tiny_transformers,
                                                                                                 tmp_path):
    model = build_model(tiny_transformers["clip"])
    with torch.no_grad():
        model.logit_scale.fill_(0.0)
    with pytest.raises(UserInputError, match="the trained logit scale is 0, not positive"):
        export_model(model, tiny_transformers["clip"], str(tmp_path / "export"))
    assert os.listdir(tmp_path / "export") == []


def test_transformers_models_predict_and_refuse_what_they_cannot_be(tiny_transformers, tiny_model_name, tmp_path,
                                                                    capsys):
    from PIL import Image

    from ace_lora.evaluation.predict import Predictor
    path = str(tmp_path / "scan.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 70), dtype=np.uint8)).save(path)
    predictor = Predictor(load_model_for_eval(tiny_transformers["siglip"]), torch.device("cpu"))
    assert predictor.classify([path], ["edema", "pneumonia"]).shape == (1, 2)
    assert predictor.similarity_maps([path], ["edema"])[0].shape == (1, 90, 70)  # from the 4 x 4 patch grid
    bert_folder = tiny_model_name.split(":", 1)[1]  # its config.json is a BertModel's
    line = error_exit_line(capsys, train.main, ["--dry-run", "--model", f"hf:{bert_folder}"])
    assert line.startswith(f"error: hf:{bert_folder} is a BertModel (model type 'bert'); supported transformers "
                           "models: CLIPModel, SiglipModel")
    line = error_exit_line(capsys, train.main, ["--dry-run", "--model", "hf:/no/such/folder"])
    assert line == "error: model folder not found: /no/such/folder"
    siglip = tiny_transformers["siglip"].split(":", 1)[1]
    for kind, change in (("siglip_vision_model", {}), ("blip", {"architectures": ["BlipModel"]}),
                         ("siglip2", {"architectures": ["Siglip2Model"]})):
        folder = tmp_path / kind
        folder.mkdir()
        config = {**json.loads(open(os.path.join(siglip, "config.json")).read()), "model_type": kind, **change}
        (folder / "config.json").write_text(json.dumps(config))
        line = error_exit_line(capsys, train.main, ["--dry-run", "--model", f"hf:{folder}"])
        assert f"(model type '{kind}')" in line and "supported transformers models: CLIPModel, SiglipModel" in line
    assert "NaFlex" in line  # Siglip2: why not
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (no_tokenizer / name).write_bytes(open(os.path.join(siglip, name), "rb").read())
    line = error_exit_line(capsys, train.main, ["--dry-run", "--model", f"hf:{no_tokenizer}"])
    assert line.startswith(f"error: hf:{no_tokenizer}: no tokenizer could be loaded")
    wrong_size = tmp_path / "wrong_size"
    wrong_size.mkdir()
    for name in os.listdir(siglip):
        (wrong_size / name).write_bytes(open(os.path.join(siglip, name), "rb").read())
    processor = json.loads((wrong_size / "preprocessor_config.json").read_text())
    (wrong_size / "preprocessor_config.json").write_text(json.dumps({**processor, "size": {"height": 96,
                                                                                          "width": 96}}))
    line = error_exit_line(capsys, train.main, ["--dry-run", "--model", f"hf:{wrong_size}"])
    assert line == (f"error: hf:{wrong_size}: its image processor makes {{'height': 96, 'width': 96}} images, the "
                    "image tower takes 64 x 64 (its position embeddings)")
    clip = tiny_transformers["clip"].split(":", 1)[1]
    uncropped = copy_folder(clip, tmp_path / "uncropped")
    processor = json.loads((uncropped / "preprocessor_config.json").read_text())
    (uncropped / "preprocessor_config.json").write_text(json.dumps({**processor, "do_center_crop": False}))
    line = error_exit_line(capsys, train.main, ["--dry-run", "--model", f"hf:{uncropped}"])
    assert "its image processor makes {'shortest_edge': 64} images, the image tower takes 64 x 64" in line
    from safetensors.torch import load_file, save_file
    for name, change in (("no_weights", None), ("missing_tensor", "drop"), ("damaged", "truncate")):
        folder = copy_folder(siglip, tmp_path / name)
        weights = folder / "model.safetensors"
        if change is None:
            weights.unlink()
        elif change == "drop":
            tensors = load_file(weights)
            save_file({k: v for k, v in tensors.items() if "text_model.head" not in k}, weights)
        else:
            weights.write_bytes(weights.read_bytes()[:100])
        line = error_exit_line(capsys, train.main, ["--dry-run", "--model", f"hf:{folder}"])
        assert line.startswith((f"error: could not load the weights of hf:{folder}: ",
                                f"error: hf:{folder}: its weights do not fit its config.json")), line
        assert "text_model.head" in line if change == "drop" else True


def copy_folder(source: str, target):
    import shutil
    shutil.copytree(source, target)
    return target


def test_a_model_saved_in_bfloat16_is_loaded_in_fp32(tiny_transformers, tmp_path):
    from transformers import AutoModel
    folder = copy_folder(tiny_transformers["clip"].split(":", 1)[1], tmp_path / "bf16")
    AutoModel.from_pretrained(str(folder), dtype=torch.bfloat16).save_pretrained(str(folder))
    model = load_model_for_eval(f"hf:{folder}")
    images, ids = transformers_inputs(model)
    assert next(model.clip.parameters()).dtype == torch.float32
    assert model.encode_image(images).dtype == torch.float32 and model.encode_text(ids).shape == (2, 64)


def test_a_transformers_hub_id_offline_is_one_line_naming_the_folder_form(monkeypatch):
    from ace_lora.model import backbone
    monkeypatch.setattr(backbone.hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(backbone, "hub_endpoint", lambda: "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(UserInputError, match=r"^could not download hf:google/medsiglip-448: 127\.0\.0\.1 cannot be "
                                             r"reached and google/medsiglip-448 is not in the local cache; .* pass "
                                             r"--model hf:FOLDER"):
        build_model("hf:google/medsiglip-448")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["siglip", "clip"])
def test_the_demo_learns_on_a_transformers_model(tmp_path, layout):
    out = tmp_path / "demo"
    assert train.main(["--demo", "--demo-model", f"hf-{layout}", "--output-dir", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "demo_metrics.json").read_text())
    assert summary["auroc_after"] > summary["auroc_before"] + 0.1
    config = json.loads(json.dumps(__import__("yaml").safe_load((out / "config.yaml").read_text())))
    assert config["model"].startswith("hf:") and config["loss"] == ("label_guided_siglip" if layout == "siglip"
                                                                    else "label_guided")
