"""The CLIPA repository's own PyTorch v2 weights (``clipa_weights``): the name table covers every
tensor of every v2 preset with the shapes the repository's module code gives; a file in its
layout loads through ``--from`` and ``eval --checkpoint`` (the real CLI) into the matching preset
with the original's features; eval needs the model's own tokenizer; foreign keys are one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import make_builder_dir, make_records
from test_wordpiece import CAPTIONS, record_captions, train_vocabulary

from clipa_data.core.errors import ClipaError
from clipa_data.demo import write_demo_validation
from clipa_train.model import build_model, load_preset
from clipa_train.model.clipa_weights import (
    CLIPA_REPO_PRESETS,
    KEY_TABLE,
    clipa_repo_shapes,
    from_clipa_repo,
    to_clipa_repo,
)

V2_PRESETS = [
    "ViT-L-14-CLIPA",
    "ViT-L-14-CLIPA-336",
    "ViT-H-14-CLIPA",
    "ViT-H-14-CLIPA-336",
    "ViT-bigG-14-CLIPA",
    "ViT-bigG-14-CLIPA-336",
    "test-tiny-v2",
]
SCRIPT = str(Path(sys.executable).parent / "clipa-train")


def meta_shapes(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_model(load_preset(name))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize("name", V2_PRESETS)
def test_table_maps_every_tensor_of_each_v2_preset_with_the_repositorys_shapes(name):
    ours = meta_shapes(name)
    theirs = clipa_repo_shapes(load_preset(name))
    assert to_clipa_repo(ours) == theirs  # every key has a row, and the shapes agree
    assert from_clipa_repo(theirs) == ours
    assert not any(key.startswith("visual.ln_pre") for key in theirs)  # v2: ln_pre is Identity


def test_v1_presets_keep_ln_pre_rows():
    shapes = clipa_repo_shapes(load_preset("ViT-H-14-CL32-GAP"))
    assert shapes["visual.ln_pre.weight"] == (1280,)
    assert to_clipa_repo(meta_shapes("ViT-H-14-CL32-GAP")) == shapes


def test_table_has_one_row_per_name():
    names = [row.clipa_repo for row in KEY_TABLE]
    assert len(names) == len(set(names)) == len({row.ours for row in KEY_TABLE})


@pytest.mark.parametrize("name", sorted(CLIPA_REPO_PRESETS))
def test_repository_presets_are_their_openclip_twin_with_tanh_gelu(name):
    """``--model ViT-H-14-CL32-GAP-BigVision`` evaluates as the repository's scripts do; a file
    without --model is still detected as the twin (the same tensors)."""
    from clipa_train.model.weights import load_openclip_weights, matching_presets

    twin = CLIPA_REPO_PRESETS[name]
    ours, theirs = load_preset(name).to_dict(), load_preset(twin).to_dict()
    assert [ours["vision"].pop("gelu_approximate"), ours["text"].pop("gelu_approximate")] == [
        "tanh",
        "tanh",
    ]
    del theirs["vision"]["gelu_approximate"], theirs["text"]["gelu_approximate"]
    assert ours == theirs
    with torch.device("meta"):
        state = build_model(load_preset(twin)).state_dict()
        load_openclip_weights(build_model(load_preset(name)), state)  # strict: no error
    assert matching_presets(state) == [twin]


# ---- files in the CLIPA repository's layout, through the CLI --------------------------------


def save_clipa_repo_format(model, path: Path) -> None:
    """As the repository's weights are read by its ``load_state_dict``: ``{"state_dict": sd}``
    whose names may carry DDP's ``module.``, here renamed through the table's inverse."""
    state = to_clipa_repo(model.state_dict())
    torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}}, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A test-tiny-v2 model, its weights in the CLIPA repository's layout and as a bare
    OpenCLIP state dict, a WordPiece vocabulary that fits its 512 ids, data and an eval set."""
    root = tmp_path_factory.mktemp("clipa-repo")
    torch.manual_seed(0)
    model = build_model(load_preset("test-tiny-v2")).eval()
    save_clipa_repo_format(model, root / "vit_tiny_v2_clipa.pt")
    torch.save(model.state_dict(), root / "openclip.pt")
    val = write_demo_validation(root / "eval", per_class=1, seed=0)
    return {
        "root": root,
        "model": model,
        "repo": root / "vit_tiny_v2_clipa.pt",
        "openclip": root / "openclip.pt",
        "vocab": train_vocabulary(root / "vocab", CAPTIONS + record_captions()) / "vocab.txt",
        "data": make_builder_dir(root / "data", [make_records(16, start=0, size=32)]),
        "val": val,
    }


def features(model) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(3, 3, 32, 32, generator=generator)
    text = torch.randint(0, 300, (3, 16), generator=generator)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(text)


def test_eval_model_of_a_clipa_repo_file_has_the_originals_features(setup):
    """What ``eval --checkpoint`` builds from the file (no --model): test-tiny-v2, strict."""
    from clipa_train.eval_stage import EvalConfig, _model

    model = _model(EvalConfig(checkpoint=str(setup["repo"]))).eval()
    assert model.config == load_preset("test-tiny-v2")
    for ours, original in zip(features(model), features(setup["model"]), strict=True):
        assert torch.equal(ours, original)


def run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True)


def test_eval_of_a_clipa_repo_file_through_the_cli(setup, tmp_path):
    val = setup["val"]
    common = ["eval", "--imagenet-val", val.root, "--classnames", val.classnames_path,
              "--workers", 0, "--json"]  # fmt: skip
    # Its text vocabulary (512 ids) is not CLIP BPE's: one line says which file to pass.
    missing = run(*common, "--checkpoint", setup["repo"], "--out", tmp_path / "x.json")
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "--tokenizer clip-bpe has 49408 ids" in lines[0]
    assert "pass --tokenizer with its local tokenizer.json / vocab.txt" in lines[0]
    results = {}
    for kind in ("repo", "openclip"):
        done = run(*common, "--checkpoint", setup[kind], "--tokenizer", setup["vocab"],
                   "--out", tmp_path / f"{kind}.json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        results[kind] = json.loads(done.stdout.splitlines()[-1])
        assert results[kind]["n"] == 20
    for key in ("top1", "top5"):  # the same weights, whichever layout they came in
        assert results["repo"][key] == results["openclip"][key]


def finetune(setup, source: Path, out: Path) -> subprocess.CompletedProcess:
    return run("finetune", "--from", source, "--data", setup["data"], "--out", out,
               "--tokenizer", setup["vocab"], "--image-size", 32, "--text-length", 16,
               "--batch-size", 8, "--samples", 16,
               "--workers", 1, "--no-progress")  # fmt: skip


def test_finetune_from_a_clipa_repo_file_through_the_cli(setup, tmp_path):
    """``finetune --from`` the file, no --model: the run's model is test-tiny-v2 and its two
    steps end where the same run from the OpenCLIP layout of the same weights ends."""
    states = {}
    for kind in ("repo", "openclip"):
        done = finetune(setup, setup[kind], tmp_path / kind)
        assert done.returncode == 0, done.stderr
        config = json.loads((tmp_path / kind / "config.json").read_text())
        # the preset, its fixed sin-cos positions made learnable as every finetune stage does
        assert (
            config["model"] == load_preset("test-tiny-v2").replace(pos_embed="learnable").to_dict()
        )
        checkpoint = max((tmp_path / kind / "checkpoints").glob("step_*.pt"))
        states[kind] = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    for key, value in states["openclip"].items():
        assert torch.equal(states["repo"][key], value), key
    # eval of the run's checkpoint, no --tokenizer: the vocabulary the run recorded is used
    val = setup["val"]
    checkpoint = max((tmp_path / "repo" / "checkpoints").glob("step_*.pt"))
    done = run("eval", "--checkpoint", checkpoint, "--imagenet-val", val.root,
               "--classnames", val.classnames_path, "--workers", 0, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["n"] == 20


# ---- bad input ----------------------------------------------------------------------------------


def test_a_state_dict_of_foreign_keys_is_one_line(setup, tmp_path):
    from clipa_train.checkpoint import base_architecture

    path = tmp_path / "hf_clip.pt"
    torch.save(
        {
            "text_model.embeddings.token_embedding.weight": torch.zeros(8, 4),
            "vision_model.embeddings.patch_embedding.weight": torch.zeros(4, 3, 2, 2),
            "logit_scale": torch.zeros(()),
        },
        path,
    )
    with pytest.raises(ClipaError) as caught:
        base_architecture(None, str(path), default="ViT-B-16-CL16")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"{path} is neither OpenCLIP / CLIPA-repository weights nor a clipa checkpoint: "
        "2 unexpected key(s) (e.g. text_model.embeddings.token_embedding.weight, "
        "vision_model.embeddings.patch_embedding.weight), "
    )
    assert "11 missing key(s) (e.g. visual.conv1.weight, visual.class_embedding," in message
    val = setup["val"]
    done = run("eval", "--checkpoint", path, "--imagenet-val", val.root,
               "--classnames", val.classnames_path)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {message}"]


def _block(prefix: str, width: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """One residual block as OpenCLIP's ResidualAttentionBlock names it (an nn.MultiheadAttention
    ``attn``, ``mlp.c_fc``/``mlp.c_proj``), written out by hand."""
    return {
        f"{prefix}ln_1.weight": (width,), f"{prefix}ln_1.bias": (width,),
        f"{prefix}attn.in_proj_weight": (3 * width, width),
        f"{prefix}attn.in_proj_bias": (3 * width,),
        f"{prefix}attn.out_proj.weight": (width, width), f"{prefix}attn.out_proj.bias": (width,),
        f"{prefix}ln_2.weight": (width,), f"{prefix}ln_2.bias": (width,),
        f"{prefix}mlp.c_fc.weight": (hidden, width), f"{prefix}mlp.c_fc.bias": (hidden,),
        f"{prefix}mlp.c_proj.weight": (width, hidden), f"{prefix}mlp.c_proj.bias": (width,),
    }  # fmt: skip


def test_the_table_names_test_tiny_v2_as_the_clipa_repository_written_out_by_hand_does():
    """The other tests check the table against files the table itself wrote; this list is
    written from the CLIPA repository's module code (clipa_torch/open_clip, see the module
    docstring of clipa_weights), not from the table: width 32, 2 layers per tower, MLP 128,
    patch 8 on 32 px (16 patches + the class token), 16 text positions, 512 ids, embed 32,
    no ln_pre (an Identity there), no causal-mask buffer (non-persistent)."""
    expected = {
        "visual.conv1.weight": (32, 3, 8, 8), "visual.class_embedding": (32,),
        "visual.positional_embedding": (17, 32),
        "visual.ln_post.weight": (32,), "visual.ln_post.bias": (32,), "visual.proj": (32, 32),
        "token_embedding.weight": (512, 32), "positional_embedding": (16, 32),
        "ln_final.weight": (32,), "ln_final.bias": (32,), "text_projection": (32, 32),
        "logit_scale": (),
    }  # fmt: skip
    for layer in range(2):
        expected |= _block(f"visual.transformer.resblocks.{layer}.", 32, 128)
        expected |= _block(f"transformer.resblocks.{layer}.", 32, 128)
    got = {
        name: tuple(shape) for name, shape in clipa_repo_shapes(load_preset("test-tiny-v2")).items()
    }
    assert got == expected
