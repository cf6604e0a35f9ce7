"""``clipa-train export``: the export holds the checkpoint's tensors under OpenCLIP's names, the
safetensors file reads back with the ``safetensors`` library, the folder's
``open_clip_config.json`` describes the architecture, and bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from checkpoints import write_checkpoint
from cli_checks import assert_one_line_error
from clipa_cli.train_app import app
from test_model import OPENCLIP_KEYS
from typer.testing import CliRunner

from clipa_train.checkpoint import load_checkpoint
from clipa_train.export import CONFIG_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_NAME
from clipa_train.model import build_model, load_openclip_weights, load_preset


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    write_checkpoint(root / "contrastive", step=2)
    return {
        "contrastive": write_checkpoint(root / "contrastive", step=5),
        "sigmoid": write_checkpoint(root / "sigmoid", loss="sigmoid", pool="tok"),
    }


def invoke(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def source_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint)["model"]


@pytest.mark.parametrize("loss", ["contrastive", "sigmoid"])
def test_openclip_export_is_the_checkpoints_state_dict_under_openclip_names(runs, tmp_path, loss):
    out = tmp_path / "model.pt"
    result = invoke("export", runs[loss], out, "--format", "openclip")
    assert result.exit_code == 0, result.output
    exported = torch.load(out, map_location="cpu", weights_only=True)
    source = source_state(runs[loss])
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in source.items()}
    assert all(torch.equal(exported[key], source[key]) for key in source)
    expected = {**OPENCLIP_KEYS, **({"logit_bias": []} if loss == "sigmoid" else {})}
    assert {key: list(value.shape) for key, value in exported.items()} == expected
    model = build_model(load_preset("test-tiny").replace(loss=loss))
    load_openclip_weights(model, out)  # strict: every key, every shape


@pytest.mark.parametrize("target", ["folder", "file.safetensors"])
def test_safetensors_export_loads_with_safetensors_to_identical_tensors(runs, tmp_path, target):
    from safetensors.torch import load_file

    out = tmp_path / target
    result = invoke("export", runs["sigmoid"], out, "--format", "safetensors")
    assert result.exit_code == 0, result.output
    weights = out / SAFE_WEIGHTS_NAME if target == "folder" else out
    assert (out / CONFIG_NAME).is_file() == (target == "folder")
    loaded = load_file(weights)
    source = source_state(runs["sigmoid"])
    assert loaded.keys() == source.keys()
    for key, value in source.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


def test_openclip_dir_config_describes_the_architecture(runs, tmp_path):
    out = tmp_path / "export"
    result = invoke("export", runs["sigmoid"], out, "--format", "openclip-dir")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    config = json.loads((out / CONFIG_NAME).read_text())
    model_cfg, preprocess = config["model_cfg"], config["preprocess_cfg"]
    architecture = load_preset("test-tiny").replace(loss="sigmoid", pool="tok")
    vision, text = architecture.vision, architecture.text
    assert model_cfg["embed_dim"] == architecture.embed_dim
    assert model_cfg["init_logit_bias"] == -10.0
    assert model_cfg["vision_cfg"] == {
        "image_size": vision.image_size,
        "patch_size": vision.patch_size,
        "width": vision.width,
        "layers": vision.layers,
        "head_width": vision.width // vision.heads,
        "mlp_ratio": vision.mlp_ratio,
        "pos_embed_type": "learnable",
        "pool_type": "tok",
        "final_ln_after_pool": vision.final_ln_after_pool,  # either way for the class token
        "no_ln_pre": False,
    }
    assert model_cfg["text_cfg"] == {
        "context_length": text.context_length,
        "vocab_size": text.vocab_size,
        "width": text.width,
        "heads": text.heads,
        "layers": text.layers,
        "mlp_ratio": text.mlp_ratio,
        "pool_type": "argmax",
        "no_causal_mask": False,
    }
    assert preprocess["size"] == vision.image_size and preprocess["resize_mode"] == "shortest"
    assert len(preprocess["mean"]) == len(preprocess["std"]) == 3
    exported = torch.load(out / WEIGHTS_NAME, map_location="cpu", weights_only=True)
    assert exported.keys() == source_state(runs["sigmoid"]).keys()


def test_gap_pooling_is_exported_as_avg_with_a_note(runs, tmp_path):
    result = invoke("export", runs["contrastive"], tmp_path / "gap", "--format", "openclip-dir")
    assert result.exit_code == 0, result.output
    vision_cfg = json.loads((tmp_path / "gap" / CONFIG_NAME).read_text())["model_cfg"]["vision_cfg"]
    assert vision_cfg["pool_type"] == "avg" and vision_cfg["final_ln_after_pool"] is True
    assert "class token" in result.stderr


def test_v2_switches_reach_the_openclip_config_with_notes(tmp_path):
    """test-tiny-v2: no ln_pre, patch-token mean then ln_post, bidirectional text pooled last;
    its tanh GELU and non-CLIP vocabulary are what OpenCLIP's config cannot say (notes)."""
    checkpoint = write_checkpoint(tmp_path / "v2", preset="test-tiny-v2")
    result = invoke("export", checkpoint, tmp_path / "out", "--format", "openclip-dir")
    assert result.exit_code == 0, result.output
    model_cfg = json.loads((tmp_path / "out" / CONFIG_NAME).read_text())["model_cfg"]
    vision_cfg, text_cfg = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    assert (vision_cfg["pool_type"], vision_cfg["final_ln_after_pool"]) == ("avg", True)
    assert vision_cfg["no_ln_pre"] is True and vision_cfg["pos_embed_type"] == "sin_cos_2d"
    assert (text_cfg["pool_type"], text_cfg["no_causal_mask"]) == ("last", True)
    assert "tanh" in result.stderr and "hf_tokenizer_name" in result.stderr
    exported = torch.load(tmp_path / "out" / WEIGHTS_NAME, map_location="cpu", weights_only=True)
    assert "visual.ln_pre.weight" not in exported
    assert exported.keys() == source_state(checkpoint).keys()


def test_a_run_directory_names_its_newest_checkpoint(runs, tmp_path):
    run = runs["contrastive"].parent.parent
    result = invoke("export", run, tmp_path / "model.pt")
    assert_one_line_error(result, "is a run directory", "step_00000005.pt")
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize(
    ("where", "extra", "fragments"),
    [
        ("empty", [], ["directory without checkpoints"]),
        ("missing", [], ["does not exist"]),
        ("folder-out", [], ["is a folder", "--format openclip-dir"]),
        ("new-folder-out", [], ["new/ ends with / (a folder)", "--format openclip-dir"]),
        ("file-out", ["--format", "openclip-dir"], ["is a file", "writes a folder"]),
        ("below-a-file", [], ["file-out is a file, not a folder", "out.pt"]),
        ("bad-format", ["--format", "onnx"], ["unknown export format 'onnx'", "openclip-dir"]),
        ("openclip-weights", [], ["is not a clipa checkpoint", "need no export"]),
        ("truncated", [], ["truncated or corrupt", "export an earlier checkpoint"]),
        ("pickle-as-safetensors", [], ["ends in .safetensors", "--format safetensors"]),
        ("dir-as-safetensors", ["--format", "openclip-dir"], ["writes a folder"]),
    ],
)
def test_export_bad_input(runs, tmp_path, where, extra, fragments):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file-out").write_text("")
    torch.save(source_state(runs["contrastive"]), tmp_path / "openclip-weights.pt")
    (tmp_path / "truncated.pt").write_bytes(runs["contrastive"].read_bytes()[:1000])
    source = {
        "empty": tmp_path / "empty",
        "missing": tmp_path / "nope.pt",
        "openclip-weights": tmp_path / "openclip-weights.pt",
        "truncated": tmp_path / "truncated.pt",
    }.get(where, runs["contrastive"])
    out = {
        "folder-out": tmp_path / "empty",
        "new-folder-out": f"{tmp_path / 'new'}/",
        "file-out": tmp_path / "file-out",
        "below-a-file": tmp_path / "file-out" / "out.pt",
        "pickle-as-safetensors": tmp_path / "out.safetensors",
        "dir-as-safetensors": tmp_path / "out.safetensors",
    }.get(where, tmp_path / "out.pt")
    result = invoke("export", source, out, *extra)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "new").exists()


def test_openclip_dir_preprocess_uses_the_runs_image_norm(tmp_path):
    """A run trained with --image-norm imagenet (the CLIPA-v2 recipes) exports ImageNet's
    mean/std in preprocess_cfg; the probe and eval read the same config.json."""
    from clipa_train.backend_config import IMAGENET_MEAN, IMAGENET_STD

    checkpoint = write_checkpoint(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text(
        json.dumps({"options": {"image_norm": "imagenet"}})
    )
    result = invoke("export", checkpoint, tmp_path / "out", "--format", "openclip-dir")
    assert result.exit_code == 0, result.output
    preprocess = json.loads((tmp_path / "out" / CONFIG_NAME).read_text())["preprocess_cfg"]
    assert (preprocess["mean"], preprocess["std"]) == (list(IMAGENET_MEAN), list(IMAGENET_STD))


def test_a_checkpoint_copied_out_of_its_run_keeps_its_image_norm(tmp_path):
    """Without the run's config.json beside it, the checkpoint's own copy of its options says
    how its inputs were normalised: export, eval and probe use it; probe takes --image-norm."""
    import shutil

    from clipa_data.core.errors import ClipaError
    from clipa_train.backend_config import IMAGENET_MEAN, OPENAI_MEAN
    from clipa_train.eval_stage import EvalConfig
    from clipa_train.probe import ProbeConfig

    options = {"options": {"image_norm": "imagenet"}}
    checkpoint = write_checkpoint(tmp_path / "run", run_config=options)
    alone = tmp_path / "alone" / checkpoint.name
    alone.parent.mkdir()
    shutil.copy(checkpoint, alone)
    result = invoke("export", alone, tmp_path / "out", "--format", "openclip-dir")
    assert result.exit_code == 0, result.output
    preprocess = json.loads((tmp_path / "out" / CONFIG_NAME).read_text())["preprocess_cfg"]
    assert preprocess["mean"] == list(IMAGENET_MEAN)
    assert EvalConfig(checkpoint=str(alone)).backend_config().image_mean == IMAGENET_MEAN
    bare = write_checkpoint(tmp_path / "bare")  # a run config without the option: openai's
    assert EvalConfig(checkpoint=str(bare)).backend_config().image_mean == OPENAI_MEAN
    given = ProbeConfig(checkpoint=str(alone), train="t", val="v", image_norm="openai")
    assert given.image_norm == "openai"
    with pytest.raises(ClipaError, match="--image-norm must be one of openai, imagenet"):
        ProbeConfig(checkpoint=str(alone), train="t", val="v", image_norm="laion")


@pytest.mark.parametrize("export_format", ["openclip-dir", "safetensors"])
def test_a_folder_export_is_rebuilt_with_the_architecture_it_was_trained_with(
    tmp_path, export_format
):
    """Its weights matched clipa-tiny by names and shapes, which say nothing of pooling, the
    final LayerNorm's place, a frozen sin-cos table or the GELU: a class-token model came back
    as GAP and scored differently, a sin-cos one trained its table on --from."""
    from clipa_train.checkpoint import base_architecture, load_checkpoint

    changes = {"pool": "tok", "pos_embed": "sin_cos_2d"}
    checkpoint = write_checkpoint(tmp_path / "run", preset="clipa-tiny", **changes)
    out = tmp_path / "export"
    result = invoke("export", checkpoint, out, "--format", export_format)
    assert result.exit_code == 0, result.output
    weights = out / (SAFE_WEIGHTS_NAME if export_format == "safetensors" else WEIGHTS_NAME)
    rebuilt = base_architecture(None, str(weights), "clipa-tiny")
    assert rebuilt.to_dict() == load_checkpoint(checkpoint)["architecture"]
    assert (rebuilt.vision.pool, rebuilt.vision.pos_embed) == ("tok", "sin_cos_2d")
    (out / CONFIG_NAME).unlink()  # OpenCLIP's own folders hold no clipa architecture
    assert base_architecture(None, str(weights), "clipa-tiny").vision.pool != "tok"


def test_an_export_of_a_short_token_run_is_rebuilt_at_its_own_sizes(tmp_path):
    """Weights without an architecture are the bundled preset at the sizes of their positional
    embeddings (here a 32 px / 8-token pre-training of clipa-tiny, not its 64 px / 32), so
    clipa-train eval of the export is the trained model; a single file says which
    --image-norm it needs."""
    from clipa_train.checkpoint import base_architecture

    checkpoint = write_checkpoint(
        tmp_path / "run", preset="clipa-tiny", image_size=32, context_length=8
    )
    (tmp_path / "run" / "config.json").write_text(
        json.dumps({"options": {"image_norm": "imagenet"}})
    )
    result = invoke("export", checkpoint, tmp_path / "model.pt")
    assert result.exit_code == 0, result.output
    assert "pass --image-norm imagenet to clipa-train eval" in result.output
    rebuilt = base_architecture(None, str(tmp_path / "model.pt"), "clipa-tiny")
    assert (rebuilt.vision.image_size, rebuilt.text.context_length) == (32, 8)
    model = load_openclip_weights(build_model(rebuilt), tmp_path / "model.pt")
    original = source_state(checkpoint)
    assert all(torch.equal(model.state_dict()[key], original[key]) for key in original)


def test_eval_with_model_named_keeps_the_sizes_of_the_weights(tmp_path):
    """``--model`` names the architecture, not the sizes: a 32 px / 8-token export evaluated
    with ``--model clipa-tiny`` was silently resized to the preset's 64 px / 32 tokens."""
    from clipa_data.demo import write_demo_validation

    val = write_demo_validation(tmp_path / "eval", per_class=1, seed=0)
    checkpoint = write_checkpoint(
        tmp_path / "run", preset="clipa-tiny", image_size=32, context_length=8
    )
    out = tmp_path / "model.safetensors"
    assert invoke("export", checkpoint, out, "--format", "safetensors").exit_code == 0
    scores = []
    for named in ([], ["--model", "clipa-tiny"]):
        result = invoke(
            "eval", "--checkpoint", out, *named, "--imagenet-val", val.root, "--classnames",
            val.classnames_path, "--json", "--workers", 0,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        scores.append(json.loads(result.stdout))
        assert (scores[-1]["image_size"], scores[-1]["text_length"]) == (32, 8), named
    assert scores[0]["top1"] == scores[1]["top1"] and scores[0]["top5"] == scores[1]["top5"]
    larger = invoke(
        "eval", "--checkpoint", out, "--model", "clipa-tiny", "--image-size", 48,
        "--imagenet-val", val.root, "--classnames", val.classnames_path, "--json", "--workers", 0,
    )  # fmt: skip
    assert larger.exit_code == 0, larger.output
    assert json.loads(larger.stdout)["image_size"] == 48


def test_an_export_never_replaces_its_checkpoint_and_others_only_when_told(runs, tmp_path):
    checkpoint = tmp_path / "step_00000005.pt"
    checkpoint.write_bytes(runs["contrastive"].read_bytes())
    before = checkpoint.read_bytes()
    for more in ([], ["--overwrite"]):
        itself = invoke("export", checkpoint, checkpoint, *more)
        assert_one_line_error(itself, "is the checkpoint being exported")
    assert checkpoint.read_bytes() == before
    out = tmp_path / "model.pt"
    assert invoke("export", checkpoint, out).exit_code == 0
    again = invoke("export", checkpoint, out)
    assert_one_line_error(again, f"{out} already exists", "--overwrite")
    assert invoke("export", checkpoint, out, "--overwrite").exit_code == 0
    folder = invoke("export", checkpoint, tmp_path / "dir", "--format", "openclip-dir")
    assert folder.exit_code == 0, folder.output
    refused = invoke("export", checkpoint, tmp_path / "dir", "--format", "openclip-dir")
    assert_one_line_error(refused, "open_clip_config.json already exists")


def test_an_overwrite_in_the_other_folder_format_leaves_no_earlier_weights(runs, tmp_path):
    """OpenCLIP's local-dir loader takes whichever weights file it finds first: a folder that
    kept an earlier export's .bin beside the new .safetensors could load the wrong checkpoint."""
    out = tmp_path / "dir"
    first = invoke("export", runs["contrastive"], out, "--format", "openclip-dir")
    assert first.exit_code == 0, first.output
    refused = invoke("export", runs["sigmoid"], out, "--format", "safetensors")
    assert_one_line_error(refused, "already exists", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    again = invoke("export", runs["sigmoid"], out, "--format", "safetensors", "--overwrite")
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, SAFE_WEIGHTS_NAME]


def test_an_exported_safetensors_file_evaluates_as_its_checkpoint(tmp_path):
    """eval (and probe, through the same reader) took a .safetensors export for something that
    is not a checkpoint; it holds the same weights, so it evaluates the same."""
    from clipa_data.demo import write_demo_validation

    val = write_demo_validation(tmp_path / "eval", per_class=1, seed=0)
    checkpoint = write_checkpoint(tmp_path / "run", preset="clipa-tiny")  # CLIP BPE's vocabulary
    out = tmp_path / "model.safetensors"
    assert invoke("export", checkpoint, out, "--format", "safetensors").exit_code == 0
    results = []
    for weights in (checkpoint, out):
        result = invoke(
            "eval", "--checkpoint", weights, "--imagenet-val", val.root, "--classnames",
            val.classnames_path, "--image-size", 32, "--json",
            "--workers", 0,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        results.append(json.loads(result.stdout))
    assert results[0]["top1"] == results[1]["top1"] and results[0]["top5"] == results[1]["top5"]
    # Weights of the sigmoid loss (a logit_bias) under a named preset: the preset takes their
    # loss (it was refused as "built for --loss contrastive", and eval has no --loss).
    sigmoid = write_checkpoint(tmp_path / "sig", preset="clipa-tiny", loss="sigmoid")
    out = tmp_path / "sig.safetensors"
    assert invoke("export", sigmoid, out, "--format", "safetensors").exit_code == 0
    result = invoke(
        "eval", "--checkpoint", out, "--model", "clipa-tiny", "--imagenet-val", val.root,
        "--classnames", val.classnames_path, "--image-size", 32, "--json", "--workers", 0,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("weights", [WEIGHTS_NAME, SAFE_WEIGHTS_NAME])
def test_an_exported_folder_keeps_its_image_norm_for_eval_and_probe(tmp_path, weights):
    """The export of an --image-norm imagenet run holds ImageNet's mean/std in its
    open_clip_config.json, but eval and probe of its weights file normalised with OpenAI's
    (the note at export even said the folder keeps it); the folder itself was refused as
    "a directory without checkpoints". Now the config beside the weights is read, and the
    folder's refusal names its weights file."""
    from clipa_train.backend_config import IMAGENET_MEAN
    from clipa_train.eval_stage import EvalConfig

    checkpoint = write_checkpoint(
        tmp_path / "run", run_config={"options": {"image_norm": "imagenet"}}
    )
    kind = "openclip-dir" if weights == WEIGHTS_NAME else "safetensors"
    assert invoke("export", checkpoint, tmp_path / "out", "--format", kind).exit_code == 0
    exported = tmp_path / "out" / weights
    assert EvalConfig(checkpoint=str(exported)).backend_config().image_mean == IMAGENET_MEAN
    from clipa_data.demo import write_demo_validation

    val = write_demo_validation(tmp_path / "eval", per_class=1, seed=0)
    folder = invoke(
        "eval", "--checkpoint", tmp_path / "out", "--imagenet-val", val.root, "--classnames",
        val.classnames_path,
    )  # fmt: skip
    assert_one_line_error(folder, f"{tmp_path / 'out'} is an exported model folder", str(exported))
