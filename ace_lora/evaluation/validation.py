"""The numbers a training run logs after each epoch: zero-shot AUROC / accuracy of each validation set and
the retrieval metrics of a `retrieval` set (metrics.jsonl keys `<prefix>_auroc`, `retrieval_i2t_recall@1`, ...)."""
import math
from typing import List, Optional, Tuple

from ace_lora.evaluation.retrieval import evaluate_retrieval
from ace_lora.evaluation.tasks import RETRIEVAL
from ace_lora.evaluation.zero_shot import evaluate


def finite_or_none(value) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


def validation_metrics(model, sets: List[Tuple[str, str, str, Optional[str]]], *, batch_size: int,
                       num_workers: int, precision: str, progress: bool) -> dict:
    """`sets`: (key prefix, task, CSV, data root); the model is evaluated where it is, LoRA not merged."""
    out = {}
    for prefix, task, csv, root in sets:
        if task == RETRIEVAL:
            metrics = evaluate_retrieval(model, csv, root, batch_size=batch_size, num_workers=num_workers,
                                         precision=precision, progress=progress).metrics
            out.update({f"retrieval_{k}": v for k, v in metrics.items() if k.startswith(("i2t", "t2i"))})
            continue
        result = evaluate(model, task, csv, root, batch_size=batch_size, num_workers=num_workers, device=None,
                          precision=precision, n_bootstrap=0, progress=progress)
        out[f"{prefix}_auroc"] = finite_or_none(result.metrics["auroc"])
        if "accuracy" in result.metrics:
            out[f"{prefix}_accuracy"] = finite_or_none(result.metrics["accuracy"])
    return out
