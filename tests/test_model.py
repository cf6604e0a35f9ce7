"""The CLIP model: presets, pooling, patch_keep, sin-cos table, OpenCLIP names, weight loading."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clipa_data.core.errors import ClipaError
from clipa_train.model import build_model, create_model, load_openclip_weights, load_preset
from clipa_train.model.config import preset_names
from clipa_train.model.pos_embed import resize_image_pos_embed, resize_text_pos_embed, sincos_2d
from clipa_train.optim import parameter_groups

CLIPA_PRESETS = [
    "ViT-B-16-CL16",
    "ViT-L-16-CL8-Syntax-GAP",
    "ViT-L-16-CL16-Syntax-GAP",
    "ViT-L-16-CL32-GAP",
    "ViT-H-14-CL8-Syntax-GAP",
    "ViT-H-14-CL32-GAP",
]

# The state dict of OpenCLIP's ``CLIP`` (open_clip/model.py, ViT vision tower, default
# ``CLIPTextCfg``) for vision image 32 / patch 8 / width 32 / 2 layers, text context 16 / vocab
# 512 / width 32 / 2 layers, embed_dim 32: names and shapes as OpenCLIP writes them
# (``attn_mask`` is a non-persistent buffer there, so it is not in the state dict).
OPENCLIP_BLOCK = {
    "ln_1.weight": [32],
    "ln_1.bias": [32],
    "attn.in_proj_weight": [96, 32],
    "attn.in_proj_bias": [96],
    "attn.out_proj.weight": [32, 32],
    "attn.out_proj.bias": [32],
    "ln_2.weight": [32],
    "ln_2.bias": [32],
    "mlp.c_fc.weight": [128, 32],
    "mlp.c_fc.bias": [128],
    "mlp.c_proj.weight": [32, 128],
    "mlp.c_proj.bias": [32],
}
OPENCLIP_KEYS = {
    "positional_embedding": [16, 32],
    "text_projection": [32, 32],
    "logit_scale": [],
    "visual.class_embedding": [32],
    "visual.positional_embedding": [17, 32],
    "visual.proj": [32, 32],
    "visual.conv1.weight": [32, 3, 8, 8],
    "visual.ln_pre.weight": [32],
    "visual.ln_pre.bias": [32],
    **{
        f"visual.transformer.resblocks.{i}.{k}": s
        for i in (0, 1)
        for k, s in OPENCLIP_BLOCK.items()
    },
    "visual.ln_post.weight": [32],
    "visual.ln_post.bias": [32],
    **{f"transformer.resblocks.{i}.{k}": s for i in (0, 1) for k, s in OPENCLIP_BLOCK.items()},
    "token_embedding.weight": [512, 32],
    "ln_final.weight": [32],
    "ln_final.bias": [32],
}


def openclip_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in OPENCLIP_KEYS.items()}


def images_and_text(model, batch: int = 3, length: int = 16):
    size = model.config.vision.image_size
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, size, size, generator=generator)
    text = torch.randint(1, 500, (batch, length), generator=generator)
    text[:, 0], text[:, 6] = 510, 511
    text[:, 7:] = 0
    return images, text


# ---- presets ---------------------------------------------------------------------------------


def test_every_clipa_preset_and_clipa_tiny_load():
    assert set([*CLIPA_PRESETS, "clipa-tiny"]) <= set(preset_names())
    for name in preset_names():
        config = load_preset(name)
        assert config.vision.image_size % config.vision.patch_size == 0
    h14 = load_preset("ViT-H-14-CL8-Syntax-GAP")
    assert (h14.vision.width // h14.vision.heads, h14.vision.pool, h14.text.context_length) == (
        80,
        "avg_all",
        8,
    )
    assert load_preset("ViT-B-16-CL16").vision.pool == "tok"


def test_unknown_preset_is_one_clear_error():
    with pytest.raises(ClipaError, match=r"unknown model preset 'ViT-B-16-CL61'.*ViT-B-16-CL16"):
        load_preset("ViT-B-16-CL61")


def write_preset(tmp_path, mutate):
    data = _tiny_preset()
    mutate(data)
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(data))
    return path


def _tiny_preset() -> dict:
    from importlib import resources

    return json.loads((resources.files("clipa_train.model.presets") / "test-tiny.json").read_text())


def test_preset_file_with_a_missing_field(tmp_path):
    path = write_preset(tmp_path, lambda d: d["vision"].pop("patch_size"))
    with pytest.raises(ClipaError, match=r"custom.json: missing field\(s\) vision.patch_size"):
        load_preset(path)


def test_preset_file_with_a_mistyped_field(tmp_path):
    path = write_preset(tmp_path, lambda d: d["text"].update(width="32"))
    with pytest.raises(ClipaError, match=r"custom.json: field 'text.width' must be int, got '32'"):
        load_preset(path)
    path = write_preset(tmp_path, lambda d: d["vision"].update(pathc_size=8))
    with pytest.raises(ClipaError, match=r"unknown field 'vision.pathc_size'.*'patch_size'"):
        load_preset(path)
    path = write_preset(tmp_path, lambda d: d["vision"].update(pool="cls"))
    with pytest.raises(ClipaError, match=r"custom.json: vision.pool must be one of"):
        load_preset(path)


def test_image_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(ClipaError, match="not a multiple of the patch size 8"):
        load_preset("test-tiny").replace(image_size=36)


# ---- forward semantics -----------------------------------------------------------------------


def capture_pooling(model, images, patch_keep=None):
    """(transformer output tokens, ln_post input) of the image tower."""
    seen = {}
    hooks = [
        model.visual.transformer.register_forward_hook(lambda m, i, o: seen.update(tokens=o)),
        model.visual.ln_post.register_forward_hook(lambda m, i, o: seen.update(pooled=i[0])),
    ]
    model.visual(images, patch_keep)
    for hook in hooks:
        hook.remove()
    return seen["tokens"], seen["pooled"]


def test_gap_averages_all_tokens_including_the_class_token():
    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny"))
    tokens, pooled = capture_pooling(model, images_and_text(model)[0])
    assert tokens.shape[1] == 17
    torch.testing.assert_close(pooled, tokens.mean(dim=1))
    assert not torch.allclose(pooled, tokens[:, 1:].mean(dim=1))
    token_model = build_model(load_preset("test-tiny").replace(pool="tok"))
    tokens, pooled = capture_pooling(token_model, images_and_text(model)[0])
    torch.testing.assert_close(pooled, tokens[:, 0])


def test_patch_keep_gathers_after_the_position_embedding_and_keeps_the_class_token():
    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny").replace(pool="tok"))
    images = images_and_text(model, batch=2)[0]
    everything = torch.arange(16, dtype=torch.int16).expand(2, 16)
    torch.testing.assert_close(model.visual(images, everything), model.visual(images))
    keep = torch.tensor([[0, 5, 10, 15], [1, 2, 3, 4]], dtype=torch.int16)
    seen = {}
    hook = model.visual.ln_pre.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    model.visual(images, keep)
    hook.remove()
    patches = model.visual.conv1(images).flatten(2).transpose(1, 2)
    position = model.visual.positional_embedding
    expected_cls = model.visual.class_embedding + position[0]
    assert seen["x"].shape == (2, 5, 32)
    torch.testing.assert_close(seen["x"][:, 0], expected_cls.expand(2, -1))
    for row in range(2):
        index = keep[row].long()
        torch.testing.assert_close(seen["x"][row, 1:], patches[row, index] + position[1 + index])


def test_text_pools_at_eot_and_is_causal():
    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny"))
    _, text = images_and_text(model)
    base = model.encode_text(text)
    changed = text.clone()
    changed[:, 7:] = 3  # tokens after EOT cannot influence the EOT position (causal mask)
    torch.testing.assert_close(model.encode_text(changed), base)
    earlier = text.clone()
    earlier[:, 2] = 4
    assert not torch.allclose(model.encode_text(earlier), base)
    torch.testing.assert_close(base.norm(dim=-1), torch.ones(3))
    with pytest.raises(ClipaError, match="context length is 16"):
        model.encode_text(torch.ones(1, 17, dtype=torch.long))


def test_logit_scale_init_and_sigmoid_bias():
    model = build_model(load_preset("test-tiny"))
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.logit_bias is None
    sig = build_model(load_preset("test-tiny").replace(loss="sigmoid"))
    assert (sig.logit_scale.item(), sig.logit_bias.item()) == (pytest.approx(math.log(10)), -10.0)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny"))
    images, text = images_and_text(model)

    def grads():
        model.zero_grad()
        out = model(images, text)
        (out["image_features"] @ out["text_features"].t()).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6)


# ---- sin-cos table and resizing -------------------------------------------------------------


def test_sincos_table_layout_and_frozen():
    table = sincos_2d(8, 3)  # quarter = 2: ω = (1, 1/100)
    assert table.shape == (10, 8)
    assert torch.equal(table[0], torch.zeros(8))
    row, col = 1, 2  # patch index 1 + row*3 + col
    expected = [
        math.sin(col),
        math.sin(col / 100),
        math.cos(col),
        math.cos(col / 100),
        math.sin(row),
        math.sin(row / 100),
        math.cos(row),
        math.cos(row / 100),
    ]
    torch.testing.assert_close(table[1 + row * 3 + col], torch.tensor(expected))
    model = build_model(load_preset("test-tiny").replace(pos_embed="sin_cos_2d"))
    assert not model.visual.positional_embedding.requires_grad
    assert "visual.positional_embedding" in model.state_dict()
    grouped = {id(p) for group in parameter_groups(model, 0.2) for p in group["params"]}
    assert id(model.visual.positional_embedding) not in grouped


def test_a_fixed_sin_cos_table_is_computed_for_the_new_grid_not_resized():
    """CLIPA-v2 fine-tunes at 224/336 px with the frozen sin-cos table of the new grid (JAX
    computes it per stage); the 6x6 table resized bicubically was 0.8 cosine from it."""
    from clipa_train.model.weights import load_openclip_weights

    small = build_model(load_preset("test-tiny").replace(pos_embed="sin_cos_2d"))
    config = load_preset("test-tiny").replace(pos_embed="sin_cos_2d", image_size=48)
    large = build_model(config)
    said = []
    load_openclip_weights(large, small.state_dict(), report=said.append)
    table = large.visual.positional_embedding
    assert torch.equal(table, sincos_2d(config.vision.width, config.vision.grid))
    assert not table.requires_grad
    assert said == [
        f"fine-tuning recomputed the fixed sin-cos image positional embeddings from "
        f"{small.config.vision.grid}x{small.config.vision.grid} to "
        f"{config.vision.grid}x{config.vision.grid} patches"
    ]
    # At the same grid the checkpoint's own table stays (a run fine-tuned with a resized one
    # is evaluated with it), and a learned table replaced at a new grid is said to be
    trained = {**large.state_dict(), "visual.positional_embedding": table + 0.5}
    again = build_model(config)
    load_openclip_weights(again, trained, report=said.append)
    assert torch.equal(again.visual.positional_embedding, table + 0.5) and len(said) == 1
    load_openclip_weights(build_model(load_preset("test-tiny").replace(pos_embed="sin_cos_2d")),
                          trained, report=said.append)  # fmt: skip
    assert said[1].endswith("(the checkpoint's was learned or resized: dropped)")


def test_image_pos_embed_resizing_round_trips():
    """Same size: an exact copy. 7×7 → 14×14 → 7×7 (bicubic up, antialiased bicubic down) of the
    sin-cos table (values in [-1, 1]): mean absolute error < 0.005, max < 0.08 (the fastest
    channels have a period of ~6 patches); a constant grid comes back to 1e-5. The class row is
    copied bit for bit both ways."""
    table = sincos_2d(64, 7)
    table[0] = torch.randn(64)
    assert torch.equal(resize_image_pos_embed(table, 7), table)
    up = resize_image_pos_embed(table, 14)
    assert up.shape == (197, 64)
    assert torch.equal(up[0], table[0])
    back = resize_image_pos_embed(up, 7)
    assert torch.equal(back[0], table[0])
    error = (back - table).abs()
    assert error.mean() < 0.005 and error.max() < 0.08
    constant = torch.cat([torch.randn(1, 8), torch.full((49, 8), 0.3)])
    again = resize_image_pos_embed(resize_image_pos_embed(constant, 14), 7)
    torch.testing.assert_close(again, constant, rtol=0, atol=1e-5)
    with pytest.raises(ClipaError, match="not 1 \\+ a square grid"):
        resize_image_pos_embed(torch.zeros(20, 8), 4)


def test_text_pos_embed_resizing_round_trips():
    """Same length: an exact copy. 8 → 32 → 8 (linear, align_corners=False): a linear ramp comes
    back exactly at the inner positions 1..6 (the ends clamp), a smooth table within 0.05."""
    positions = torch.arange(8, dtype=torch.float32).unsqueeze(1)
    smooth = torch.cat([torch.sin(positions / 3 * k) for k in (1, 2)], 1)
    assert torch.equal(resize_text_pos_embed(smooth, 8), smooth)
    back = resize_text_pos_embed(resize_text_pos_embed(smooth, 32), 8)
    torch.testing.assert_close(back, smooth, rtol=0, atol=0.05)
    ramp = positions.repeat(1, 4)
    back = resize_text_pos_embed(resize_text_pos_embed(ramp, 32), 8)
    torch.testing.assert_close(back[1:-1], ramp[1:-1], rtol=0, atol=1e-6)


# ---- OpenCLIP weights -------------------------------------------------------------------------


def test_openclip_state_dict_loads_strict():
    model = build_model(load_preset("test-tiny"))
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == OPENCLIP_KEYS
    state = openclip_state_dict()
    load_openclip_weights(model, state)
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    model.load_state_dict(state, strict=True)


def test_openclip_file_with_prefix_and_wrapper_loads_into_other_sizes(tmp_path):
    state = openclip_state_dict()
    path = tmp_path / "epoch_6.pt"
    torch.save({"epoch": 6, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = create_model("test-tiny", image_size=64, context_length=8, pretrained=path)
    loaded = model.state_dict()
    assert loaded["visual.positional_embedding"].shape == (65, 32)
    assert torch.equal(
        loaded["visual.positional_embedding"][0], state["visual.positional_embedding"][0]
    )
    torch.testing.assert_close(
        loaded["visual.positional_embedding"],
        resize_image_pos_embed(state["visual.positional_embedding"], 8),
    )
    torch.testing.assert_close(
        loaded["positional_embedding"], resize_text_pos_embed(state["positional_embedding"], 8)
    )
    assert torch.equal(loaded["visual.conv1.weight"], state["visual.conv1.weight"])


def test_weights_of_another_architecture_are_refused(tmp_path):
    state = openclip_state_dict()
    state["visual.conv1.weight"] = torch.zeros(32, 3, 16, 16)
    del state["ln_final.bias"]
    state["visual.attn_pool.query"] = torch.zeros(4, 32)
    model = build_model(load_preset("test-tiny"))
    with pytest.raises(
        ClipaError, match=r"another architecture: 1 missing key\(s\).*ln_final.bias"
    ):
        load_openclip_weights(model, state)


def test_truncated_weights_file(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(openclip_state_dict(), path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ClipaError, match=r"weights\.pt: cannot read weights"):
        load_openclip_weights(build_model(load_preset("test-tiny")), path)


def test_a_resize_is_reported_only_once_the_weights_fit_the_model():
    """Loading weights of another architecture said "resized the text positional embeddings
    from 8 to 16 tokens" and then refused them."""
    state = build_model(load_preset("test-tiny").replace(context_length=8)).state_dict()
    said: list[str] = []
    with pytest.raises(ClipaError):  # test-tiny-v2 has no ln_pre: another architecture
        load_openclip_weights(build_model(load_preset("test-tiny-v2")), state, said.append)
    assert said == []
    load_openclip_weights(build_model(load_preset("test-tiny")), state, said.append)
    assert len(said) == 1 and "8" in said[0] and "16" in said[0], said
