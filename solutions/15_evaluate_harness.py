"""Worked solutions to the exercises of nbs/15_evaluate_harness.ipynb."""
import torch


def harness_request(tokenizer, context, continuation):
    "lm-eval's split: trailing whitespace joins the continuation; encode the whole and cut it after the context's ids."
    if not context:
        return [tokenizer.bos_id], tokenizer.encode(continuation)
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped):] + continuation
    ctx = [tokenizer.bos_id] + tokenizer.encode(context)
    whole = [tokenizer.bos_id] + tokenizer.encode(context + continuation)
    return ctx, whole[len(ctx):]


def request_loglikelihood(model, context_ids, continuation_ids, max_length):
    "Keep the last max_length + 1 ids of the pair, feed all but the last, and read the continuation's positions."
    ids = (context_ids + continuation_ids)[-(max_length + 1):]
    n = len(continuation_ids)
    with torch.no_grad():
        logp = model(torch.tensor([ids[:-1]]))[0].float().log_softmax(-1)[-n:]
    cont = torch.tensor(continuation_ids)
    return logp.gather(1, cont[:, None]).sum().item(), bool((logp.argmax(-1) == cont).all())
