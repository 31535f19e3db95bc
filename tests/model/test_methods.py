"""Baselines on one pipeline: trainable counts of every method, peft's own counts, checkpoint round trips."""
import json

import pytest
import torch

import train
from ace_lora.errors import UserInputError
from ace_lora.io import atomic_save
from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.factory import build_model, load_model_for_eval
from ace_lora.model.methods import PEFT_METHODS, peft_config_for


def dry_run_count(capsys, argv):
    train.main(argv + ["--dry-run"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("trainable parameters: ")
    return int(line.split(": ")[1])


def method_config(method, gnn="none", peft_file=None):
    return AceLoRAConfig(params=["q", "k", "v"] if method in ("ace_lora", "lora") else [], apply_gnn_encoders=gnn,
                         method=method, peft=peft_config_for(method, 4, 1.0, 0.1, peft_file))


@pytest.mark.parametrize("method", ["dora", "ia3", "loha", "vera"])
def test_peft_counts_are_peft_s_own_plus_the_scale_and_the_adapters(tiny_model_name, capsys, method):
    model = build_model(tiny_model_name, method_config(method))
    peft_trainable, _ = model.peft_model.get_nb_trainable_parameters()
    assert peft_trainable > 0
    assert dry_run_count(capsys, ["--model", tiny_model_name, "--method", method]) == peft_trainable + 1
    with_hgnn = build_model(tiny_model_name, method_config(method, gnn="both"))
    adapters = sum(p.numel() for n, p in with_hgnn.named_parameters() if "_hgnn." in n)
    assert dry_run_count(capsys, ["--model", tiny_model_name, "--method", method, "--apply-gnn-encoders",
                                  "both"]) == peft_trainable + adapters + 1
    assert all("lora_" not in n or "default" in n for n, p in model.named_parameters() if p.requires_grad)


def test_lora_full_bare_and_a_generic_peft_config(tiny_model_name, tmp_path, capsys):
    lora = dry_run_count(capsys, ["--model", tiny_model_name, "--method", "lora"])
    assert lora == 8 * 3 * (4 * 64 + 64 * 4) + 1  # 8 layers, q/k/v, width 64, rank 4, + the scale
    full = build_model(tiny_model_name, AceLoRAConfig(params=[], apply_gnn_encoders="none", method="full"))
    frozen = [n for n, p in full.named_parameters() if not p.requires_grad]
    assert frozen == ["clip.logit_scale"] and full.num_trainable() == sum(
        p.numel() for n, p in full.named_parameters() if n != "clip.logit_scale")
    assert dry_run_count(capsys, ["--model", tiny_model_name, "--method", "bare"]) == 0
    config = tmp_path / "lora_r2.json"
    config.write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    generic = dry_run_count(capsys, ["--model", tiny_model_name, "--method", "peft", "--peft-config", str(config)])
    assert generic == 2 * 2 * 2 * 64 * 3 + 6 * (2 * 64 + 2 * 192) + 1  # BERT q/k/v (64->64), ViT qkv (64->192)
    with pytest.raises(SystemExit):
        train.main(["--model", tiny_model_name, "--method", "peft", "--dry-run"])
    assert "--method peft needs --peft-config FILE" in capsys.readouterr().err


def test_lora_on_the_full_size_architecture_trains_442369_numbers(fake_biomedclip_dir, capsys):
    assert dry_run_count(capsys, ["--model", f"local-dir:{fake_biomedclip_dir}", "--method", "lora"]) == 442_369


@pytest.mark.parametrize("method", ["ace_lora", "lora", "full", *[m for m in PEFT_METHODS if m != "peft"]])
def test_every_method_round_trips_through_its_checkpoint(tiny_model_name, tmp_path, method):
    torch.manual_seed(0)
    gnn = "both" if method == "ace_lora" else "none"
    model = build_model(tiny_model_name, method_config(method, gnn=gnn))
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path / "last.pt"
    atomic_save({"trainable": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                 "model_config": model.config.to_dict()}, str(path))
    loaded = load_model_for_eval(tiny_model_name, str(path))
    assert loaded.config.method == method
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    ids = model.tokenize(["findings suggesting edema", "a chest x-ray image of pneumonia"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images), rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.encode_text(ids), model.encode_text(ids), rtol=0, atol=1e-6)
        assert not torch.allclose(load_model_for_eval(tiny_model_name).encode_image(images),
                                  model.encode_image(images), atol=1e-4)  # the method changed the model


def test_the_registry_is_the_one_list_and_says_how_each_method_is_saved_and_exported():
    from ace_lora.model.methods import METHODS, REGISTRY, get_method
    from ace_lora.params.training import parse_training_args
    assert METHODS == tuple(REGISTRY) and set(PEFT_METHODS) == {"dora", "ia3", "loha", "vera", "peft"}
    assert {m: get_method(m).export_merge for m in METHODS} == {
        "ace_lora": "own_lora", "lora": "own_lora", "full": "as_trained", "dora": "peft", "ia3": "peft",
        "loha": "peft", "vera": "peft", "peft": "peft", "bare": "none"}
    assert [m for m in METHODS if get_method(m).released_format] == ["ace_lora", "lora"]
    for method in METHODS:  # each method's defaults reach the parsed flags, explicit flags still win
        args = parse_training_args(["--method", method], "", distributed=False)
        for key, value in get_method(method).defaults.items():
            assert getattr(args, key) == value, (method, key)
    assert parse_training_args(["--method", "full", "--lr", "3e-4"], "", distributed=False).lr == 3e-4
    with pytest.raises(UserInputError, match="unknown method 'magic'; choose from ace_lora, lora"):
        get_method("magic")
