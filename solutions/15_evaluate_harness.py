"""Worked solutions to the exercises of nbs/15_evaluate_harness.ipynb."""


def harness_request(tokenizer, context, continuation):
    "lm-eval's split: trailing whitespace joins the continuation; encode the whole and cut it after the context's ids."
    if not context:
        return [tokenizer.bos_id], tokenizer.encode(continuation)
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped):] + continuation
    ctx = [tokenizer.bos_id] + tokenizer.encode(context)
    whole = [tokenizer.bos_id] + tokenizer.encode(context + continuation)
    return ctx, whole[len(ctx):]
