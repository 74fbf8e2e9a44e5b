"""Chat fine-tuning checked against what others wrote: transformers' own rendering of the chat template and its
assistant-token mask, peft's LoRA (the same adapter gives the same logits both ways), peft's merge, and the exported
model read back by transformers."""
import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from minillm.cli import main
from minillm.config import LlamaConfig
from minillm.evaluate import data_path
from minillm.finetune import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, FinetuneConfig, LoRAConfig, add_lora,
                              adapter_config, adapter_state_dict, chat_example, chat_examples, chat_ids, finetune,
                              finetune_step, load_adapter, load_finetune, lora_layers, merge_lora, pad_batch,
                              prepare_model, read_adapter_config, read_chat, render_chat, save_finetune)
from minillm.hf import save_hf
from minillm.model import Llama
from minillm.quantize import Linear4bit
from minillm.tokenizer import CHAT_TEMPLATE, Tokenizer, python_stdlib_texts, save_hf_tokenizer

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

# the same template with transformers' {% generation %} marks around what the assistant writes: its assistant mask
MASKED_TEMPLATE = CHAT_TEMPLATE.replace(
    "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}",
    "{{ '<|assistant|>\\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '' }}")


@pytest.fixture(scope="module")
def chats():
    return read_chat(data_path("chat.jsonl"))


@pytest.fixture(scope="module")
def tokenizers(chats):
    "A byte-level BPE and a SentencePiece tokenizer (neither has tokens for the role tags), as Hugging Face directories."
    texts = list(python_stdlib_texts("docstrings", max_bytes=150_000)) + [render_chat(c) for c in chats[:100]]
    return {"bpe": Tokenizer.train(texts, vocab_size=400),
            "sp": Tokenizer.train_sentencepiece(texts, vocab_size=400, num_threads=1)}


@pytest.fixture(scope="module")
def hf_tokenizers(tokenizers, tmp_path_factory):
    out = {}
    for kind, tok in tokenizers.items():
        d = tmp_path_factory.mktemp(f"tok-{kind}")
        save_hf_tokenizer(tok, d)
        out[kind] = AutoTokenizer.from_pretrained(d)
    return out


@pytest.fixture(scope="module")
def base(tokenizers, tmp_path_factory):
    "A random debug-shaped Llama with the BPE tokenizer, as a minillm model and as a Hugging Face directory."
    torch.manual_seed(0)
    model = Llama(LlamaConfig.from_name("debug", vocab_size=400, max_seq_len=96, init_std=0.05)).eval()
    d = tmp_path_factory.mktemp("base") / "hf"
    save_hf(model, d, tokenizer=tokenizers["bpe"])
    return model, d


def fresh(base):
    model = Llama(base[0].cfg)
    model.load_state_dict(base[0].state_dict())
    return model.eval()


def random_adapter(model, cfg):
    "LoRA on `model` with B drawn at random too (a new adapter's B is zero, which would hide mistakes)."
    add_lora(model, cfg)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_B.normal_(0, 0.05)
    return model.eval()


def hf_model(path):
    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


# --- the template and the mask ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_template_ids_and_mask_match_transformers(chats, tokenizers, hf_tokenizers, kind):
    tok, hf = tokenizers[kind], hf_tokenizers[kind]
    assert hf.chat_template == CHAT_TEMPLATE
    for messages in chats:
        for prompt in (False, True):
            assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt) == \
                render_chat(messages, add_generation_prompt=prompt)
        ids, trained = chat_ids(messages, tok)
        out = hf.apply_chat_template(messages, chat_template=MASKED_TEMPLATE, return_dict=True,
                                     return_assistant_tokens_mask=True, tokenizer_kwargs={"split_special_tokens": False})
        assert ids == [tok.bos_id] + out["input_ids"]
        assert trained == [False] + [bool(m) for m in out["assistant_masks"]]
    prompt_ids, _ = chat_ids(chats[0], tok, add_generation_prompt=True)
    text = hf.apply_chat_template(chats[0], tokenize=False, add_generation_prompt=True)
    assert prompt_ids == hf(text, split_special_tokens=False)["input_ids"]


def test_multi_turn_trains_on_every_reply_and_no_user_turn(tokenizers):
    tok = tokenizers["bpe"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is len?"},
                {"role": "assistant", "content": "The length."}, {"role": "user", "content": "And abs?"},
                {"role": "assistant", "content": "Absolute value."}]
    ids, trained = chat_ids(messages, tok)
    assert tok.decode([i for i, t in zip(ids, trained) if t]) == "The length.</s>Absolute value.</s>"
    assert tok.decode([i for i, t in zip(ids, trained) if not t]) == \
        "<s><|system|>\nBe brief.</s>\n<|user|>\nWhat is len?</s>\n<|assistant|>\n\n<|user|>\nAnd abs?</s>\n<|assistant|>\n\n"
    x, y, cut = chat_example(messages, tok, max_len=200)
    assert not cut and x == ids[:-1] and [t for t in y if t != -100] == [i for i, t in zip(ids[1:], trained[1:]) if t]


def test_long_conversations_are_cut_with_one_warning(chats, tokenizers):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples = chat_examples(chats[:50], tokenizers["bpe"], max_len=40)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    n_long = sum(len(chat_ids(c, tokenizers["bpe"])[0]) > 41 for c in chats[:50])
    assert n_long > 0 and str(caught[0].message).startswith(f"{n_long} of 50 conversations are longer than 40 tokens")
    assert all(len(x) <= 40 and len(y) == len(x) for x, y in examples)


def test_no_eos_is_a_clear_error():
    tok = Tokenizer.train(["the quick brown fox jumps over the lazy dog " * 5], vocab_size=270, special_tokens=("<s>",),
                          eos=None)
    with pytest.raises(ValueError, match="no EOS token"):
        chat_ids([{"role": "user", "content": "hi"}], tok)
    with pytest.raises(ValueError, match="system message may only come first"):
        render_chat([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])


def test_a_micro_batch_without_targets_adds_nothing(chats, tokenizers, base):
    tok = tokenizers["bpe"]
    real = chat_example(chats[0], tok, 96)[:2]
    masked = (real[0], [-100] * len(real[1]))  # the same tokens, nothing to learn
    model = fresh(base)
    tokens, targets = pad_batch([masked])
    loss = model(tokens, targets)  # the model's own rule: 0, and a zero gradient, never NaN
    loss.backward()
    assert loss.item() == 0.0 and all(p.grad.abs().sum() == 0 for p in model.parameters())
    after = {}
    for batch in ([real], [real, masked], [masked, real]):
        torch.manual_seed(0)
        m = fresh(base)
        params = add_lora(m, LoRAConfig(rank=4))
        with torch.no_grad():
            for p in params[1::2]:
                p.normal_(0, 0.05)  # B, so that A gets a gradient too
        opt = torch.optim.SGD(params, lr=1.0)
        loss, n = finetune_step(m.train(), opt, batch, micro_batch=1, lr=1.0, grad_clip=0.0)
        after[len(batch), batch[0] is masked] = (loss, n, torch.cat([p.detach().flatten() for p in params]))
    (l1, n1, p1), (l2, n2, p2), (l3, n3, p3) = after.values()
    assert n1 == n2 == n3 and l1 == pytest.approx(l2) == pytest.approx(l3)
    torch.testing.assert_close(p2, p1)
    torch.testing.assert_close(p3, p1)
    m = fresh(base)
    params = add_lora(m, LoRAConfig(rank=4))
    before = [p.detach().clone() for p in params]
    loss, n = finetune_step(m.train(), torch.optim.AdamW(params, weight_decay=0.1), [masked], 1, 1e-2, 1.0)
    assert (loss, n) == (0.0, 0) and all(torch.equal(a, p) for a, p in zip(before, params))


# --- LoRA against peft -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rslora", [False, True])
def test_minillm_adapter_in_peft_gives_the_same_logits(base, tmp_path, rslora):
    cfg = LoRAConfig(rank=4, alpha=8, targets=("q", "v", "o", "up", "down"), rslora=rslora)
    model = random_adapter(fresh(base), cfg)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in adapter_state_dict(model).items()}, tmp_path / ADAPTER_WEIGHTS)
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(cfg, str(base[1]))))
    peft = PeftModel.from_pretrained(hf_model(base[1]), tmp_path).eval()
    x = torch.randint(0, 400, (2, 33))
    with torch.no_grad():
        ours, theirs = model(x), peft(x).logits
        assert (ours - base[0](x)).abs().max() > 1e-2  # the adapter changes the model
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
        merged = peft.merge_and_unload()(x).logits  # peft's merge and ours agree
        torch.testing.assert_close(merge_lora(model)(x), merged, rtol=0, atol=1e-5)


def test_peft_adapter_in_minillm_gives_the_same_logits(base, tmp_path):
    peft = get_peft_model(hf_model(base[1]), LoraConfig(r=3, lora_alpha=5, lora_dropout=0.1, init_lora_weights=False,
                                                        target_modules=["k_proj", "gate_proj", "down_proj"]))
    peft.save_pretrained(tmp_path)
    model = fresh(base)
    cfg = load_adapter(model, tmp_path)
    assert (cfg.rank, cfg.alpha, cfg.targets, cfg.dropout) == (3, 5, ("k", "gate", "down"), 0.1)
    x = torch.randint(0, 400, (2, 33))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), peft.eval()(x).logits, rtol=0, atol=1e-5)
    config = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora=True"):
        read_adapter_config(tmp_path)


def test_merge_unmerge_and_a_new_adapter(base):
    model = fresh(base)
    add_lora(model, LoRAConfig(rank=4))
    x = torch.randint(0, 400, (2, 20))
    with torch.no_grad():
        assert torch.equal(model(x), base[0](x))  # B starts at zero: a new adapter changes nothing
        for m in lora_layers(model).values():
            m.lora_B.normal_(0, 0.05)
        unmerged = model(x)
        for m in lora_layers(model).values():
            m.merge()
        torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-5)
        for m in lora_layers(model).values():
            m.unmerge()
        torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-5)
        for name, p in base[0].state_dict().items():
            parent, _, leaf = name.rpartition(".")
            mine = model.get_submodule(parent)
            torch.testing.assert_close(getattr(getattr(mine, "base", mine), leaf), p, rtol=0, atol=1e-6)
        merge_lora(model)
        assert not lora_layers(model) and set(model.state_dict()) == set(base[0].state_dict())
        torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-5)


def test_qlora_base_is_4bit_and_its_backward_matches(base):
    torch.manual_seed(1)
    linear = torch.nn.Linear(96, 40, bias=False)
    q = Linear4bit(linear, group_size=32)
    w = q.weight  # dequantized
    assert not list(q.parameters()) and 0 < (w - linear.weight).abs().max() < 0.05
    x = torch.randn(3, 7, 96, requires_grad=True)
    q(x).square().sum().backward()
    ours, x.grad = x.grad, None
    torch.nn.functional.linear(x, w).square().sum().backward()
    torch.testing.assert_close(ours, x.grad)
    model = fresh(base)
    params = prepare_model(model, FinetuneConfig(method="qlora", group_size=32))
    assert all(isinstance(m.base, Linear4bit) for m in lora_layers(model).values()) and len(lora_layers(model)) == 14
    # what is left in float: the adapters, the embedding and head, the norms
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in params) + 400 * 64 * 2 + 64 * 5
    from minillm.quantize import quantize_model

    with pytest.raises(ValueError, match="fine-tune its full-precision checkpoint"):  # not an already quantized one
        prepare_model(quantize_model(fresh(base), 4, 32), FinetuneConfig())


def test_qlora_finetune_merges_into_the_full_precision_base(chats, tokenizers, base, tmp_path):
    model = fresh(base)
    cfg = FinetuneConfig(method="qlora", lora_rank=4, group_size=32, max_steps=2, batch_size=4, lr=1e-2, device="cpu")
    res = finetune(model, tokenizers["bpe"], chats[:20], cfg)
    assert all(r["loss"] > 0 for r in res.history)
    out = save_finetune(model, tokenizers["bpe"], tmp_path / "ft", cfg, base=base[1], result=res)
    assert json.loads((out / "finetune.json").read_text())["method"] == "qlora"
    from minillm.export import load_for_export

    merged, _, _ = load_for_export(out)
    reference = random_adapter(fresh(base), LoRAConfig(rank=4, alpha=16))
    for name, m in lora_layers(reference).items():
        trained = lora_layers(model)[name]
        m.lora_A.data, m.lora_B.data = trained.lora_A.data, trained.lora_B.data
    x = torch.randint(0, 400, (1, 12))
    with torch.no_grad():  # the adapter on the float base, unmerged, is what the export holds
        torch.testing.assert_close(merged(x), reference(x), rtol=0, atol=1e-5)


# --- fine-tuning end to end ------------------------------------------------------------------------------------------

def test_only_the_adapter_trains_and_is_saved(chats, tokenizers, base, tmp_path):
    model = fresh(base)
    cfg = FinetuneConfig(lora_rank=4, max_steps=3, batch_size=4, lr=1e-2, warmup=0, device="cpu")
    res = finetune(model, tokenizers["bpe"], chats[:40], cfg)
    # rank × (in + out) for q, k, v, o, gate, up, down, in each of 2 layers
    assert len(res.history) == 3 and res.n_val == 2 and res.trainable == 2 * 4 * (128 + 2 * 96 + 128 + 3 * 240)
    for name, p in base[0].state_dict().items():
        parent, _, leaf = name.rpartition(".")
        mine = model.get_submodule(parent)
        assert torch.equal(getattr(getattr(mine, "base", mine), leaf), p), name
    out = save_finetune(model, tokenizers["bpe"], tmp_path / "ft", cfg, base=base[1], result=res)
    assert sorted(p.name for p in out.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS, "finetune.json",
                                                            "metrics.csv", "tokenizer.bpe.json"])
    saved = load_file(out / ADAPTER_WEIGHTS)
    assert len(saved) == 2 * 2 * 7 and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in saved)
    from minillm.export import load_for_export

    merged, tok, _ = load_finetune(out, load_for_export)
    x = torch.randint(0, 400, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model.eval()(x), rtol=0, atol=1e-5)


def test_cli_finetune_generate_and_export(chats, base, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats[:24]))
    ft = tmp_path / "ft"
    assert main(["finetune", "--ckpt", str(base[1]), "--data", str(data), "--out", str(ft), "--max-steps", "2",
                 "--batch", "4", "--micro-batch", "2", "--lr", "1e-2", "--lora-rank", "4", "--lora-alpha", "4",
                 "--seq-len", "64"]) == 0
    out, err = capsys.readouterr()
    assert "lora fine-tune" in out and "minillm finetune: warning:" in err and "step 1/2" in err
    assert main(["generate", "--ckpt", str(ft), "--chat", "--prompt", "What is `re.compile` for?",
                 "--max-new-tokens", "8", "--temperature", "0"]) == 0
    reply = capsys.readouterr().out
    assert main(["export", "--ckpt", str(ft), "--out", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    peft = PeftModel.from_pretrained(hf_model(base[1]), ft).eval()
    exported = hf_model(tmp_path / "merged")
    x = torch.randint(0, 400, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(exported(x).logits, peft(x).logits, rtol=0, atol=1e-5)
    hf = AutoTokenizer.from_pretrained(tmp_path / "merged")
    prompt = hf.apply_chat_template([{"role": "user", "content": "What is `re.compile` for?"}], tokenize=False,
                                    add_generation_prompt=True)
    ids = hf(prompt, return_tensors="pt", split_special_tokens=False).input_ids
    with torch.no_grad():
        greedy = exported.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=hf.eos_token_id)
    assert hf.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True) == reply.removesuffix("\n")


def test_cli_full_finetune_exports_its_weights(chats, base, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats[:12]))
    assert main(["finetune", "--ckpt", str(base[1]), "--data", str(data), "--out", str(tmp_path / "ft"), "--full",
                 "--max-steps", "1", "--batch", "4", "--lr", "1e-3", "--seq-len", "64"]) == 0
    assert main(["export", "--ckpt", str(tmp_path / "ft"), "--out", str(tmp_path / "hf")]) == 0
    from minillm.export import load_for_export

    model, _, _ = load_for_export(tmp_path / "ft")
    x = torch.randint(0, 400, (1, 16))
    with torch.no_grad():
        assert (model(x) - base[0](x)).abs().max() > 1e-4  # every weight moved
        torch.testing.assert_close(hf_model(tmp_path / "hf")(x).logits, model(x), rtol=0, atol=1e-5)


def test_cli_bad_input_is_one_line(base, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [{"role": "bot"}]}\n')
    cases = [(["--data", str(data)], "line 2, message 0"),
             (["--data", str(tmp_path / "none.jsonl")], "no such chat file"),
             (["--data", str(data), "--qlora", "--full"], "choose one"),
             (["--data", str(data), "--lora-targets", "q,lm_head"], "LoRA targets"),
             (["--data", str(data), "--out", str(base[1])], "already exists")]
    for extra, message in cases:
        args = ["finetune", "--ckpt", str(base[1]), "--out", str(tmp_path / "out")] + extra
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and err.startswith("minillm finetune: error:"), err
    assert not (tmp_path / "out").exists()
