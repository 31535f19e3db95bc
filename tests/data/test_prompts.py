"""Prompt ensembles: class-major order, and embeddings equal to the model's own ensemble encoding."""
import torch

from ace_lora.data.prompts import CHEST_XRAY_TEMPLATES, class_major_prompts, prompt_ensemble_embeddings
from ace_lora.model.factory import load_model_for_eval


def test_prompts_are_class_major_and_embed_through_the_models_ensemble(tiny_model_name):
    prompts = class_major_prompts(["edema", "pneumonia"], CHEST_XRAY_TEMPLATES)
    assert prompts == ["a chest X-ray image of edema.", "Findings suggesting edema.",
                       "a chest X-ray image of pneumonia.", "Findings suggesting pneumonia."]
    model = load_model_for_eval(tiny_model_name)
    with torch.no_grad():
        embeddings = prompt_ensemble_embeddings(model, ["edema", "pneumonia"], CHEST_XRAY_TEMPLATES, "cpu")
        expected = model.encode_prompt_ensemble(model.tokenize(prompts), 2)
    assert embeddings.shape == (2, 64)  # the tiny model's joint space
    assert embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings, expected.float())
