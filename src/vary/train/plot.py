"""`vary train plot RUN_DIR`: loss and learning-rate curves of a run (its log.jsonl) as one PNG, with the
held-out losses of eval.jsonl when the run has one (own images solid, other images dashed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vary.train.trainer import EVAL_FILE, LOG_FILE, read_log  # noqa: E402


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (same length; the first points average what exists so far)."""
    if window <= 1 or len(values) < 2:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def _plot_heldout(ax, records: list[dict]) -> None:
    """One colour per held-out set: loss with its own images (solid) and with other samples' (dashed)."""
    names = sorted({key.rsplit("/", 1)[0] for r in records for key in r if key.endswith("/loss")})
    steps = [r["step"] for r in records]
    for i, name in enumerate(names):
        color = plt.get_cmap("tab10")(i + 2)  # 0 and 1 are the training loss and the lr
        for key, style, label in (("loss", "-", name), ("loss_other_images", "--", f"{name}, other images")):
            values = [r.get(f"{name}/{key}", np.nan) for r in records]
            ax.plot(steps, values, style, color=color, marker="o", ms=3, lw=1.5, label=label)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    records = read_log(run_dir / LOG_FILE)
    if not records:
        raise FileNotFoundError(f"{run_dir / LOG_FILE}: no training log (is {run_dir} a run folder?)")
    steps = np.array([r["step"] for r in records])
    loss = np.array([r["loss"] for r in records], dtype=float)
    lr = np.array([r["lr"] for r in records], dtype=float)
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    window = max(1, len(steps) // 50)
    ax_loss.plot(steps, loss, color="tab:blue", alpha=0.3 if window > 1 else 1.0, lw=1, label="loss")
    if window > 1:
        ax_loss.plot(steps, smooth(loss, window), color="tab:blue", lw=2, label=f"mean of {window} steps")
    _plot_heldout(ax_loss, read_log(run_dir / EVAL_FILE) if (run_dir / EVAL_FILE).is_file() else [])
    ax_loss.set_ylabel("loss (answer tokens)")
    ax_loss.set_title(f"{run_dir.name}: {len(steps)} steps, final loss {loss[-1]:.4f}")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_lr.plot(steps, lr, color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
