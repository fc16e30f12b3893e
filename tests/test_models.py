"""The llama2.c importer: stories260K becomes a Hugging Face Llama folder whose greedy continuation from BOS is the
one its SOURCE.json records, whose tokenizer encodes as llama2.c's run.c does, and whose logits mlx-lm reproduces."""

import importlib.util
import json
import struct

import numpy as np
import pytest
from conftest import run_cli, shared_path

from metapeft import MetapeftError


@pytest.fixture(scope="module")
def s260k(tmp_path_factory):
    out = tmp_path_factory.mktemp("s260k") / "model"
    result = run_cli("model", "import-llama2c", str(shared_path("models", "stories260K")), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_the_converted_model_continues_from_bos_as_source_json_says(s260k):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(s260k), AutoTokenizer.from_pretrained(s260k)
    with torch.no_grad():
        out = model.generate(torch.tensor([[tokenizer.bos_token_id]]), max_new_tokens=60, do_sample=False)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    recorded = json.loads(shared_path("models", "stories260K", "SOURCE.json").read_text())["verification"]
    sentence = recorded.split("produced: '")[1].split("...")[
        0
    ]  # 'Once upon a time, there was a little girl named Lily. ...'
    assert text.startswith(sentence), text


def _run_c_encode(text: str, tokens: list[tuple[str, float]]) -> list[int]:
    """llama2.c run.c's encode(), transcribed: BOS, a dummy-prefix space, code points (or their bytes + 3), then
    merge the best-scoring adjacent pair until none merges."""
    index = {t: i for i, (t, _) in enumerate(tokens)}
    ids = [1, index[" "]]
    for ch in text:
        ids += [index[ch]] if ch in index else [b + 3 for b in ch.encode("utf-8")]
    while True:
        best = max(
            (
                (tokens[index[tokens[a][0] + tokens[b][0]]][1], i)
                for i, (a, b) in enumerate(zip(ids, ids[1:]))
                if tokens[a][0] + tokens[b][0] in index and a > 2 and b > 2
            ),
            default=None,
            key=lambda s: (s[0], -s[1]),
        )
        if best is None:
            return ids
        i = best[1]
        ids[i : i + 2] = [index[tokens[ids[i]][0] + tokens[ids[i + 1]][0]]]


def test_the_tokenizer_encodes_and_decodes_as_run_c(s260k):
    from transformers import AutoTokenizer

    from metapeft.models._llama2c import read_tokenizer

    tokens = read_tokenizer(shared_path("models", "stories260K", "tok512.bin"), 512)
    tokenizer = AutoTokenizer.from_pretrained(s260k)
    for text in [
        "Once upon a time, there was a little girl named Lily.",
        'The dog\'s ball was RED!  Zoë said: "no" 42',
        "Tom and Sue went to the park.\nThey played.",
        "a",
    ]:
        assert tokenizer(text)["input_ids"] == _run_c_encode(text, tokens), text
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_a_file_of_the_wrong_size_or_header_is_one_line(tmp_path):
    from metapeft.models import import_llama2c

    source = shared_path("models", "stories260K")
    (tmp_path / "tok512.bin").write_bytes((source / "tok512.bin").read_bytes())
    (tmp_path / "cut.bin").write_bytes((source / "stories260K.bin").read_bytes()[:50_000])
    with pytest.raises(MetapeftError, match=r"has 1056540 bytes, this file 50000; the file is truncated"):
        import_llama2c(tmp_path / "cut.bin", tmp_path / "out")
    (tmp_path / "cut.bin").write_bytes(struct.pack("<7i", 64, 172, 5, 7, 4, 512, 512) + b"\0" * 64)
    result = run_cli("model", "import-llama2c", str(tmp_path / "cut.bin"), "-o", str(tmp_path / "out"))
    assert (
        result.returncode == 2
        and "not a llama2.c checkpoint: its header" in result.stderr
        and len(result.stderr.strip().splitlines()) == 1
    )


@pytest.mark.requires_mlx
@pytest.mark.skipif(importlib.util.find_spec("mlx_lm") is None, reason="needs the mlx extra")
def test_torch_and_mlx_logits_agree_on_the_same_weights(s260k):
    import mlx.core as mx
    import torch
    from mlx_lm import load
    from transformers import AutoModelForCausalLM

    ids = [
        1,
        403,
        407,
        261,
        378,
        432,
        383,
        286,
        261,
        376,
        298,
        315,
        421,
    ]  # "Once upon a time, there was a little girl"
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(s260k)(torch.tensor([ids])).logits.numpy()
    model, _ = load(str(s260k))
    got = np.array(model(mx.array([ids])).astype(mx.float32))
    assert np.abs(got - expected).max() < 1e-4
