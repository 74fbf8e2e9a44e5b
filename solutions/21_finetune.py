"""Worked solutions to the exercises of nbs/21_finetune.ipynb."""


def chat_render(messages, add_generation_prompt=False):
    "TinyLlama-Chat's template: `<|role|>`, newline, content, `</s>`, newline for each message; then the reply's header."
    text = "".join(f"<|{m['role']}|>\n{m['content']}</s>\n" for m in messages)
    return text + ("<|assistant|>\n" if add_generation_prompt else "")


def chat_targets(messages, tokenizer, max_len):
    "Encode each message's header and content as one piece, then EOS; train on an assistant's content and its EOS."
    ids, trained = [tokenizer.bos_id], [False]
    for i, m in enumerate(messages):
        header = ("\n" if i else "") + f"<|{m['role']}|>\n"
        piece = tokenizer.encode(header + m["content"])
        n_header = len(tokenizer.encode(header))  # a byte-level BPE splits after the header's newline
        reply = m["role"] == "assistant"
        ids += piece + [tokenizer.eos_id]
        trained += [False] * n_header + [reply] * (len(piece) - n_header) + [reply]
    ids, trained = (ids + tokenizer.encode("\n"))[:max_len + 1], (trained + [False])[:max_len + 1]
    return ids[:-1], [t if keep else -100 for t, keep in zip(ids[1:], trained[1:])]


def lora_merge(W, A, B, alpha, rank, rslora=False):
    "W + s·B·A with s = alpha / rank (alpha / sqrt(rank) with rsLoRA)."
    return W + alpha / (rank ** 0.5 if rslora else rank) * (B @ A)
