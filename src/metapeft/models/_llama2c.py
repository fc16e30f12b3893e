"""Import a llama2.c checkpoint (Karpathy's ``run.c`` format, e.g. the tinyllamas ``stories260K``) as a Hugging Face
Llama checkpoint: ``config.json``, ``model.safetensors`` and a ``tokenizer.json``. mlx-lm reads the same folder
(its Llama weights have Hugging Face's names and RoPE layout), so one import serves both backends.

The weights file is the legacy "version 0" export: seven little-endian int32s ``[dim, hidden_dim, n_layers,
n_heads, n_kv_heads, vocab_size, seq_len]`` (a negative ``vocab_size`` means the output matrix is stored apart
from the token embedding), then float32 arrays: token embedding, attention RMSNorm, wq, wk, wv, wo, FFN RMSNorm,
w1, w2, w3, final RMSNorm, the RoPE tables, and the output matrix when not shared. llama2.c rotates interleaved
pairs of a head's dimensions where Hugging Face rotates its two halves, so wq and wk are permuted as Hugging Face's
own Llama conversion script does.

The tokenizer file holds, after an int32 maximum token length, each token's float32 merge score, int32 byte length
and bytes; ids 3–258 are byte-fallback tokens. ``run.c`` merges the adjacent pair whose merged token scores highest
until none is in the vocabulary, after prepending a space: a BPE whose merge ranks are the merged tokens' scores,
which is what the ``tokenizers`` model built here is (every split of a merged token into two known tokens is a
merge, as Hugging Face's SentencePiece converter does).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._errors import MetapeftError

HEADER = struct.Struct("<7i")


@dataclass(frozen=True)
class Llama2cHeader:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    def floats(self) -> int:
        """How many float32s the file holds after the header."""
        kv = self.n_kv_heads * self.head_size
        per_layer = 2 * self.dim + 2 * self.dim * self.dim + 2 * kv * self.dim + 3 * self.hidden_dim * self.dim
        rope = self.seq_len * self.head_size  # real and imaginary tables, head_size / 2 each
        return (
            self.vocab_size * self.dim
            + self.n_layers * per_layer
            + self.dim
            + rope
            + (0 if self.shared_classifier else self.vocab_size * self.dim)
        )


def read_header(path: Path) -> Llama2cHeader:
    """The checkpoint's header, checked against the file's size (one-line MetapeftError when it does not fit)."""
    size = path.stat().st_size
    if size < HEADER.size:
        raise MetapeftError(
            f"{path}: {size} bytes is too short for a llama2.c checkpoint (a 28-byte header of 7 int32s comes first)"
        )
    with open(path, "rb") as f:
        dim, hidden, layers, heads, kv_heads, vocab, seq_len = HEADER.unpack(f.read(HEADER.size))
    header = Llama2cHeader(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len, vocab > 0)
    if (
        min(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len) <= 0
        or dim % heads
        or heads % kv_heads
        or (dim // heads) % 2
    ):
        raise MetapeftError(
            f"{path}: not a llama2.c checkpoint: its header [dim, hidden_dim, n_layers, n_heads, n_kv_heads, "
            f"vocab_size, seq_len] reads {[dim, hidden, layers, heads, kv_heads, vocab, seq_len]}"
        )
    expected = HEADER.size + 4 * header.floats()
    if size != expected:
        raise MetapeftError(
            f"{path}: a llama2.c checkpoint with header "
            f"{[dim, hidden, layers, heads, kv_heads, vocab, seq_len]} has {expected} bytes, "
            f"this file {size}; the file is truncated or of another format (only the legacy version-0 export is read)"
        )
    return header


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama2.c's interleaved RoPE pairs → Hugging Face's rotated halves (its convert_llama_weights_to_hf)."""
    out_features, in_features = w.shape
    return (
        w.reshape(n_heads, out_features // n_heads // 2, 2, in_features)
        .transpose(0, 2, 1, 3)
        .reshape(out_features, in_features)
    )


def read_weights(path: Path) -> tuple[Llama2cHeader, dict[str, np.ndarray]]:
    """The checkpoint as Hugging Face ``LlamaForCausalLM`` state-dict arrays (float32)."""
    h = read_header(path)
    data = np.fromfile(path, dtype="<f4", offset=HEADER.size)
    kv = h.n_kv_heads * h.head_size
    at = 0

    def take(*shape: int) -> np.ndarray:
        nonlocal at
        n = int(np.prod(shape))
        out = data[at : at + n].reshape(shape)
        at += n
        return out

    L = h.n_layers
    embed = take(h.vocab_size, h.dim)
    rms_att, wq, wk, wv, wo = (
        take(L, h.dim),
        take(L, h.dim, h.dim),
        take(L, kv, h.dim),
        take(L, kv, h.dim),
        take(L, h.dim, h.dim),
    )
    rms_ffn, w1, w2, w3 = (
        take(L, h.dim),
        take(L, h.hidden_dim, h.dim),
        take(L, h.dim, h.hidden_dim),
        take(L, h.hidden_dim, h.dim),
    )
    norm = take(h.dim)
    take(h.seq_len, h.head_size // 2), take(h.seq_len, h.head_size // 2)  # RoPE tables: recomputed from theta
    weights = {"model.embed_tokens.weight": embed, "model.norm.weight": norm}
    if not h.shared_classifier:
        weights["lm_head.weight"] = take(h.vocab_size, h.dim)
    for i in range(L):
        p = f"model.layers.{i}."
        weights.update(
            {
                p + "input_layernorm.weight": rms_att[i],
                p + "post_attention_layernorm.weight": rms_ffn[i],
                p + "self_attn.q_proj.weight": _permute(wq[i], h.n_heads),
                p + "self_attn.k_proj.weight": _permute(wk[i], h.n_kv_heads),
                p + "self_attn.v_proj.weight": wv[i],
                p + "self_attn.o_proj.weight": wo[i],
                p + "mlp.gate_proj.weight": w1[i],
                p + "mlp.down_proj.weight": w2[i],
                p + "mlp.up_proj.weight": w3[i],
            }
        )
    return h, {k: np.ascontiguousarray(v) for k, v in weights.items()}


def read_tokenizer(path: Path, vocab_size: int) -> list[tuple[str, float]]:
    """The tokenizer file's (token, score) pairs, in id order."""
    raw = path.read_bytes()
    tokens, at = [], 4
    try:
        for _ in range(vocab_size):
            score, length = struct.unpack_from("<fi", raw, at)
            tokens.append((raw[at + 8 : at + 8 + length].decode("utf-8"), score))
            at += 8 + length
    except (struct.error, UnicodeDecodeError) as exc:
        raise MetapeftError(f"{path}: not a llama2.c tokenizer for {vocab_size} tokens ({exc})") from None
    if at != len(raw):
        raise MetapeftError(
            f"{path}: a llama2.c tokenizer of {vocab_size} tokens ends at byte {at}, the file has {len(raw)}; "
            "it belongs to another model"
        )
    return tokens


def build_tokenizer(tokens: list[tuple[str, float]]):
    """A ``tokenizers`` BPE that encodes and decodes as llama2.c's ``run.c`` (module docstring)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors

    names = [t.strip() if i in (1, 2) else t for i, (t, _) in enumerate(tokens)]  # "\n<s>\n" → "<s>"
    vocab = {t: i for i, t in enumerate(names)}
    merges = []
    for i, (token, score) in enumerate(tokens):
        if i < 259 or len(token) < 2:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((score, vocab[left], vocab[right], left, right))
    merges.sort(key=lambda m: (-m[0], m[1], m[2]))
    tok = Tokenizer(
        models.BPE(
            vocab=vocab, merges=[(m[3], m[4]) for m in merges], unk_token="<unk>", byte_fallback=True, fuse_unk=True
        )
    )
    tok.normalizer = normalizers.Prepend(" ")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


def import_llama2c(
    source: str | Path, output: str | Path, *, checkpoint: str | None = None, tokenizer: str | None = None
) -> Path:
    """Convert a llama2.c checkpoint and tokenizer into a Hugging Face Llama folder that transformers and mlx-lm load.

    Args:
        source: The checkpoint file, or a folder holding one ``*.bin`` checkpoint and its ``tok*.bin`` tokenizer.
        output: The folder to write (new or empty).
        checkpoint: The checkpoint's file name in ``source`` (when the folder holds several).
        tokenizer: The tokenizer's file name in ``source``.

    Returns:
        ``output``.

    Raises:
        MetapeftError: A file is missing, or of the wrong size or header.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    source, output = Path(source).expanduser(), Path(output).expanduser()
    folder = source if source.is_dir() else source.parent
    if not source.exists():
        raise MetapeftError(
            f"no such file or directory: {source} (give a llama2.c checkpoint .bin or the folder holding it "
            "and its tokenizer)"
        )
    bins = sorted(folder.glob("*.bin"))
    tok_files = [p for p in bins if p.name.startswith("tok")] if tokenizer is None else [folder / tokenizer]
    weight_files = (
        [source]
        if source.is_file()
        else ([folder / checkpoint] if checkpoint else [p for p in bins if p not in tok_files])
    )
    if len(weight_files) != 1 or not weight_files[0].is_file():
        raise MetapeftError(
            f"{source}: expected one llama2.c checkpoint (*.bin), found {[p.name for p in weight_files]}; "
            "name it with --checkpoint"
        )
    if len(tok_files) != 1 or not tok_files[0].is_file():
        raise MetapeftError(
            f"{folder}: expected one llama2.c tokenizer (tok*.bin) beside the checkpoint, found "
            f"{[p.name for p in tok_files]}; name it with --tokenizer"
        )
    if output.exists() and any(output.iterdir()):
        raise MetapeftError(f"{output} is not empty; give a new folder")
    header, weights = read_weights(weight_files[0])
    tokens = read_tokenizer(tok_files[0], header.vocab_size)
    config = LlamaConfig(
        vocab_size=header.vocab_size,
        hidden_size=header.dim,
        intermediate_size=header.hidden_dim,
        num_hidden_layers=header.n_layers,
        num_attention_heads=header.n_heads,
        num_key_value_heads=header.n_kv_heads,
        head_dim=header.head_size,
        max_position_embeddings=header.seq_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=header.shared_classifier,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v.copy()) for k, v in weights.items()}, strict=False
    )
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise MetapeftError(
            f"internal: the converted weights do not fit LlamaForCausalLM (missing {missing}, unexpected {unexpected})"
        )
    if header.shared_classifier:
        model.tie_weights()
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(tokens),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=header.seq_len,
    )
    fast.save_pretrained(output)
    return output
