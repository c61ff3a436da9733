"""VaryForCausalLM on tiny random configs: splice, loss masking, generation, save/load, checkpointing, freezing."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import TextIteratorStreamer

import vary
from conftest import tiny_config
from vary.config import VaryConfig, preset
from vary.modeling.vary import VaryForCausalLM


def tiny_base_config() -> VaryConfig:
    """A toy Vary-base: CLIP branch (224/14 -> 256 tokens) + vision vocabulary at 1024 + a Qwen2 LM."""
    return preset(
        "vary-base-qwen",
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, global_attn_indexes=[1],
                           output_channels=16),
        downsample_channels=[16, 64],
        clip_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         projection_dim=32),
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=151936),
    )  # fmt: skip


@pytest.fixture(scope="module")
def model() -> VaryForCausalLM:
    torch.manual_seed(0)
    return VaryForCausalLM(tiny_config(image_size=128)).eval()  # 4 image tokens


def _prompt(cfg, n_images: int, text: list[int]) -> list[int]:
    block = [cfg.image_start_token_id] + [cfg.image_patch_token_id] * cfg.image_token_len + [cfg.image_end_token_id]
    return [1] + block * n_images + text


def test_splice_matches_per_sample_reference_for_mixed_batch(model):
    cfg = model.config
    rows = [_prompt(cfg, 1, [10, 11]), _prompt(cfg, 2, [12]), _prompt(cfg, 0, [13, 14, 15, 16])]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    pixels = torch.randn(3, 3, 128, 128)  # image 0 -> sample 0, images 1-2 -> sample 1, none for sample 2
    embeds = model.get_input_embeddings()(ids)
    with torch.no_grad():
        feats = model.encode_images(pixels)  # (3, 4, 64)
        spliced = model.splice_image_features(ids, embeds, feats)
    # reference: a per-sample loop writing images in order after each <img>
    expected = embeds.clone()
    image = 0
    for b, row in enumerate(rows):
        for pos, tok in enumerate(row):
            if tok == cfg.image_start_token_id:
                expected[b, pos + 1 : pos + 1 + cfg.image_token_len] = feats[image]
                image += 1
    torch.testing.assert_close(spliced, expected)
    assert image == 3


def test_wrong_number_of_image_tokens_is_a_clear_error(model):
    ids = torch.tensor([_prompt(model.config, 1, [10])[:-3] + [10]])  # one <imgpad> short
    with pytest.raises(ValueError, match="<imgpad> tokens"):
        model(input_ids=ids, pixel_values=torch.randn(1, 3, 128, 128))


def test_loss_ignores_masked_labels(model):
    ids = torch.tensor([_prompt(model.config, 1, [10, 11, 12, 13])])
    px = torch.randn(1, 3, 128, 128)
    labels = torch.full_like(ids, -100)
    labels[0, -4:] = ids[0, -4:]
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=px, labels=labels)
    logits = out.logits[0, -5:-1]  # positions predicting the last 4 tokens
    manual = torch.nn.functional.cross_entropy(logits, ids[0, -4:])
    torch.testing.assert_close(out.loss, manual)


def test_generate_kv_cache_matches_no_cache_and_streams(model):
    tok = vary.modeling.tokenizer.train_bpe_tokenizer(["abc def ghi jkl"] * 20, vocab_size=300)
    ids = torch.tensor([_prompt(model.config, 1, [10, 11])])
    px = torch.randn(1, 3, 128, 128)
    args = dict(input_ids=ids, pixel_values=px, max_new_tokens=6, min_new_tokens=6, do_sample=False, eos_token_id=None)
    with torch.no_grad():
        cached = model.generate(**args, use_cache=True)
        uncached = model.generate(**args, use_cache=False)
    assert cached.tolist() == uncached.tolist()
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    thread = threading.Thread(target=model.generate, kwargs=dict(args, streamer=streamer))
    thread.start()
    chunks = list(streamer)
    thread.join()
    new_ids = cached[0, ids.shape[1] :].tolist()
    assert "".join(chunks) == tok.decode([i for i in new_ids if i < len(tok)])


def test_save_load_round_trip_vary_base(tmp_path):
    torch.manual_seed(1)
    model = VaryForCausalLM(tiny_base_config()).eval()
    model.save_pretrained(tmp_path)
    again = vary.load_model(tmp_path)
    cfg = model.config
    ids = torch.tensor(
        [[100, cfg.image_start_token_id] + [cfg.image_patch_token_id] * 256 + [cfg.image_end_token_id, 5]]
    )
    inputs = dict(
        input_ids=ids, pixel_values=torch.randn(1, 3, 1024, 1024), pixel_values_clip=torch.randn(1, 3, 224, 224)
    )
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, again(**inputs).logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match="pixel_values_clip"):
        model(input_ids=ids, pixel_values=inputs["pixel_values"])


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(2)
    model = VaryForCausalLM(tiny_config(image_size=128))
    model.train()
    ids = torch.tensor([_prompt(model.config, 1, [10, 11, 12])])
    px = torch.randn(1, 3, 128, 128)
    labels = ids.clone()

    def grads():
        model.zero_grad()
        model(input_ids=ids, pixel_values=px, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable()  # transformers 5 name for gradient checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    assert any("vision_vocab" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-5, rtol=1e-4)


def test_freeze_vision_stops_gradients_and_skips_autograd():
    torch.manual_seed(3)
    model = VaryForCausalLM(tiny_base_config())
    model.freeze_vision()
    assert not any(p.requires_grad for p in model.vision_vocab.parameters())
    assert not any(p.requires_grad for p in model.clip.parameters())
    feats = model.encode_images(torch.randn(1, 3, 1024, 1024), torch.randn(1, 3, 224, 224))
    assert feats.requires_grad  # projectors still train
    assert feats.shape == (1, 256, 32)


def test_frozen_vision_branches_stay_in_eval_mode_when_the_model_trains():
    model = VaryForCausalLM(tiny_base_config())
    model.train()
    assert model.vision_vocab.training and model.clip.training  # trainable: ordinary train mode
    model.freeze_vision(clip=False)
    model.train()
    assert not model.vision_vocab.training and model.clip.training and model.language_model.training
    assert not any(m.training for m in model.vision_vocab.modules())
    model.eval()
    assert not model.language_model.training


def test_a_frozen_encoder_trunk_leaves_the_convs_training_and_runs_without_autograd(monkeypatch):
    from vary.modeling import fast

    torch.manual_seed(0)
    model = VaryForCausalLM(tiny_config(image_size=128))
    parts = model.part_parameters()
    vision = {id(p) for p in parts["vision_vocab"]}
    halves = [{id(p) for p in parts[name]} for name in ("vision_encoder", "vision_downsample")]
    assert halves[0] | halves[1] == vision and not halves[0] & halves[1]
    assert "vision_encoder" not in model.num_parameters_by_part()  # counted once, under vision_vocab
    for p in parts["vision_encoder"]:
        p.requires_grad_(False)
    model.train().enable_fast_cpu_path()
    assert not model.vision_vocab.encoder.training and model.vision_vocab.net_2.training
    fast_encodes = []
    encode = fast.sam_encoder_forward
    monkeypatch.setattr(fast, "sam_encoder_forward", lambda *a: fast_encodes.append(1) or encode(*a))
    model.encode_images(torch.randn(2, 3, 128, 128)).square().mean().backward()
    assert fast_encodes == [1]  # the frozen trunk took the inference path although autograd is on
    assert all(p.grad is None for p in model.vision_vocab.encoder.parameters())
    assert model.vision_vocab.net_2.weight.grad.abs().sum() > 0 and model.vision_vocab.net_3.weight.grad is not None


def test_sdpa_is_the_attention_of_every_branch(model):
    assert model.config._attn_implementation == "sdpa"
    assert model.language_model.config._attn_implementation == "sdpa"
    assert type(model.vision_vocab.encoder.layers[0].attn).__name__ == "SamVisionSdpaAttention"


def test_projector_norm_option_fixes_the_feature_scale_and_round_trips(tmp_path):
    torch.manual_seed(0)
    plain = VaryForCausalLM(tiny_config())
    assert plain.projector_norm is None and "projector_norm" not in str(list(plain.state_dict()))
    model = VaryForCausalLM(tiny_config(projector_norm=True)).eval()
    with torch.no_grad():
        model.projector_vary.weight.mul_(100.0)  # a projector whose output has grown large
        features = model.encode_images(torch.randn(2, 3, 256, 256))
    assert features.shape == (2, 16, 64)
    assert torch.allclose(features.std(-1, unbiased=False), torch.ones(2, 16), atol=1e-3)  # LayerNorm: unit scale
    model.save_pretrained(tmp_path)
    again = VaryForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.projector_norm is True
    with torch.no_grad():
        assert torch.equal(again.projector_norm.weight, model.projector_norm.weight)
    assert model.num_parameters_by_part()["projector_vary"] == sum(
        p.numel() for m in (model.projector_vary, model.projector_norm) for p in m.parameters()
    )


def test_from_scratch_position_codes_are_sincos_and_loading_replaces_them(tmp_path):
    from vary.modeling.vision_vocab import sincos_2d

    model = VaryForCausalLM(tiny_config())
    pos = model.vision_vocab.encoder.pos_embed  # (1, 16, 16, 64) for 256 px
    assert torch.equal(pos.detach(), sincos_2d(16, 16, 64))
    codes = sincos_2d(16, 16, 64)[0].reshape(256, 64)
    assert torch.cdist(codes, codes).fill_diagonal_(1.0).min() > 0.1  # every grid cell gets its own code
    with torch.no_grad():
        pos.zero_()
    model.save_pretrained(tmp_path)
    assert VaryForCausalLM.from_pretrained(tmp_path).vision_vocab.encoder.pos_embed.abs().max() == 0


def one_conv_config(image_token_len: int, downsample_channels=(64,)) -> VaryConfig:
    """tiny_config's shape with net_2 only."""
    return preset(
        "nano",
        vision_config=dict(image_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           window_size=8, global_attn_indexes=[1], output_channels=32),
        downsample_channels=list(downsample_channels), image_token_len=image_token_len, projector_norm=True,
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, ffn_dim=128,
                         word_embed_proj_dim=64, vocab_size=512, max_position_embeddings=512),
    )  # fmt: skip


def test_one_downsample_conv_gives_four_times_the_image_tokens_and_round_trips(tmp_path):
    torch.manual_seed(0)
    config = one_conv_config(image_token_len=(256 // 32) ** 2)
    model = VaryForCausalLM(config).eval()
    assert not any(k.startswith("vision_vocab.net_3") for k in model.state_dict())
    with torch.no_grad():
        features = model.encode_images(torch.randn(2, 3, 256, 256))
    assert features.shape == (2, 64, 64)  # 8 x 8 tokens where two convs give 4 x 4
    model.save_pretrained(tmp_path)
    again = VaryForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(
            again.encode_images(torch.ones(1, 3, 256, 256)), model.encode_images(torch.ones(1, 3, 256, 256))
        )
    with pytest.raises(ValueError, match="8x8=64 tokens"):
        one_conv_config(image_token_len=16)  # the token count of two convs
    with pytest.raises(ValueError, match="one or two entries"):
        one_conv_config(image_token_len=4, downsample_channels=[16, 32, 64])
