#!/usr/bin/env python3
"""The baseline a user of the model card would run: Hugging Face transformers'
generate() on the same checkpoint, AWQ dequantized to fp16 (autoawq is not
installed), eager attention, on the GPU. Prints decode tok/s per batch size and
prefill tok/s, as `hf batch=B tok/s=X` lines.

Usage: hf_generate.py MODEL_DIR [--batches 1,8,64,256] [--prompt-len 128] [--new-tokens 128]
"""

import argparse
import json
import os
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "reference"))
from make_goldens import load_state_dict  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    quant = cfg.pop("quantization_config", None)
    cfg.pop("torch_dtype", None)
    config = transformers.LlamaConfig(**cfg)
    config._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(config).to(torch.float16)
    model.load_state_dict(load_state_dict(args.model, quant["group_size"] if quant else None, torch.float16), strict=False)
    model = model.cuda().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ids = torch.randint(3, config.vocab_size - 2, (1, args.prompt_len), generator=gen).cuda()
        for _ in range(3):
            model(ids)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            model(ids)
        torch.cuda.synchronize()
        prefill = 10 * args.prompt_len / (time.perf_counter() - t0)
        print(f"hf prefill tokens={args.prompt_len} tok/s={prefill:.0f}")
        for b in [int(x) for x in args.batches.split(",")]:
            ids = torch.randint(3, config.vocab_size - 2, (b, args.prompt_len), generator=gen).cuda()
            kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                      pad_token_id=0)
            model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, **kw)
            torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            print(f"hf batch={b} tok/s={b * args.new_tokens / secs:.1f} ms/step={1000 * secs / args.new_tokens:.2f}")


if __name__ == "__main__":
    main()
