"""Worked solutions to the exercises of nbs/09b_metrics.ipynb."""
import csv
import io

COLUMNS = ("step", "loss", "val_loss", "val_bpb", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "peak_mem_gib",
           "elapsed_s", "ema_val_loss", "ema_val_bpb")


def smoothed_loss(losses):
    "A running sum: each window's total is the last one's plus the new loss minus the one that left."
    k = max(1, len(losses) // 20)
    total, out = sum(losses[:k - 1]), []
    for i in range(k - 1, len(losses)):
        total += losses[i]
        out.append(total / k)
        total -= losses[i - k + 1]
    return out


def resumed_metrics(csv_text, resume_step):
    "Keep the rows whose step is at most resume_step and write them back under the full header."
    rows = [r for r in csv.DictReader(io.StringIO(csv_text)) if int(r["step"]) <= resume_step]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)
    return buf.getvalue()
