#!/usr/bin/env python3
"""Convert an AutoAWQ (GEMM, 4-bit) Llama checkpoint to an f16 GGUF for llama.cpp.

    python bench/llamacpp_gguf.py MODEL_DIR OUT.gguf [--outtype f16|f32] [--gguf-py DIR]

This exists for one job: a same-machine speed comparison against llama.cpp's
CPU build (bench/llamacpp_bench.sh). Every AWQ linear is dequantized exactly the
way the Rust loader does it (crates/lhama-model/src/awq.rs):

    W[k, n] = (q[k, n] - z[k / G, n]) * s[k / G, n]

with column 8c + j of a packed int32 in bits 4 * SHIFT_SLOT[j] .. +4,
SHIFT_SLOT = [0, 4, 1, 5, 2, 6, 3, 7] (the inverse of AutoAWQ's interleave
[0, 2, 4, 6, 1, 3, 5, 7]). W is [in, out]; GGUF wants torch's [out, in] layout,
so it is transposed. The result is then quantized by llama.cpp itself
(`llama-quantize OUT.gguf OUT-q4_0.gguf Q4_0`).

Two llama.cpp conventions the converter has to respect:
- RoPE: llama.cpp's "llama" architecture rotates adjacent pairs (2i, 2i+1), the
  checkpoint follows Hugging Face's rotate-half (i, i + head_dim/2). llama.cpp's
  own HF converter therefore reorders the rows of q_proj and k_proj within each
  head: row (h, half, i) moves to (h, i, half). Done here the same way.
- 1-D tensors (the RMSNorm weights) are stored as f32, as llama.cpp's converter does.

Tokenizer: the checkpoint's tokenizer.json is a SentencePiece-style BPE with byte
fallback; it is written as llama.cpp's "llama" (SPM) tokenizer. The SPM merger
picks the adjacent pair whose merged piece has the highest score, so each piece
gets score -(rank of the first merge that produces it), which reproduces the
BPE merge priority; pieces no merge produces (single characters, bytes,
specials) score 0.

Needs numpy, safetensors and the `gguf` package of the llama.cpp version that
will read the file (its gguf-py directory: `pip install -e .../gguf-py`, or
pass --gguf-py). No torch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

# Nibble slot of column 8c + j in a packed AWQ word (awq.rs SHIFT_SLOT).
SHIFT_SLOT = np.array([0, 4, 1, 5, 2, 6, 3, 7], dtype=np.uint32)

LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path, help="checkpoint directory (config.json, tokenizer.json, *.safetensors)")
    p.add_argument("out", type=Path, help="GGUF file to write")
    p.add_argument("--outtype", choices=("f16", "f32"), default="f16",
                   help="type of the 2-D tensors (default f16; f32 is for numerics checks)")
    p.add_argument("--gguf-py", type=Path, default=None,
                   help="llama.cpp's gguf-py directory, if the gguf package is not installed")
    return p.parse_args()


def load_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class Checkpoint:
    """Lazy access to the safetensors tensors of one checkpoint (single file or shards)."""

    def __init__(self, model_dir: Path):
        from safetensors import safe_open

        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(load_json(index)["weight_map"].values()))
        elif (model_dir / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            files = sorted(p.name for p in model_dir.glob("*.safetensors"))
        if not files:
            sys.exit(f"no .safetensors file in {model_dir}")
        self.handles = [safe_open(str(model_dir / f), framework="numpy") for f in files]
        self.where = {}
        for h in self.handles:
            for name in h.keys():
                self.where[name] = h

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> np.ndarray:
        if name not in self.where:
            sys.exit(f"tensor {name} missing from the checkpoint")
        return self.where[name].get_tensor(name)


def unpack_awq(packed: np.ndarray) -> np.ndarray:
    """[R, N/8] int32 words -> [R, N] uint8 nibbles, columns in natural order."""
    words = packed.view(np.uint32)
    nib = (words[:, :, None] >> (4 * SHIFT_SLOT)[None, None, :]) & 0xF
    return nib.reshape(words.shape[0], -1).astype(np.uint8)


def dequant_awq(ck: Checkpoint, prefix: str, group: int) -> np.ndarray:
    """AWQ GEMM linear -> f32 [out, in] (torch Linear.weight layout)."""
    qweight = ck.get(prefix + ".qweight")
    qzeros = ck.get(prefix + ".qzeros")
    scales = ck.get(prefix + ".scales").astype(np.float32)
    k = qweight.shape[0]
    n = qweight.shape[1] * 8
    if k % group or qzeros.shape != (k // group, n // 8) or scales.shape != (k // group, n):
        sys.exit(f"{prefix}: unexpected AWQ shapes qweight {qweight.shape} qzeros {qzeros.shape} "
                 f"scales {scales.shape} for group size {group}")
    q = unpack_awq(qweight).astype(np.float32).reshape(k // group, group, n)
    z = unpack_awq(qzeros).astype(np.float32)
    w = (q - z[:, None, :]) * scales[:, None, :]
    return np.ascontiguousarray(w.reshape(k, n).T)


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder q/k rows per head from rotate-half to llama.cpp's adjacent-pair RoPE."""
    rows = w.shape[0]
    head_dim = rows // n_head
    return (w.reshape(n_head, 2, head_dim // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def vocab_from_tokenizer(model_dir: Path, vocab_size: int, gguf):
    tok = load_json(model_dir / "tokenizer.json")
    if not tok:
        sys.exit(f"{model_dir}/tokenizer.json is missing")
    model = tok["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback", False):
        sys.exit("only SentencePiece-style BPE tokenizers with byte fallback are supported "
                 f"(tokenizer.json model type {model.get('type')}, byte_fallback {model.get('byte_fallback')})")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["id"]: t for t in tok.get("added_tokens", [])}
    for tid, t in added.items():
        vocab.setdefault(t["content"], tid)

    rank: dict[str, int] = {}
    for i, merge in enumerate(model.get("merges", [])):
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(a + b, i)

    by_id: dict[int, str] = {}
    for piece, tid in vocab.items():
        by_id.setdefault(tid, piece)
    n = max(vocab_size, max(by_id) + 1)

    tokens, scores, types = [], [], []
    byte_re = re.compile(r"<0x[0-9A-Fa-f]{2}>")
    for tid in range(n):
        piece = by_id.get(tid)
        if piece is None:
            tokens.append(f"[PAD{tid}]")
            scores.append(-1e9)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(piece)
        scores.append(-float(rank[piece]) if piece in rank else 0.0)
        if tid in added:
            types.append(gguf.TokenType.CONTROL if added[tid].get("special", False)
                         else gguf.TokenType.USER_DEFINED)
        elif byte_re.fullmatch(piece):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


def token_id(name: str | None, vocab_pieces: list[str]) -> int | None:
    if name is None:
        return None
    if isinstance(name, dict):
        name = name.get("content")
    try:
        return vocab_pieces.index(name)
    except ValueError:
        return None


def main() -> None:
    args = parse_args()
    if args.gguf_py is not None:
        sys.path.insert(0, str(args.gguf_py))
    try:
        import gguf
    except ImportError:
        sys.exit("the gguf package is missing: pip install -e LLAMA_CPP/gguf-py, or pass --gguf-py")

    d: Path = args.model_dir
    cfg = load_json(d / "config.json")
    gen = load_json(d / "generation_config.json")
    tcfg = load_json(d / "tokenizer_config.json")
    if not cfg:
        sys.exit(f"{d}/config.json is missing")
    if cfg.get("model_type") != "llama":
        sys.exit(f"model_type {cfg.get('model_type')!r}: only llama checkpoints are supported")
    if cfg.get("rope_scaling"):
        sys.exit(f"rope_scaling {cfg['rope_scaling']} is not supported by this converter")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        sys.exit("attention/MLP biases are not supported by this converter")

    n_embd = cfg["hidden_size"]
    n_ff = cfg["intermediate_size"]
    n_layer = cfg["num_hidden_layers"]
    n_head = cfg["num_attention_heads"]
    n_head_kv = cfg.get("num_key_value_heads", n_head)
    head_dim = cfg.get("head_dim", n_embd // n_head)
    vocab_size = cfg["vocab_size"]
    qcfg = cfg.get("quantization_config") or {}
    group = int(qcfg.get("group_size", 128))
    if qcfg and (qcfg.get("quant_method") != "awq" or qcfg.get("bits", 4) != 4
                 or str(qcfg.get("version", "gemm")).lower() != "gemm"):
        sys.exit(f"unsupported quantization_config {qcfg}: only AWQ GEMM 4-bit")

    def cfg_id(key: str) -> int | None:
        for src in (gen, cfg):
            v = src.get(key)
            if isinstance(v, list):
                v = v[0] if v else None
            if v is not None:
                return int(v)
        return None

    ck = Checkpoint(d)
    tokens, scores, types = vocab_from_tokenizer(d, vocab_size, gguf)
    unk_id = token_id(tcfg.get("unk_token"), tokens)
    if unk_id is None:
        unk_id = token_id(load_json(d / "tokenizer.json")["model"].get("unk_token"), tokens)
    if unk_id is not None:
        types[unk_id] = gguf.TokenType.UNKNOWN

    bos_id = cfg_id("bos_token_id")
    eos_id = cfg_id("eos_token_id")
    pad_id = cfg_id("pad_token_id")
    if bos_id is None:
        bos_id = token_id(tcfg.get("bos_token"), tokens)
    if eos_id is None:
        eos_id = token_id(tcfg.get("eos_token"), tokens)

    out_type = np.float16 if args.outtype == "f16" else np.float32
    ftype = gguf.LlamaFileType.MOSTLY_F16 if args.outtype == "f16" else gguf.LlamaFileType.ALL_F32

    w = gguf.GGUFWriter(str(args.out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_name(d.resolve().name)
    w.add_vocab_size(vocab_size)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_file_type(ftype)

    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    for tid, add in ((bos_id, w.add_bos_token_id), (eos_id, w.add_eos_token_id),
                     (unk_id, w.add_unk_token_id), (pad_id, w.add_pad_token_id)):
        if tid is not None:
            add(tid)
    w.add_add_bos_token(bool(tcfg.get("add_bos_token", True)))
    w.add_add_eos_token(bool(tcfg.get("add_eos_token", False)))
    if tcfg.get("chat_template"):
        w.add_chat_template(tcfg["chat_template"])

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)

    def put(hf_name: str, t: np.ndarray) -> None:
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            sys.exit(f"no GGUF name for {hf_name}")
        t = t.astype(np.float32 if t.ndim == 1 else out_type)
        w.add_tensor(name, np.ascontiguousarray(t))
        print(f"{hf_name:50s} -> {name:24s} {t.dtype} {list(t.shape)}", file=sys.stderr)

    put("model.embed_tokens.weight", ck.get("model.embed_tokens.weight"))
    for layer in range(n_layer):
        base = f"model.layers.{layer}"
        put(f"{base}.input_layernorm.weight", ck.get(f"{base}.input_layernorm.weight"))
        for lin in LINEARS:
            prefix = f"{base}.{lin}"
            if prefix + ".qweight" in ck:
                t = dequant_awq(ck, prefix, group)
            else:  # an unquantized Linear: already [out, in]
                t = ck.get(prefix + ".weight").astype(np.float32)
            if lin == "self_attn.q_proj":
                t = permute_rope(t, n_head)
            elif lin == "self_attn.k_proj":
                t = permute_rope(t, n_head_kv)
            put(f"{prefix}.weight", t)
        put(f"{base}.post_attention_layernorm.weight", ck.get(f"{base}.post_attention_layernorm.weight"))
    put("model.norm.weight", ck.get("model.norm.weight"))
    if "lm_head.weight" in ck:
        put("lm_head.weight", ck.get("lm_head.weight"))
    elif not cfg.get("tie_word_embeddings", False):
        sys.exit("lm_head.weight missing and tie_word_embeddings is false")
    # (tied embeddings: llama.cpp reuses token_embd when output.weight is absent)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
