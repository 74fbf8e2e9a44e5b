"""Worked solutions to the exercises of nbs/02_corpora.ipynb."""
import hashlib


def document_splits(keys, val_fraction, min_val_documents):
    "Hash each unit once; the first `min_val_documents` distinct units go to val whatever their hash."
    if not 0 <= val_fraction < 1 or min_val_documents < 0:
        raise ValueError("val_fraction must be in [0, 1) and min_val_documents >= 0")
    forced, out = set(), []
    for key in keys:
        h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
        if h not in forced and len(forced) < min_val_documents:
            forced.add(h)
        out.append("val" if h in forced or h < val_fraction * 2**64 else "train")
    return out


def limit_documents(texts, max_documents, max_bytes):
    "Count documents and UTF-8 bytes; stop before the document that would break either limit."
    out, total = [], 0
    for text in texts:
        size = len(text.encode("utf-8"))
        if max_documents is not None and len(out) >= max_documents:
            break
        if max_bytes is not None and total + size > max_bytes:
            break
        out.append(text)
        total += size
    return out
