#!/usr/bin/env python3
"""Export a trained ACE-LoRA model to a folder: the backbone with LoRA merged (a plain open_clip model
folder), the ACE-HGNN adapters and learned scale (safetensors + JSON), and a model card.

    python export.py --model local-dir:/models/biomedclip --checkpoint runs/ace/ACE-LoRA_weights_best.pt \
        --output-dir exports/ace_lora_mimic --training-data "MIMIC-CXR train split" \
        --metrics results/chexpert/metrics.json

Load it with `ace_lora.load("exports/ace_lora_mimic")`, with --checkpoint exports/ace_lora_mimic in any
evaluation script, or the merged backbone alone with open_clip (docs/evaluation.md, "Export and share").
"""
import json
import sys

from ace_lora.errors import UserInputError, main_guard
from ace_lora.params import parse_with_config
from ace_lora.params.evaluation import export_parser


@main_guard
def main(argv=None) -> int:
    args = parse_with_config(export_parser(__doc__), argv)
    metrics = {}
    if args.metrics:
        try:
            with open(args.metrics, encoding="utf-8") as f:
                document = json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise UserInputError(f"--metrics {args.metrics}: not a readable JSON file ({error})") from None
        values = document.get("metrics", document)
        metrics = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    from ace_lora.export import export_model  # after parsing: --help needs no torch
    from ace_lora.factory import load_model_for_eval
    model = load_model_for_eval(args.model, args.checkpoint, merge=False)
    paths = export_model(model, args.model, args.output_dir, source=args.checkpoint,
                         training_data=args.training_data, metrics=metrics, license_name=args.license)
    print(f"exported to {paths['folder']}: merged backbone {paths['weights']}, adapters {paths['adapters']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
