"""Worked solutions to the exercises of nbs/01_tokenizer.ipynb."""
import regex

GPT4_SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""


def bpe_merge(ids, pair, new_id):
    "Replace every occurrence of `pair` in `ids` by `new_id`, left to right, without overlaps."
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def bpe_encode(text, vocab):
    "Split with the GPT-4 pattern, then merge the lowest-ranked adjacent pair in each chunk while one is known."
    rank = {tok: i for i, tok in enumerate(vocab)}
    out = []
    for chunk in regex.findall(GPT4_SPLIT_PATTERN, text):
        parts = [bytes([b]) for b in chunk.encode("utf-8")]
        while len(parts) > 1:
            ranks = [rank.get(a + b, float("inf")) for a, b in zip(parts, parts[1:])]
            i = min(range(len(ranks)), key=ranks.__getitem__)  # the first of the lowest-ranked pairs
            if ranks[i] == float("inf"):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        out += [rank[p] for p in parts]
    return out
