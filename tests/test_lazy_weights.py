"""Float loads read safetensors tensor by tensor (vary.modeling.lazy_weights): the same model as the whole-file
loaders give, for our folders and the released layouts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_config
from test_got import tiny_hf_got, write_official_got
from test_quantize import got_like_config
from vary.modeling import got, official
from vary.modeling.lazy_weights import load_float
from vary.modeling.loading import load_model
from vary.modeling.quantize import is_quantized, load_quantized, quantize_model_
from vary.modeling.vary import VaryForCausalLM


def _to_bf16(folder) -> None:
    for file in folder.glob("*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(file).items()}, file, metadata={"format": "pt"})


def _same_model(a: VaryForCausalLM, b: VaryForCausalLM) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("config", [got_like_config(), tiny_config()], ids=["qwen2", "opt"])
def test_our_folders_load_as_from_pretrained_loads_them(tmp_path, monkeypatch, config, dtype):
    """The lazy load of our format gives from_pretrained's model (weights, buffers, generation config), which the
    default load_model no longer calls for safetensors folders."""
    torch.manual_seed(0)
    model = VaryForCausalLM(config)
    model.generation_config.no_repeat_ngram_size = 7
    model.to(torch.bfloat16).save_pretrained(tmp_path)  # 16-bit on disk, as the releases
    reference = VaryForCausalLM.from_pretrained(tmp_path, dtype=dtype).eval()

    def whole_file_load(*args, **kwargs):
        raise AssertionError("load_model read the checkpoint through from_pretrained")

    monkeypatch.setattr(VaryForCausalLM, "from_pretrained", whole_file_load)
    lazy = load_model(tmp_path, dtype=dtype)
    _same_model(lazy, reference)
    assert lazy.generation_config.no_repeat_ngram_size == 7 and not lazy.training
    assert lazy.config.dtype == reference.config.dtype == dtype
    assert lazy.config.text_config.dtype == reference.config.text_config.dtype
    rotary = [b for name, b in lazy.named_buffers() if name.endswith("inv_freq")]
    assert all(b.dtype == torch.float32 for b in rotary)  # float32 whatever the weights' dtype, as transformers


@pytest.mark.parametrize("layout", ["official", "transformers"])
def test_released_layouts_load_as_the_whole_file_loaders_load_them(tmp_path, layout):
    """GOT-OCR2 as released (official remote-code layout or transformers' GotOcr2), 16-bit: the lazy float load
    equals load_official / load_hf_got, which read the whole file."""
    folder = tmp_path / layout
    if layout == "official":
        write_official_got(folder, seed=4)
        whole = official.load_official
    else:
        tiny_hf_got(seed=4).save_pretrained(folder)
        whole = got.load_hf_got
    _to_bf16(folder)
    lazy = load_float(folder, torch.float32)
    reference = whole(folder, dtype=torch.float32)
    # load_official casts the rotary frequencies with the weights; the lazy load keeps them float32
    assert all(b.dtype == torch.float32 for b in lazy.buffers() if b.is_floating_point())
    _same_model(lazy, reference)


def test_pickled_weights_are_left_to_the_whole_file_loaders(tmp_path):
    torch.manual_seed(0)
    VaryForCausalLM(tiny_config()).save_pretrained(tmp_path)
    torch.save(load_file(tmp_path / "model.safetensors"), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    assert load_float(tmp_path, torch.float32) is None
    assert load_model(tmp_path).dtype == torch.float32
    assert load_quantized(tmp_path) is None  # int8: load_model loads the float32 model, then quantizes it
    quantized, reference = load_model(tmp_path, quantize="int8"), quantize_model_(load_model(tmp_path))
    assert is_quantized(quantized)
    ids = torch.randint(3, 500, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(quantized(ids).logits, reference(ids).logits)
