"""Worked solutions to the exercises of nbs/01b_tokenizer_files.ipynb."""
import re


def tokenizer_format(head):
    "The first bytes: a JSON object naming its format, a protobuf's first tag (field 1, bytes), or neither."
    if re.match(rb'\s*\{\s*"format"\s*:\s*"minillm-bpe"', head):
        return "minillm-bpe"
    if head[:1] == b"\n":  # tag (1 << 3) | 2: a ModelProto begins with its first piece
        return "sentencepiece"
    if re.match(rb'\s*\{\s*"version"\s*:', head) and b'"truncation"' in head:
        return "tokenizer.json"
    return None


def varint(data, i):
    "Seven bits a byte, least significant first, until a byte below 0x80."
    value = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        value |= (data[i] & 0x7F) << shift
        shift, i = shift + 7, i + 1
        if data[i - 1] < 0x80:
            return value, i
