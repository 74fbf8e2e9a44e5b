"""Worked solutions to the exercises of nbs/15_evaluate.ipynb."""
import math

import torch


def sliding_windows(n_ids, seq_len):
    "Windows every seq_len // 2 ids; each scores the ids after the last one already scored, up to the last id."
    out, start, done = [], 0, 0
    while done < n_ids - 1:
        end = min(start + seq_len, n_ids - 1)
        out.append((start, end, end - done))
        done, start = end, start + seq_len // 2
    return out


def bits_per_byte(model, tokenizer, text, seq_len):
    "[BOS] + encode(text), scored window by window (each id once), nats summed, then bits per UTF-8 byte."
    ids = [tokenizer.bos_id] + tokenizer.encode(text)
    nll = 0.0
    for start, end, n in sliding_windows(len(ids), seq_len):
        with torch.no_grad():
            logp = model(torch.tensor([ids[start:end]]))[0].float().log_softmax(-1)
        targets = torch.tensor(ids[end - n + 1:end + 1])
        nll -= logp[-n:].gather(1, targets[:, None]).sum().item()
    return nll / math.log(2) / len(text.encode("utf-8"))


def choice_scores(model, tokenizer, context, endings):
    "Trailing spaces move to the ending; its ids are those after the context's in the whole; left-truncated."
    ctx = [tokenizer.bos_id] + tokenizer.encode(context.rstrip())
    out = []
    for ending in endings:
        whole = [tokenizer.bos_id] + tokenizer.encode(context + ending)
        n = len(whole) - len(ctx)
        ids = whole[-(model.cfg.max_seq_len + 1):]
        with torch.no_grad():
            logp = model(torch.tensor([ids[:-1]]))[0].float().log_softmax(-1)
        out.append(logp[-n:].gather(1, torch.tensor(ids[-n:])[:, None]).sum().item())
    return out
