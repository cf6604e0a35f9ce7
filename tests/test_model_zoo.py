"""The model zoo: the CLIPA-v2 switches, the OpenCLIP CLIPA presets built on the meta device with
OpenCLIP's names, shapes and published parameter counts, and a tiny v2 model trained by the loop.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from clipa_data.core.errors import ClipaError
from clipa_train.backend import BackendConfig, create_backend
from clipa_train.loop import LoopConfig, train
from clipa_train.loss import build_loss
from clipa_train.model import ModelConfig, build_model, load_preset
from clipa_train.optim import OptimConfig, build_optimizer
from clipa_train.synthetic import SyntheticBatches

# OpenCLIP's own configs (mlfoundations/open_clip, src/open_clip/model_configs/<name>.json at
# commit 89fb801f), the values that shape the state dict; absent keys take OpenCLIP's defaults
# (CLIPVisionCfg: head_width 64, mlp_ratio 4.0, no_ln_pre False; CLIPTextCfg: mlp_ratio 4.0).
V2_VISION = {"patch_size": 14, "no_ln_pre": True}
V2_TEXT = {"context_length": 32, "vocab_size": 32000}
OPENCLIP_CONFIGS = {
    "ViT-L-14-CLIPA": (768, {"image_size": 224, "layers": 24, "width": 1024, **V2_VISION},
                       {"width": 768, "heads": 12, "layers": 12, **V2_TEXT}),
    "ViT-L-14-CLIPA-336": (768, {"image_size": 336, "layers": 24, "width": 1024, **V2_VISION},
                           {"width": 768, "heads": 12, "layers": 12, **V2_TEXT}),
    "ViT-H-14-CLIPA": (1024, {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80,
                              **V2_VISION},
                       {"width": 1024, "heads": 16, "layers": 24, **V2_TEXT}),
    "ViT-H-14-CLIPA-336": (1024, {"image_size": 336, "layers": 32, "width": 1280,
                                  "head_width": 80, **V2_VISION},
                           {"width": 1024, "heads": 16, "layers": 24, **V2_TEXT}),
    "ViT-bigG-14-CLIPA": (1280, {"image_size": 224, "layers": 48, "width": 1664,
                                 "head_width": 104, "mlp_ratio": 4.9231, **V2_VISION},
                          {"width": 1280, "heads": 20, "layers": 32, **V2_TEXT}),
    "ViT-bigG-14-CLIPA-336": (1280, {"image_size": 336, "layers": 48, "width": 1664,
                                     "head_width": 104, "mlp_ratio": 4.9231, **V2_VISION},
                              {"width": 1280, "heads": 20, "layers": 32, **V2_TEXT}),
    "ViT-L-14": (768, {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
                 {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12,
                  "layers": 12}),
    "ViT-H-14": (1024, {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80,
                        "patch_size": 14},
                 {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16,
                  "layers": 24}),
}  # fmt: skip

# Parameter counts in millions, total / image / text, as OpenCLIP publishes them in
# docs/model_profile.csv (columns mparams, image_mparams, text_mparams; same commit).
PUBLISHED_MPARAMS = {
    "ViT-L-14-CLIPA": (414.21, 303.96, 110.25),
    "ViT-L-14-CLIPA-336": (414.54, 304.29, 110.25),
    "ViT-H-14-CLIPA": (968.24, 632.07, 336.16),
    "ViT-H-14-CLIPA-336": (968.64, 632.48, 336.16),
    "ViT-bigG-14-CLIPA": (2517.22, 1844.9, 672.32),
    "ViT-bigG-14-CLIPA-336": (2517.76, 1845.44, 672.32),
    "ViT-L-14": (427.62, 303.97, 123.65),
    "ViT-H-14": (986.11, 632.08, 354.03),
}


def openclip_block(prefix: str, width: int, hidden: int) -> dict[str, list[int]]:
    """One ``ResidualAttentionBlock`` of OpenCLIP's ``transformer.py``, names and shapes."""
    shapes = {
        "ln_1.weight": [width], "ln_1.bias": [width],
        "attn.in_proj_weight": [3 * width, width], "attn.in_proj_bias": [3 * width],
        "attn.out_proj.weight": [width, width], "attn.out_proj.bias": [width],
        "ln_2.weight": [width], "ln_2.bias": [width],
        "mlp.c_fc.weight": [hidden, width], "mlp.c_fc.bias": [hidden],
        "mlp.c_proj.weight": [width, hidden], "mlp.c_proj.bias": [width],
    }  # fmt: skip
    return {prefix + key: shape for key, shape in shapes.items()}


def openclip_state_shapes(embed: int, vision: dict, text: dict) -> dict[str, list[int]]:
    """The state dict OpenCLIP's ``CLIP`` class builds from a model config (its rules: vision
    MLP ``int(width * mlp_ratio)``, ``ln_pre`` an Identity under ``no_ln_pre``)."""
    width, grid = vision["width"], vision["image_size"] // vision["patch_size"]
    hidden = int(width * vision.get("mlp_ratio", 4.0))
    patch = vision["patch_size"]
    shapes = {
        "visual.class_embedding": [width],
        "visual.positional_embedding": [grid * grid + 1, width],
        "visual.proj": [width, embed],
        "visual.conv1.weight": [width, 3, patch, patch],
        "visual.ln_post.weight": [width],
        "visual.ln_post.bias": [width],
    }
    if not vision.get("no_ln_pre", False):
        shapes |= {"visual.ln_pre.weight": [width], "visual.ln_pre.bias": [width]}
    for i in range(vision["layers"]):
        shapes |= openclip_block(f"visual.transformer.resblocks.{i}.", width, hidden)
    text_width = text["width"]
    shapes |= {
        "token_embedding.weight": [text["vocab_size"], text_width],
        "positional_embedding": [text["context_length"], text_width],
        "ln_final.weight": [text_width],
        "ln_final.bias": [text_width],
        "text_projection": [text_width, embed],
        "logit_scale": [],
    }
    for i in range(text["layers"]):
        shapes |= openclip_block(f"transformer.resblocks.{i}.", text_width, 4 * text_width)
    return shapes


def meta_model(name: str):
    with torch.device("meta"):
        return build_model(load_preset(name))


@pytest.mark.parametrize("name", sorted(OPENCLIP_CONFIGS))
def test_preset_has_openclips_names_shapes_and_published_parameter_count(name):
    model = meta_model(name)
    embed, vision, text = OPENCLIP_CONFIGS[name]
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert shapes == openclip_state_shapes(embed, vision, text)
    heads = vision["width"] // vision.get("head_width", 64)
    assert model.config.vision.heads == heads
    assert model.visual.transformer.resblocks[0].attn.heads == heads
    total = sum(p.numel() for p in model.parameters())
    image = sum(p.numel() for p in model.visual.parameters())
    counted = tuple(round(n / 1e6, 2) for n in (total, image, total - image))
    assert counted == PUBLISHED_MPARAMS[name]


def test_bigg_head_width_and_mlp_ratio():
    config = load_preset("ViT-bigG-14-CLIPA").vision
    assert (config.width, config.heads, config.head_width) == (1664, 16, 104)
    block = meta_model("ViT-bigG-14-CLIPA").visual.transformer.resblocks[0]
    assert block.mlp.c_fc.out_features == 8192


# ---- the switches on a tiny model -------------------------------------------------------------


def tiny(**vision_and_text) -> ModelConfig:
    """test-tiny with ``vision_x`` / ``text_x`` fields replaced."""
    import dataclasses

    base = load_preset("test-tiny")
    vision = {k[7:]: v for k, v in vision_and_text.items() if k.startswith("vision_")}
    text = {k[5:]: v for k, v in vision_and_text.items() if k.startswith("text_")}
    return dataclasses.replace(
        base,
        vision=dataclasses.replace(base.vision, **vision),
        text=dataclasses.replace(base.text, **text),
    )


def tokens_and_ln_post(model, images):
    """(the blocks' output tokens, ln_post's input, the tower's output)."""
    seen = {}
    hooks = [
        model.visual.transformer.register_forward_hook(lambda m, i, o: seen.update(tokens=o)),
        model.visual.ln_post.register_forward_hook(lambda m, i, o: seen.update(ln_in=i[0])),
    ]
    out = model.visual(images)
    for hook in hooks:
        hook.remove()
    return seen["tokens"], seen["ln_in"], out


IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_avg_pools_patch_tokens_only_then_ln_post():
    torch.manual_seed(0)
    model = build_model(tiny(vision_pool="avg", vision_final_ln_after_pool=True))
    tokens, ln_in, _ = tokens_and_ln_post(model, IMAGES)
    torch.testing.assert_close(ln_in, tokens[:, 1:].mean(dim=1))
    assert not torch.allclose(ln_in, tokens.mean(dim=1))


def test_final_ln_after_pool_off_normalises_every_token_first():
    torch.manual_seed(0)
    model = build_model(tiny(vision_pool="avg", vision_final_ln_after_pool=False))
    tokens, ln_in, out = tokens_and_ln_post(model, IMAGES)
    assert ln_in.shape == tokens.shape
    expected = model.visual.ln_post(tokens)[:, 1:].mean(dim=1) @ model.visual.proj
    torch.testing.assert_close(out, expected)
    after = model.visual.ln_post(tokens[:, 1:].mean(dim=1)) @ model.visual.proj
    assert not torch.allclose(out, after)


def test_no_ln_pre_has_no_parameters_and_feeds_the_blocks_unnormalised():
    torch.manual_seed(0)
    model = build_model(tiny(vision_no_ln_pre=True))
    assert not any(key.startswith("visual.ln_pre") for key in model.state_dict())
    seen = {}
    hook = model.visual.transformer.register_forward_pre_hook(lambda m, i: seen.update(x=i[0]))
    model.visual(IMAGES)
    hook.remove()
    visual, position = model.visual, model.visual.positional_embedding
    patches = visual.conv1(IMAGES).flatten(2).transpose(1, 2) + position[1:]
    cls = (visual.class_embedding + position[0]).expand(3, 1, -1)
    torch.testing.assert_close(seen["x"], torch.cat([cls, patches], dim=1))
    assert "visual.ln_pre.weight" in build_model(tiny()).state_dict()


def text_batch():
    generator = torch.Generator().manual_seed(1)
    text = torch.randint(1, 500, (3, 16), generator=generator)
    text[:, 0], text[:, 6], text[:, 7:] = 510, 511, 0
    return text


def test_last_pooling_without_causal_mask_sees_the_whole_sequence():
    torch.manual_seed(0)
    model = build_model(tiny(text_pool="last", text_no_causal_mask=True))
    text = text_batch()
    seen = {}
    hook = model.ln_final.register_forward_hook(lambda m, i, o: seen.update(x=o))
    features = model.encode_text(text, normalize=False)
    hook.remove()
    torch.testing.assert_close(features, seen["x"][:, -1] @ model.text_projection)
    later = text.clone()
    later[:, 3] = 7  # bidirectional: a token before the pooled position still matters ...
    assert not torch.allclose(model.encode_text(later), model.encode_text(text))
    # ... and so does the first token when pooling at EOT without the causal mask
    bidirectional = build_model(tiny(text_no_causal_mask=True))
    after_eot = text.clone()
    after_eot[:, 9] = 7
    assert not torch.allclose(bidirectional.encode_text(after_eot), bidirectional.encode_text(text))
    causal = build_model(tiny())
    torch.testing.assert_close(causal.encode_text(after_eot), causal.encode_text(text))


def test_gelu_tanh_switch_reaches_every_mlp():
    torch.manual_seed(0)
    exact = build_model(tiny())
    torch.manual_seed(0)
    approx = build_model(tiny(vision_gelu_approximate="tanh", text_gelu_approximate="tanh"))
    gelus = [m for m in approx.modules() if isinstance(m, torch.nn.GELU)]
    assert len(gelus) == 4 and all(g.approximate == "tanh" for g in gelus)
    assert all(m.approximate == "none" for m in exact.modules() if isinstance(m, torch.nn.GELU))
    difference = (approx.visual(IMAGES) - exact.visual(IMAGES)).abs().max()
    assert 0 < difference < 1e-2


def test_bad_switch_values_are_one_clear_error():
    with pytest.raises(ClipaError, match=r"vision.pool must be one of \('tok', 'avg_all', 'avg'\)"):
        tiny(vision_pool="gap_all")
    with pytest.raises(ClipaError, match=r"text.pool must be one of \('argmax', 'last'\)"):
        tiny(text_pool="first")
    with pytest.raises(ClipaError, match=r"vision.gelu_approximate must be one of"):
        tiny(vision_gelu_approximate="quick")


def test_configs_of_older_clipa_versions_still_read():
    """config.json / checkpoints written before the OpenCLIP names said token / gap; GAP then
    always normalised after pooling, which is what they must still build."""
    old = load_preset("test-tiny").to_dict()
    old["vision"] = {
        k: v for k, v in old["vision"].items() if k not in ("final_ln_after_pool", "no_ln_pre")
    }
    old["vision"]["pool"] = "gap"
    config = ModelConfig.from_dict(old)
    assert (config.vision.pool, config.vision.final_ln_after_pool) == ("avg_all", True)
    old["vision"]["pool"] = "token"
    assert ModelConfig.from_dict(old).vision.pool == "tok"


# ---- a tiny model with every v2 switch, trained by the real loop ------------------------------


def test_tiny_v2_model_trains_20_steps_through_the_loop(tmp_path):
    config = load_preset("test-tiny-v2")
    assert (config.vision.pool, config.vision.no_ln_pre, config.vision.final_ln_after_pool) == (
        "avg",
        True,
        True,
    )
    assert (config.text.pool, config.text.no_causal_mask, config.vision.gelu_approximate) == (
        "last",
        True,
        "tanh",
    )
    torch.manual_seed(0)
    model = build_model(config)
    optim = OptimConfig(lr=2e-3, total_steps=20, warmup_steps=3, grad_clip_norm=1.0)
    batches = SyntheticBatches(
        batch_size=16, image_size=32, text_length=16, vocab_size=512, patch_size=8,
        mask="random", mask_ratio=0.5, seed=3,
    )  # fmt: skip
    result = train(
        model=model,
        optimizer=build_optimizer(model, optim),
        optim_config=optim,
        loss_fn=build_loss("contrastive"),
        batches=batches,
        backend=create_backend(BackendConfig(name="cpu")),
        run_dir=tmp_path,
        config=LoopConfig(log_every=1, progress=False),
        run_config={"preset": "test-tiny-v2"},
    )
    assert result.step == 20 and not result.stopped
    records = (tmp_path / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in records]
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) < sum(losses[:5])  # it learns the synthetic classes


def test_checkpoint_of_an_older_clipa_version_resumes(tmp_path):
    """A checkpoint written before the switches existed (pool 'gap', no new fields) resumes into
    today's test-tiny: its architecture is read as the model it builds."""
    from clipa_train.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint

    backend = create_backend(BackendConfig(name="cpu"))
    model = build_model(load_preset("test-tiny"))
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, total_steps=2, warmup_steps=0))
    path = save_checkpoint(
        tmp_path, step=1, model=model, optimizer=optimizer, stream_state={}, backend=backend
    )
    payload = load_checkpoint(path)
    vision = payload["architecture"]["vision"]
    for field in ("no_ln_pre", "final_ln_after_pool", "gelu_approximate"):
        del vision[field]
    vision["pool"] = "gap"
    for field in ("pool", "no_causal_mask", "gelu_approximate"):
        del payload["architecture"]["text"][field]
    step, _ = restore_checkpoint(payload, model=model, optimizer=optimizer, backend=backend)
    assert step == 1
    payload["architecture"]["vision"]["pool"] = "token"  # GAP before, class token now: refused
    with pytest.raises(ClipaError, match=r"vision.final_ln_after_pool: checkpoint False.*pool"):
        restore_checkpoint(payload, model=model, optimizer=optimizer, backend=backend)


# ---- clipa-train models -----------------------------------------------------------------------

# Forward GFLOPs per sample as OpenCLIP publishes them (docs/model_profile.csv, column gflops,
# same commit as above): fvcore's count at the config's image size and context length.
PUBLISHED_GFLOPS = {
    "ViT-L-14-CLIPA": 167.5,
    "ViT-L-14-CLIPA-336": 387.39,
    "ViT-H-14-CLIPA": 354.02,
    "ViT-H-14-CLIPA-336": 800.88,
    "ViT-bigG-14-CLIPA": 1007.93,
    "ViT-bigG-14-CLIPA-336": 2271.58,
    "ViT-L-14": 175.33,
    "ViT-H-14": 381.68,
}


def test_forward_gflops_equal_openclips_published_profile():
    from clipa_train.model_zoo import forward_gflops

    for name, published in PUBLISHED_GFLOPS.items():
        assert round(forward_gflops(load_preset(name)), 2) == published, name


def test_models_command_prints_every_preset_with_stage_sizes():
    import os
    import subprocess
    import sys
    from pathlib import Path

    from clipa_train.model.config import preset_names

    script = str(Path(sys.executable).parent / "clipa-train")
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    done = subprocess.run(  # piped at rich's default 80 columns: the table still comes whole
        [script, "models", "--sizes", "84/8,224/32"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    lines = {line.split()[1]: line for line in done.stdout.splitlines() if line.startswith("│")}
    assert set(preset_names()) <= set(lines)
    # name, image, patch, context, params, GFLOPs, @84/8, @224/32
    cells = [cell.strip() for cell in lines["ViT-bigG-14-CLIPA-336"].split("│")[1:9]]
    assert cells == ["ViT-bigG-14-CLIPA-336", "336", "14", "32", "2517.76M", "2271.58", "146.77",
                     "1007.93"]  # fmt: skip
    assert lines["ViT-B-16-CL16"].split("│")[7].strip() == "-"  # 84 px is not a multiple of 16
    bad = subprocess.run([script, "models", "--sizes", "84x8"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: --sizes: '84x8' is not IMAGE/TEXT (positive integers, e.g. 224/32)"
    ]


@pytest.mark.parametrize("width", [100, 60])
def test_models_in_a_narrow_terminal_splits_the_table_and_cuts_no_number(width):
    """A terminal narrower than the table gets several tables that fit, the name column in
    each; every cell is whole (rich would otherwise cut them to ``…``)."""
    import io

    from clipa_cli.wide_table import print_wide_table
    from rich.console import Console

    headers = ["name", "image", "params", "GFLOPs @84/8", "GFLOPs @224/32", "GFLOPs @336/32"]
    rows = [["ViT-bigG-14-CLIPA-336", "336", "2517.76M", "146.77", "1007.93", "2271.58"]]
    rows.append(["test-tiny", "32", "0.08M", "-", "0.00", "0.01"])
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=width, color_system=None)
    print_wide_table(console, "model presets", headers, rows)
    lines = screen.getvalue().splitlines()
    assert "…" not in screen.getvalue() and max(map(len, lines)) <= width
    tables = [line for line in lines if line.startswith("model presets")]
    assert (len(tables) > 1) is (width == 60)
    cells = {cell.strip() for line in lines for cell in line.split("│")[1:-1]}
    assert {*rows[0], *rows[1]} <= cells
    assert sum(line.startswith("│ ViT-bigG-14-CLIPA-336 ") for line in lines) == len(tables)


# ---- OpenCLIP-format weights of the zoo -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPENCLIP_CONFIGS))
def test_openclip_weights_are_recognised_as_their_preset(name):
    from clipa_train.model.weights import matching_presets

    assert matching_presets(meta_model(name).state_dict()) == [name]


def test_v2_weights_into_a_classic_model_name_the_differing_switches():
    """OpenCLIP's ViT-L-14-CLIPA weights (meta tensors: names and shapes only) into ViT-L-14."""
    from clipa_train.model import load_openclip_weights

    with pytest.raises(ClipaError) as caught:
        load_openclip_weights(meta_model("ViT-L-14"), meta_model("ViT-L-14-CLIPA").state_dict())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("state dict was written for another architecture: 2 missing key(s)")
    assert message.endswith(
        "it matches preset ViT-L-14-CLIPA, which differs from this model in "
        "text.no_causal_mask True (model False), text.pool 'last' (model 'argmax'), "
        "text.vocab_size 32000 (model 49408), vision.final_ln_after_pool True (model False), "
        "vision.no_ln_pre True (model False), vision.pool 'avg' (model 'tok'); "
        "pass --model ViT-L-14-CLIPA"
    )


def test_one_clipa_variant_into_another_names_the_differences():
    from clipa_train.model import load_openclip_weights

    expected = (
        r"matches preset ViT-H-14-CLIPA-336, which differs from this model in embed_dim 1024 "
        r"\(model 768\), text.heads 16 \(model 12\).*vision.width 1280 \(model 1024\); "
        r"pass --model ViT-H-14-CLIPA-336$"
    )
    with pytest.raises(ClipaError, match=expected):
        load_openclip_weights(
            meta_model("ViT-L-14-CLIPA"), meta_model("ViT-H-14-CLIPA-336").state_dict()
        )


def save_openclip_format(model, path):
    """As OpenCLIP's training script saves: ``{"epoch", "state_dict"}`` with DDP's prefix."""
    state = {f"module.{key}": value for key, value in model.state_dict().items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": state}, path)


def test_openclip_file_without_a_preset_loads_strict_into_the_matching_one(tmp_path):
    from clipa_train.checkpoint import base_architecture
    from clipa_train.model import load_openclip_weights

    torch.manual_seed(1)
    trained = build_model(load_preset("test-tiny-v2"))
    path = tmp_path / "epoch_3.pt"
    save_openclip_format(trained, path)
    config = base_architecture(None, str(path), default="ViT-B-16-CL16")
    assert config == load_preset("test-tiny-v2")
    model = load_openclip_weights(build_model(config), path)
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    bare = tmp_path / "bare.pt"
    torch.save(trained.state_dict(), bare)  # a bare state dict is recognised as well
    assert base_architecture(None, str(bare), default="ViT-B-16-CL16") == config


def test_a_sigmoid_loss_export_is_recognised_as_its_preset_with_its_bias(tmp_path):
    """The sigmoid loss's logit_bias made the file match no preset: "pass --model"."""
    from clipa_train.checkpoint import base_architecture
    from clipa_train.model import load_openclip_weights

    torch.manual_seed(2)
    trained = build_model(load_preset("test-tiny-v2").replace(loss="sigmoid"))
    bare = tmp_path / "sigmoid.pt"
    torch.save(trained.state_dict(), bare)
    config = base_architecture(None, str(bare), default="ViT-B-16-CL16")
    assert config == load_preset("test-tiny-v2").replace(loss="sigmoid")
    model = load_openclip_weights(build_model(config), bare)  # strict: the bias loads too
    assert torch.equal(model.logit_bias, trained.logit_bias)


def test_weights_matching_no_preset_need_model(tmp_path):
    from clipa_train.checkpoint import base_architecture

    path = tmp_path / "custom.pt"
    torch.save(build_model(tiny(vision_width=64, vision_heads=4)).state_dict(), path)
    expected = r"custom.pt holds no architecture .* matches no bundled preset; pass --model PRESET"
    with pytest.raises(ClipaError, match=expected):
        base_architecture(None, str(path), default="ViT-B-16-CL16")


def test_eval_of_an_openclip_format_file_through_the_cli(tmp_path):
    """``clipa-train eval --checkpoint`` with OpenCLIP-format weights and no --model: the
    matching preset is built; with the wrong --model, one line names the switches."""
    import subprocess
    import sys
    from pathlib import Path

    from clipa_data.demo import write_demo_validation

    val = write_demo_validation(tmp_path / "eval", per_class=1, seed=0)
    path = tmp_path / "weights" / "epoch_1.pt"
    path.parent.mkdir()
    torch.manual_seed(0)
    save_openclip_format(build_model(load_preset("clipa-tiny")), path)
    script = str(Path(sys.executable).parent / "clipa-train")
    common = [script, "eval", "--checkpoint", str(path), "--imagenet-val", str(val.root),
              "--classnames", str(val.classnames_path), "--workers", "0", "--json"]  # fmt: skip
    done = subprocess.run(common, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["n"] == 20  # 20 classes, one image each
    wrong = subprocess.run([*common, "--model", "test-tiny-v2"], capture_output=True, text=True)
    assert wrong.returncode == 2
    lines = wrong.stderr.strip().splitlines()
    assert len(lines) == 1 and "it matches preset clipa-tiny, which differs" in lines[0]
    assert "vision.no_ln_pre False (model True)" in lines[0]
    assert lines[0].endswith("pass --model clipa-tiny")


@pytest.mark.xla
def test_tiny_v2_model_trains_20_steps_on_xla_in_at_most_three_graphs(tmp_path):
    """Every v2 switch on (``test-tiny-v2``) under PyTorch/XLA (``make test-xla``): the pooling
    slices, the identity ln_pre, the bidirectional text and tanh GELU stay one static graph."""
    pytest.importorskip("torch_xla")
    backend = create_backend(BackendConfig(name="xla", precision="fp32"))
    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny-v2")).to(backend.device)
    optim = OptimConfig(lr=2e-3, total_steps=20, warmup_steps=3, grad_clip_norm=1.0)
    batches = SyntheticBatches(
        batch_size=16, image_size=32, text_length=16, vocab_size=512, patch_size=8,
        mask="random", mask_ratio=0.5, seed=3, num_batches=20,
    )  # fmt: skip
    before = backend.compile_count()
    result = train(
        model=model,
        optimizer=build_optimizer(model, optim),
        optim_config=optim,
        loss_fn=build_loss("contrastive", backend),
        batches=batches,
        backend=backend,
        run_dir=tmp_path,
        config=LoopConfig(log_every=5, progress=False),
    )
    records = result.records
    assert result.step == 20 and [r["step"] for r in records] == [5, 10, 15, 20]
    compiles = [r["xla_compiles"] for r in records]
    assert compiles[-1] - before <= 3, compiles
    assert compiles[-1] == compiles[0], "no compilation after the first steps"
    assert all(math.isfinite(r["loss"]) for r in records)
    assert records[-1]["loss"] < records[0]["loss"], [r["loss"] for r in records]


def test_finetune_from_an_openclip_format_file_without_model(tmp_path):
    """``clipa-train finetune --from`` OpenCLIP-format weights and no --model: the run's model is
    the matching preset at the stage's sizes, started from the file's weights (resized)."""
    import subprocess
    import sys
    from pathlib import Path

    from builders import make_builder_dir, make_records

    builder = make_builder_dir(tmp_path / "data", [make_records(16, start=0)])
    torch.manual_seed(0)
    save_openclip_format(build_model(load_preset("clipa-tiny")), tmp_path / "epoch_1.pt")
    script = str(Path(sys.executable).parent / "clipa-train")
    done = subprocess.run(
        [script, "finetune", "--from", str(tmp_path / "epoch_1.pt"), "--data", str(builder),
         "--out", str(tmp_path / "run"), "--image-size", "32", "--text-length", "8",
         "--batch-size", "8", "--samples", "16", "--workers", "1", "--no-progress"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    model = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    expected = load_preset("clipa-tiny").replace(image_size=32, context_length=8).to_dict()
    assert model == expected
    assert "resized the image positional embeddings from 8x8 to 4x4 patches" in done.stderr
