"""Classification metrics from logits, with scikit-learn."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["classification_metrics", "primary_metric"]


def primary_metric(task: str) -> tuple[str, str]:
    """``(key in metrics.json, name)`` of a task's headline metric: ``("accuracy",
    "accuracy")``, or ``("dice", "Dice")`` (mean foreground Dice over volumes) for
    segmentation."""
    return ("dice", "Dice") if task == "segmentation" else ("accuracy", "accuracy")


def classification_metrics(
    logits: torch.Tensor, targets: torch.Tensor, task: str, class_names: tuple[str, ...]
) -> dict[str, Any]:
    """Accuracy, per-class recall/precision/F1, confusion matrix and macro AUC.

    ``task="classification"``: ``targets`` are class indices, probabilities are the softmax.
    ``task="multi-label"``: ``targets`` are multi-hot, probabilities the sigmoid; accuracy is the
    mean over labels of thresholded (0.5) correctness, and per-label metrics replace the confusion
    matrix. Macro AUC is ``None`` where it is undefined (a class absent from ``targets``).
    """
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import (
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    logits = logits.detach().float().cpu()
    y_true = targets.detach().cpu().numpy()
    num_classes = len(class_names)
    if task == "multi-label":
        probs = torch.sigmoid(logits).numpy()
        y_pred = (probs >= 0.5).astype(np.int64)
        y_true = y_true.astype(np.int64)
        accuracy = float((y_pred == y_true).mean())
        labels = None
    else:
        probs = torch.softmax(logits, dim=1).numpy()
        y_pred = probs.argmax(1)
        accuracy = float((y_pred == y_true).mean())
        labels = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # a missing class: None below
        try:
            if task == "multi-label":
                auc = roc_auc_score(y_true, probs, average="macro")
            elif num_classes == 2:
                auc = roc_auc_score(y_true, probs[:, 1])
            else:
                auc = roc_auc_score(
                    y_true, probs, multi_class="ovr", average="macro", labels=labels
                )
            auc = float(auc) if np.isfinite(auc) else None  # NaN: a class missing from the split
        except ValueError:  # a class missing from this split
            auc = None
    result: dict[str, Any] = {
        "accuracy": accuracy,
        "macro_auc": auc,
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            name: {
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        },
    }
    if task != "multi-label":
        result["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return result
