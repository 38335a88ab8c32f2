#!/usr/bin/env python3
"""Independent reference for lhama's forward pass, tokenizer and chat template.

Loads a model directory (Hugging Face layout, AWQ GEMM or plain weights) with
Hugging Face transformers + PyTorch. AWQ layers are dequantized here from the
safetensors tensors, following AutoAWQ's definition of the packing (autoawq
itself is not needed). Writes, as JSON:
  - for a fixed set of prompts (recorded as token ids): the logits at every
    position and a greedy continuation that never stops at EOS;
  - for a fixed set of conversations: the text `apply_chat_template` renders
    (or the exception it raises) and the ids of that text.

Usage: make_goldens.py --model DIR --out FILE [--dtype float64] [--device cuda]
"""

import argparse
import hashlib
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file

# AutoAWQ packs 8 columns per int32: nibble i holds column 8c + ORDER[i].
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]

PROMPT_TEXTS = [
    "Qual a capital do Brasil?",
    "<s><instruction>Olá, tudo bem?</instruction>",
    "A ação e o coração são palavras com ç e ã, não é?",
]

CHATS = [
    ([("user", "Qual a capital do Brasil?")], True),
    ([("user", " Oi "), ("assistant", " Olá! Como posso ajudar? "), ("user", "Me fale sobre o Brasil.\n")], True),
    ([("user", "Ação, coração, pão — ça va? 日本")], True),
    ([("user", "sem prompt de geração")], False),
    ([("system", "Seja breve."), ("user", "Oi")], True),
    ([("user", "a"), ("assistant", "b"), ("assistant", "c")], True),
    ([("user", "a"), ("tool", "b")], True),
]


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """[R, N/8] int32 -> [R, N] values in 0..15, undoing AutoAWQ's order."""
    words = packed.to(torch.int64) & 0xFFFFFFFF
    rows, n8 = words.shape
    out = torch.empty(rows, n8 * 8, dtype=torch.int64)
    for nibble, col in enumerate(AWQ_ORDER):
        out[:, col::8] = (words >> (4 * nibble)) & 0xF
    return out


def dequantize(qweight, qzeros, scales, group_size, dtype):
    q = unpack_awq(qweight).to(torch.float64)
    z = unpack_awq(qzeros).to(torch.float64).repeat_interleave(group_size, dim=0)
    s = scales.to(torch.float64).repeat_interleave(group_size, dim=0)
    w = (q - z) * s  # [K, N]: y = x @ w
    return w.t().contiguous().to(dtype)  # torch Linear layout [N, K]


def load_state_dict(model_dir, group_size, dtype):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    raw = {}
    for name in files:
        raw.update(load_file(os.path.join(model_dir, name)))
    state = {}
    for name, tensor in raw.items():
        if name.endswith(".qweight"):
            prefix = name[: -len(".qweight")]
            state[prefix + ".weight"] = dequantize(
                tensor, raw[prefix + ".qzeros"], raw[prefix + ".scales"], group_size, dtype
            )
        elif name.endswith(".qzeros") or name.endswith(".scales"):
            continue
        else:
            state[name] = tensor.to(dtype)
    return state


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_tokenizer(model_dir):
    try:
        tok = transformers.AutoTokenizer.from_pretrained(model_dir)
        return tok, type(tok).__name__
    except Exception as e:  # noqa: BLE001 - record and fall back
        with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
            cfg = json.load(f)
        tok = transformers.PreTrainedTokenizerFast(
            tokenizer_file=os.path.join(model_dir, "tokenizer.json"),
            bos_token=cfg.get("bos_token"),
            eos_token=cfg.get("eos_token"),
            unk_token=cfg.get("unk_token"),
        )
        tok.chat_template = cfg.get("chat_template")
        return tok, f"PreTrainedTokenizerFast (AutoTokenizer failed: {e})"


# Positions of a long prompt whose logits the golden keeps (its last ones).
LONG_LOGITS = 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32", "float16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--decimals", type=int, default=5)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)

    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    quant = cfg.pop("quantization_config", None)
    group_size = quant["group_size"] if quant else None
    cfg.pop("torch_dtype", None)
    config = transformers.LlamaConfig(**cfg)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(dtype)
    missing, unexpected = model.load_state_dict(load_state_dict(args.model, group_size, dtype), strict=False)
    missing = [m for m in missing if "rotary_emb" not in m]
    if config.tie_word_embeddings:
        missing = [m for m in missing if m != "lm_head.weight"]
        model.tie_weights()
    if missing or unexpected:
        sys.exit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model = model.to(args.device).eval()

    tok, tok_class = load_tokenizer(args.model)
    vocab = config.vocab_size
    prompts = [tok(text, add_special_tokens=not text.startswith("<s>")).input_ids for text in PROMPT_TEXTS]
    prompts.append([1] + [(i * 7919 + 11) % vocab for i in range(1, 24)])
    # A long context, so that attention is checked where it matters: about
    # 1,500 tokens (less where the model's context is shorter); logits are
    # kept for its last LONG_LOGITS positions only (the file stays small).
    long_len = min(1500, config.max_position_embeddings - args.steps - 16)
    prompts.append([1] + [3 + (i * 104729 + 7) % (vocab - 3) for i in range(1, long_len)])

    out_prompts = []
    min_gap = float("inf")
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids], device=args.device)
            logits = model(x).logits[0].to(torch.float64).cpu()
            seq = list(ids)
            greedy, gaps = [], []
            for _ in range(args.steps):
                last = model(torch.tensor([seq], device=args.device)).logits[0, -1].to(torch.float64).cpu()
                top2 = torch.topk(last, 2).values
                gaps.append(round(float(top2[0] - top2[1]), args.decimals))
                min_gap = min(min_gap, gaps[-1])
                nxt = int(torch.argmax(last))
                greedy.append(nxt)
                seq.append(nxt)
            logits_from = max(0, len(ids) - LONG_LOGITS) if len(ids) > 256 else 0
            out_prompts.append({
                "ids": ids,
                "logits_from": logits_from,
                "logits": [[round(float(v), args.decimals) for v in row] for row in logits[logits_from:]],
                "greedy": greedy,
                "greedy_gaps": gaps,
            })

    chats = []
    for messages, gen in CHATS:
        msgs = [{"role": r, "content": c} for r, c in messages]
        entry = {"messages": msgs, "add_generation_prompt": gen, "text": None, "error": None, "ids": None}
        try:
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            entry["text"] = text
            entry["ids"] = tok(text, add_special_tokens=False).input_ids
        except Exception as e:  # noqa: BLE001 - the template's raise_exception
            entry["error"] = str(e)
        chats.append(entry)

    golden = {
        "reference": (
            f"transformers {transformers.__version__}, torch {torch.__version__}, {args.dtype} on "
            f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}, eager attention, "
            f"tokenizer {tok_class}; min top-2 logit gap over greedy steps {min_gap:.4f}"
        ),
        "weights_sha256": sha256(os.path.join(args.model, "model.safetensors"))
        if os.path.exists(os.path.join(args.model, "model.safetensors")) else None,
        "prompts": out_prompts,
        "chats": chats,
    }
    with open(args.out, "w") as f:
        json.dump(golden, f, ensure_ascii=False, separators=(",", ":"))
    print(f"wrote {args.out}: {len(out_prompts)} prompts, {len(chats)} chats; {golden['reference']}")


if __name__ == "__main__":
    main()
