"""Loss curves from metrics.jsonl files: train CE (smoothed) and validation CE against tokens seen."""
from __future__ import annotations

import json
from pathlib import Path

from flashlm_core import atomic
from flashlm_core.errors import DataError


def read_metrics(path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def plot_runs(runs: dict[str, list[dict]], out, *, title: str = "FlashLM training") -> None:
    """runs: label -> metrics records. Writes a PNG with train and validation loss vs tokens seen."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for label, records in runs.items():
        train = [r for r in records if r["kind"] == "train"]
        evals = [r for r in records if r["kind"] == "eval" and r["step"] > 0]
        tokens_per_step = train[-1]["tokens_seen"] / train[-1]["step"] if train else 1
        if train:
            xs = [r["tokens_seen"] / 1e6 for r in train]
            ys, avg = [], None
            for r in train:  # exponential moving average of the logged CE
                avg = r["ce"] if avg is None else 0.9 * avg + 0.1 * r["ce"]
                ys.append(avg)
            ax_t.plot(xs, ys, label=label)
        if evals:
            ax_v.plot([r["step"] * tokens_per_step / 1e6 for r in evals], [r["val_loss"] for r in evals], marker=".", label=label)
    for ax, name in ((ax_t, "train CE (EMA)"), (ax_v, "validation CE (fixed subset)")):
        ax.set_xlabel("tokens seen (M)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    ax_t.set_ylabel("loss (nats/token)")
    ax_v.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic.write_bytes(out, buf.getvalue())
