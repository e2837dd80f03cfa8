"""Write a random-weight llama-architecture GGUF with a small SentencePiece-style vocab.

For benchmarking the llama executor without carrying a real model: the weights are random, so the
text is garbage, but the shapes (and so the work per token) are those of a real model.

    python benchmarks/tiny_llama.py OUT.gguf --preset tiny   # ~6 MiB, for a CPU smoke test
    python benchmarks/tiny_llama.py OUT.gguf --preset 1b     # TinyLlama-1.1B's shape, ~1 GiB Q8_0

Needs numpy and gguf (``pip install gguf``, or ``--gguf-py`` naming the gguf-py folder of the
llama.cpp that llama-cpp-python vendors).

The output rows of the control tokens and of the non-ASCII byte tokens are zero (logit 0) while
the others have logits of std ~8, so sampling practically never emits EOS or a partial UTF-8
byte: a generation runs its whole max_tokens and every token is a non-empty ASCII piece.
"""

from __future__ import annotations

import argparse
import string
import sys
import time
from pathlib import Path

import numpy as np

PRESETS = {
    # n_embd, n_layer, n_ff, n_head, n_head_kv
    "tiny": (256, 2, 768, 8, 4),
    "mid": (1024, 4, 2816, 16, 4),
    "1b": (2048, 22, 5632, 32, 4),
}


def vocab() -> tuple[list[str], list[float], list[int]]:
    """<unk> <s> </s>, 256 byte tokens, printable ASCII, '▁'+letter, letter pairs, some words."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, CONTROL, BYTE...
    pieces: list[str] = ["▁"]
    pieces += [c for c in string.printable[:95] if c != " "]
    pieces += ["▁" + c for c in string.ascii_letters]
    pieces += [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
    words = "the of and to in is that it for on with as was at by be this are from or have an not but all"
    pieces += ["▁" + w for w in words.split()]
    seen: set[str] = set()
    for p in pieces:
        if p not in seen:
            seen.add(p)
            tokens.append(p)
            types.append(1)  # NORMAL
    # SPM merges by score: longer pieces first
    scores = [0.0] * 259 + [float(-1000 + 10 * len(t)) for t in tokens[259:]]
    return tokens, scores, types


def q8_0(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    """Random Q8_0 blocks directly (a half scale + 32 int8 per block), as uint8 bytes."""
    block = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])
    out = np.empty((rows, cols // 32), dtype=block)
    out["d"] = np.float16(std * np.sqrt(3.0) / 127.0)  # uniform in [-127, 127] * d has this std
    out["qs"] = rng.integers(-127, 128, size=(rows, cols // 32, 32), dtype=np.int8)
    return out.view(np.uint8).reshape(rows, cols // 32 * block.itemsize)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--quant", choices=["q8_0", "f16"], default="q8_0")
    ap.add_argument("--gguf-py", help="a gguf-py folder, if the gguf package is not installed")
    args = ap.parse_args()
    if args.gguf_py:
        sys.path.insert(0, args.gguf_py)
    import gguf

    t0 = time.time()
    n_embd, n_layer, n_ff, n_head, n_head_kv = PRESETS[args.preset]
    head_dim = n_embd // n_head
    rng = np.random.default_rng(0)
    tokens, scores, types = vocab()
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name(f"random-llama-{args.preset}")
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    qtype = gguf.GGMLQuantizationType.Q8_0 if args.quant == "q8_0" else gguf.GGMLQuantizationType.F16
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if args.quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    def mat(name: str, rows: int, cols: int, std: float = 0.02) -> None:
        if args.quant == "q8_0":
            w.add_tensor(name, q8_0(rng, rows, cols, std), raw_dtype=qtype)
        else:
            w.add_tensor(name, (rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float16))

    ones = np.ones(n_embd, dtype=np.float32)
    w.add_tensor(
        "token_embd.weight", rng.standard_normal((n_vocab, n_embd), dtype=np.float32).astype(np.float16)
    )
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        mat(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        mat(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        mat(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        mat(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        mat(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    w.add_tensor("output_norm.weight", ones)
    out = rng.standard_normal((n_vocab, n_embd), dtype=np.float32) * (8.0 / np.sqrt(n_embd))
    for i, (t, ty) in enumerate(zip(tokens, types, strict=True)):
        if ty != 1 and not (ty == 6 and 0x20 <= int(t[3:5], 16) < 0x7F):
            out[i] = 0.0  # control tokens, unk and non-printable bytes: logit 0, never sampled
    w.add_tensor("output.weight", out.astype(np.float16))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = Path(args.out).stat().st_size
    params = (
        n_layer * (2 * n_embd * n_embd + 2 * n_head_kv * head_dim * n_embd + 3 * n_embd * n_ff)
        + 2 * n_vocab * n_embd
    )
    shape = f"{n_layer} layers, n_embd {n_embd}, n_ff {n_ff}, heads {n_head}/{n_head_kv}"
    print(
        f"wrote {args.out}: preset {args.preset} ({shape}), vocab {n_vocab}, {params / 1e6:.0f}M params, "
        f"{args.quant}, {size / 2**20:.1f} MiB, {time.time() - t0:.1f}s"
    )


if __name__ == "__main__":
    main()
