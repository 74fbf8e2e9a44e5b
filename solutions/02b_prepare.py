"""Worked solutions to the exercises of nbs/02b_prepare.ipynb."""
import bisect
import itertools


def split_files(sizes, n):
    "`n` contiguous groups of files of about equal bytes, as (start, stop) pairs; none empty."
    if not 1 <= n <= len(sizes):
        raise ValueError(f"{len(sizes)} files make 1 to {len(sizes)} groups, not {n}")
    running, total, bounds = list(itertools.accumulate(sizes)), sum(sizes), [0]
    for k in range(1, n):
        target = total * k / n
        i = bisect.bisect_left(running, target)  # the file that reaches k/n of the bytes
        stop = i + 1 if running[i] - target <= target - (running[i - 1] if i else 0) else i  # the nearer boundary
        bounds.append(min(max(stop, bounds[-1] + 1), len(sizes) - (n - k)))  # one file at least, here and after
    return list(zip(bounds, bounds[1:] + [len(sizes)]))


def projected_hours(text_bytes, bytes_per_s_per_core, cores, nodes=1, efficiency=1.0):
    "Bytes over bytes per second of all the cores, at the efficiency measured; in hours."
    return text_bytes / (bytes_per_s_per_core * cores * nodes * efficiency) / 3600
