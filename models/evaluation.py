"""Model metrics: a classifier's, with scikit-learn from labels and class probabilities; a
language model's next-token loss, from logits.

numpy only, no torch: the Predictor replica imports this module (``softmax``) and serves
with ONNX Runtime alone."""

from __future__ import annotations

import numpy as np
from sklearn import metrics


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Scalar metrics for a multi-class classifier.

    Args:
        y_true: (N,) integer labels.
        proba: (N, C) class probabilities (rows sum to 1).

    Returns:
        accuracy, macro and weighted precision/recall/F1, one-vs-rest ROC-AUC (macro) and
        Cohen's kappa, each a float.
    """
    y_pred = proba.argmax(axis=1)
    labels = np.arange(proba.shape[1])
    out = {
        "accuracy": metrics.accuracy_score(y_true, y_pred),
        "cohen_kappa": metrics.cohen_kappa_score(y_true, y_pred, labels=labels),
        "roc_auc_ovr": metrics.roc_auc_score(
            y_true, proba, multi_class="ovr", average="macro", labels=labels
        ),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = metrics.precision_recall_fscore_support(
            y_true, y_pred, average=average, labels=labels, zero_division=0
        )
        out |= {f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f}
    return {k: float(v) for k, v in out.items()}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[list[int]]:
    """Confusion matrix as nested lists (rows: true class, columns: predicted)."""
    return metrics.confusion_matrix(y_true, y_pred, labels=np.arange(num_classes)).tolist()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between confidence and accuracy, averaged over confidence bins.

    Confidence is the top class probability; each bin's |accuracy - mean confidence| is
    weighted by its share of the rows. 0 is perfectly calibrated.
    """
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def confusion_png(matrix: list[list[int]], path, title: str) -> None:
    """Draw a confusion matrix (rows: true class, columns: predicted) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: jobs run without a display
    import matplotlib.pyplot as plt

    data = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    ax.imshow(data, cmap="Blues")
    for (i, j), count in np.ndenumerate(data):
        color = "white" if count > data.max() / 2 else "black"
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=title,
        xticks=range(data.shape[1]),
        yticks=range(data.shape[0]),
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def next_token_nats(logits: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
    """Summed next-token cross-entropy of a batch, in nats, and how many tokens it covers.

    The one definition of a language model's loss as a metric: the training loop's
    validation and the published test loss both add up these sums (over batches and ranks)
    and turn them into metrics with ``language_model_metrics``, so the two figures differ
    only by the rows they see. Log-sum-exp in float64, whatever the logits' dtype.

    Args:
        logits: (N, T, vocab) scores for each position.
        targets: (N, T) the token that followed each position.
    """
    flat = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    shifted = flat - flat.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    picked = shifted[np.arange(len(shifted)), targets.reshape(-1)]
    return float(np.sum(log_norm - picked)), int(targets.size)


def language_model_metrics(nats: float, tokens: float) -> dict[str, float]:
    """Loss (mean nats per token) and perplexity from ``next_token_nats`` sums."""
    loss = nats / max(tokens, 1)
    return {
        "loss": loss,
        "perplexity": float(np.exp(min(loss, 50.0))),
        "tokens": float(tokens),
    }
