"""Released-format checkpoints: exact round trip on the full-size architecture, clear errors."""
import os

import pytest
import torch

from ace_lora.errors import UserInputError
from ace_lora.io import atomic_save
from ace_lora.model.backbone import load_backbone
from ace_lora.model.checkpoint import (
    load_released_checkpoint,
    read_released_checkpoint,
    released_state,
    save_released_checkpoint,
)
from ace_lora.model.config import AceLoRAConfig
from ace_lora.model.factory import build_model, load_model_for_eval
from ace_lora.model.model import AceLoRAModel


@pytest.fixture(scope="module")
def released(shared_dir):
    return read_released_checkpoint(os.path.join(shared_dir, "checkpoints", "ACE_LoRA.pt"))


@pytest.fixture(scope="module")
def full_model(fake_biomedclip_dir):
    return AceLoRAModel(load_backbone(f"local-dir:{fake_biomedclip_dir}"), AceLoRAConfig())


def test_default_model_has_969217_trainable_numbers(full_model):
    assert full_model.num_trainable() == 969_217


def test_released_checkpoint_round_trip_reproduces_every_tensor(full_model, released, shared_dir, tmp_path):
    path = os.path.join(shared_dir, "checkpoints", "ACE_LoRA.pt")
    metadata = load_released_checkpoint(full_model, path)
    assert metadata["loss_type"] == "clip_loss_ace_hgat" and metadata["r"] == 4
    ours = released_state(full_model)["weights"]
    theirs = released["weights"]
    assert set(ours) == set(theirs)
    count = 0
    for key, value in theirs.items():
        if key == "logit_scale":
            assert torch.equal(ours[key], value.float())
            count += 1
            continue
        for sub, tensor in value.items():
            if isinstance(tensor, dict):
                for name, t in tensor.items():
                    assert torch.equal(ours[key][sub][name], t), (key, sub, name)
                    count += t.numel()
            else:
                assert torch.equal(ours[key][sub], tensor), (key, sub)
                count += tensor.numel()
    assert count == 969_217
    assert abs(full_model.logit_scale.item() - 78.35) < 0.01  # linear, not exponentiated again
    out = tmp_path / "again.pt"
    save_released_checkpoint(full_model, str(out))
    again = torch.load(out, weights_only=True)
    assert again["metadata"]["loss_type"] == "clip_loss_ace_hgnn"
    for key in theirs:
        if key != "logit_scale":
            for sub in theirs[key]:
                a, b = again["weights"][key][sub], theirs[key][sub]
                if isinstance(b, dict):
                    assert all(torch.equal(a[n], b[n]) for n in b)


def test_wrong_rank_names_the_tensor(fake_biomedclip_dir, shared_dir):
    model = AceLoRAModel(load_backbone(f"local-dir:{fake_biomedclip_dir}"), AceLoRAConfig(r=8))
    with pytest.raises(UserInputError, match=r"weights\['layer_0'\]\['q_proj'\]\['w_lora_A'\] has shape \(4, 768\), "
                                             r"the model expects \(8, 768\)"):
        load_released_checkpoint(model, os.path.join(shared_dir, "checkpoints", "ACE_LoRA.pt"))


def test_missing_key_and_unreadable_file(tiny_model_name, tmp_path):
    model = build_model(tiny_model_name, AceLoRAConfig())
    state = released_state(model)
    del state["weights"]["text_node_adapter"]
    broken = tmp_path / "broken.pt"
    atomic_save(state, str(broken))
    with pytest.raises(UserInputError, match=r"missing adapter weights\['text_node_adapter'\]"):
        load_released_checkpoint(model, str(broken))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="cannot read checkpoint .*garbage.pt: not a PyTorch checkpoint file"):
        load_model_for_eval(tiny_model_name, str(garbage))
    with pytest.raises(UserInputError, match="checkpoint not found: .*nope.pt"):
        load_model_for_eval(tiny_model_name, str(tmp_path / "nope.pt"))


def test_extra_layers_and_adapters_are_rejected(tiny_model_name, tmp_path):
    model = build_model(tiny_model_name, AceLoRAConfig(position="top"))
    full = build_model(tiny_model_name, AceLoRAConfig())
    path = tmp_path / "all_layers.pt"
    save_released_checkpoint(full, str(path))
    with pytest.raises(UserInputError, match="has weights the model does not have: layer_2, layer_3"):
        load_released_checkpoint(model, str(path))
    plain = build_model(tiny_model_name, AceLoRAConfig(apply_gnn_encoders="none"))
    with pytest.raises(UserInputError, match="does not have: img_edge_adapter, img_node_adapter"):
        load_released_checkpoint(plain, str(path))


def test_released_numbering_counts_adapted_layers_text_first(tiny_model_name):
    """As released: layer_<n> numbers the layers that carry LoRA, text first; 'o' is stored as 'proj'."""
    model = build_model(tiny_model_name, AceLoRAConfig(position="top", params=["q", "o"]))
    weights = released_state(model)["weights"]
    assert sorted(k for k in weights if k.startswith("layer_")) == ["layer_0", "layer_1"]
    assert set(weights["layer_0"]) == {"q_proj", "proj"}
    text_last = model.clip.text.transformer.encoder.layer[-1].attention
    assert torch.equal(weights["layer_0"]["proj"]["w_lora_A"], text_last.output.dense.lora.lora_A)
    vit_last = model.clip.visual.trunk.blocks[-1].attn
    assert torch.equal(weights["layer_1"]["q_proj"]["w_lora_A"], vit_last.qkv.lora["q"].lora_A)


@pytest.mark.parametrize("gnn", ["both", "none"])
@pytest.mark.parametrize("use_labels", [True, False])
def test_hypergraph_and_label_mask_round_trip_independently(tiny_model_name, tmp_path, gnn, use_labels):
    """loss_type records the hypergraph (as released), use_labels the mask; the loader rebuilds the model."""
    torch.manual_seed(0)
    model = build_model(tiny_model_name, AceLoRAConfig(apply_gnn_encoders=gnn)).eval()
    for parts in model.text_lora.values():
        for factors in parts.values():
            torch.nn.init.normal_(factors.lora_B, std=0.05)
    path = tmp_path / "weights.pt"
    save_released_checkpoint(model, str(path), loss="label_guided" if use_labels else "clip")
    metadata = read_released_checkpoint(str(path))["metadata"]
    assert metadata["loss_type"] == ("clip_loss_ace_hgnn" if gnn == "both" else "clip_loss")
    assert metadata["use_labels"] is use_labels and metadata["loss"] == ("label_guided" if use_labels else "clip")
    del metadata["apply_gnn_encoders"]  # as in the authors' files: loss_type alone must decide
    state = read_released_checkpoint(str(path))
    state["metadata"] = metadata
    atomic_save(state, str(path))
    loaded = load_model_for_eval(tiny_model_name, str(path), merge=False)
    assert (loaded.image_hgnn is None) == (loaded.text_hgnn is None) == (gnn == "none")
    ids = model.tokenize(["findings suggesting edema", "a chest x-ray image of pneumonia"])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(ids), model.encode_text(ids), rtol=0, atol=0)
        torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images), rtol=0, atol=0)


def test_one_reader_for_every_format(tiny_model_name, tmp_path):
    """read_trained: the released format, a training checkpoint and an export folder, to (config, tensors)."""
    import export
    from ace_lora.errors import UserInputError
    from ace_lora.io import atomic_save
    from ace_lora.model.checkpoint import init_trainables_from, read_trained
    from ace_lora.model.factory import build_model
    from tests.conftest import tiny_model_with_lora_updates

    model = tiny_model_with_lora_updates(tiny_model_name)
    released, training, folder = tmp_path / "w.pt", tmp_path / "last.pt", tmp_path / "export"
    save_released_checkpoint(model, str(released))
    atomic_save({"trainable": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                 "model_config": model.config.to_dict()}, str(training))
    assert export.main(["--model", tiny_model_name, "--checkpoint", str(released), "--output-dir", str(folder)]) == 0
    kinds = {path: read_trained(str(path)) for path in (released, training, folder)}
    assert [t.kind for t in kinds.values()] == ["released", "training", "export"]
    assert kinds[folder].backbone == f"local-dir:{folder}" and kinds[folder].config.params == []
    assert kinds[released].backbone is None and kinds[released].config.params == ["q", "k", "v"]
    for path in (released, training):
        fresh = build_model(tiny_model_name, kinds[path].config)
        kinds[path].load_into(fresh)
        for (name, a), b in zip(model.named_parameters(), fresh.parameters()):
            assert torch.equal(a, b), (path, name)
    with pytest.raises(UserInputError, match="an export folder has its LoRA merged into the backbone"):
        init_trainables_from(build_model(tiny_model_name), str(folder))
    with pytest.raises(UserInputError, match="is a folder without ace_lora_config.json"):
        read_trained(str(tmp_path))
