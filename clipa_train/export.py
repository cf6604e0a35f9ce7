"""``clipa-train export``: a clipa checkpoint as OpenCLIP weights (what OpenCLIP, CLIP_benchmark
and the CLIPA repository's test scripts load).

Our parameter names already are OpenCLIP's (``clipa_train.model``), so the export is the
checkpoint's model state dict as it is: ``visual.*``, ``token_embedding``,
``positional_embedding``, ``transformer.*``, ``ln_final``, ``text_projection``, ``logit_scale``
(and ``logit_bias`` for the sigmoid loss). The formats (``EXPORT_FORMATS``):

- ``openclip``: one ``torch.save`` file of that dict (``open_clip.create_model(NAME,
  pretrained=OUT.pt)`` for a built-in NAME of the same architecture);
- ``openclip-dir``: a folder with ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``)
  beside ``open_clip_pytorch_model.bin``, the file names OpenCLIP's ``hf-hub:`` loading reads;
  ``open_clip.create_model('local-dir:OUT')`` loads it from disk, or upload it as a Hub repo;
- ``safetensors``: the same tensors as ``open_clip_model.safetensors`` in such a folder, or one
  file when OUT ends in ``.safetensors``.

torch and safetensors are imported inside the functions: the CLI reads ``ExportConfig`` for its
options without them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from clipa_data.core import layout
from clipa_data.core.config_fields import Choices, Doc
from clipa_data.core.errors import ClipaError
from clipa_data.core.registry import pick

CONFIG_NAME = "open_clip_config.json"
CLIPA_ARCHITECTURE = "clipa_architecture"
"""The key of ``CONFIG_NAME`` holding the exported model's whole clipa ``ModelConfig``."""
WEIGHTS_NAME = "open_clip_pytorch_model.bin"
SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"
"""OpenCLIP's names (``open_clip.constants``: HF_CONFIG_NAME, HF_WEIGHTS_NAME,
HF_SAFE_WEIGHTS_NAME); its ``local-dir:`` loader prefers them over other weight files."""

POOL_TYPES = {"tok": "tok", "avg": "avg", "avg_all": "avg"}
"""Our ``vision.pool`` -> OpenCLIP's ``vision_cfg.pool_type`` (OpenCLIP has no ``avg_all``: its
``avg`` leaves the class token out, see ``export_notes``)."""
CLIP_BPE_VOCAB = 49408
"""OpenCLIP's default tokenizer's vocabulary; another size needs its tokenizer named."""


@dataclass(frozen=True)
class ExportFormat:
    """How one export format writes the tensors."""

    help: str
    """One line for ``--help`` and the README."""
    safetensors: bool
    """Write safetensors (else a ``torch.save`` pickle of tensors)."""
    folder: bool
    """OUT is a folder with ``open_clip_config.json`` beside the weights (a ``.safetensors``
    OUT of the safetensors format is one file instead)."""


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "openclip": ExportFormat("one torch.save state dict with OpenCLIP's names", False, False),
    "openclip-dir": ExportFormat(
        "a folder: open_clip_config.json + open_clip_pytorch_model.bin (local-dir:/hf-hub:)",
        False,
        True,
    ),
    "safetensors": ExportFormat(
        "the same tensors as safetensors: a folder with open_clip_config.json + "
        "open_clip_model.safetensors, or one file if OUT ends in .safetensors",
        True,
        True,
    ),
}
"""The export formats (the only list of their names)."""

FORMAT_NAMES: tuple[str, ...] = tuple(EXPORT_FORMATS)


@dataclass(frozen=True)
class ExportConfig:
    """What ``clipa-train export`` writes."""

    checkpoint: Annotated[str, Doc("A clipa checkpoint file (runs/x/checkpoints/step_*.pt).")]
    out: Annotated[str, Doc("Where the export goes: a file (openclip) or a folder.")]
    format: Annotated[
        str,
        Doc("openclip: one .pt state dict; openclip-dir: config + .bin folder; safetensors."),
        Choices(FORMAT_NAMES),
    ] = "openclip"
    overwrite: Annotated[bool, Doc("Replace an earlier export at OUT.")] = False

    def __post_init__(self) -> None:
        pick(EXPORT_FORMATS, self.format, "export format")
        layout.check_local(self.out, "OUT")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    source: str
    """The checkpoint file read."""
    files: tuple[str, ...]
    """The files written (weights first: a folder's config is written once they are whole)."""
    tensors: int
    """Tensors in the state dict."""
    parameters: int
    """Scalars in them."""
    notes: tuple[str, ...]
    """Where OpenCLIP computes something slightly differently from clipa (said to the user)."""


def checkpoint_file(path: str | Path, verb: str = "use") -> Path:
    """``path`` if it is a file; a run directory (or its ``checkpoints/``) is refused with its
    newest checkpoint named, so the fix is one copy-paste away."""
    from clipa_train.checkpoint import refuse_folder

    layout.check_local(path, "checkpoint", read=True)
    path = Path(path)
    refuse_folder(path, verb)
    if not path.is_file():
        raise ClipaError(f"checkpoint {path} does not exist")
    return path


def openclip_config(architecture, image_mean=None, image_std=None) -> dict:
    """``open_clip_config.json`` for a ``ModelConfig``: OpenCLIP's ``model_cfg`` (embed_dim,
    vision_cfg, text_cfg) and the ``preprocess_cfg`` our evaluation matches (shorter side +
    centre crop, OpenAI mean/std unless given)."""
    from clipa_train.backend_config import OPENAI_MEAN, OPENAI_STD

    vision, text = architecture.vision, architecture.text
    model_cfg = {
        "embed_dim": architecture.embed_dim,
        "quick_gelu": False,  # exact GELU, as clipa's blocks
        "vision_cfg": {
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
            "width": vision.width,
            "layers": vision.layers,
            "head_width": vision.width // vision.heads,  # OpenCLIP derives heads from it
            "mlp_ratio": vision.mlp_ratio,
            "pos_embed_type": vision.pos_embed,  # learnable / sin_cos_2d: OpenCLIP's names too
            "pool_type": POOL_TYPES[vision.pool],
            "final_ln_after_pool": vision.final_ln_after_pool,
            "no_ln_pre": vision.no_ln_pre,
        },
        "text_cfg": {
            "context_length": text.context_length,
            "vocab_size": text.vocab_size,
            "width": text.width,
            "heads": text.heads,
            "layers": text.layers,
            "mlp_ratio": text.mlp_ratio,
            "pool_type": text.pool,
            "no_causal_mask": text.no_causal_mask,
        },
    }
    if architecture.init_logit_bias is not None:  # OpenCLIP makes logit_bias only when set
        model_cfg["init_logit_bias"] = architecture.init_logit_bias
    preprocess_cfg = {
        "size": vision.image_size,
        "mean": list(image_mean or OPENAI_MEAN),
        "std": list(image_std or OPENAI_STD),
        "interpolation": "bilinear",  # ours: box prefilter + bilinear (clipa_train.image)
        "resize_mode": "shortest",
    }
    # OpenCLIP reads model_cfg and preprocess_cfg only; clipa reads its own architecture back
    # (GAP pooling, tanh GELU, a frozen sin-cos table: switches no tensor name or shape shows).
    return {
        "model_cfg": model_cfg,
        "preprocess_cfg": preprocess_cfg,
        CLIPA_ARCHITECTURE: architecture.to_dict(),
    }


def export_notes(architecture) -> tuple[str, ...]:
    """What OpenCLIP does differently with this architecture."""
    vision, text = architecture.vision, architecture.text
    notes = []
    if vision.pool == "avg_all":
        notes.append(
            "avg_all (GAP) pooling: clipa averages the class token in (as OpenCLIP < 2.23's "
            "global_average_pool did); OpenCLIP >= 2.23's pool_type 'avg' averages the patch "
            "tokens only, so its image features of this model differ from clipa's (text "
            "features are identical); evaluate GAP models with clipa-train eval for the paper's "
            "numbers"
        )
    if "tanh" in (vision.gelu_approximate, text.gelu_approximate):
        notes.append(
            "tanh-approximate GELU: OpenCLIP builds exact GELU, so features differ slightly"
        )
    if text.vocab_size != CLIP_BPE_VOCAB:
        notes.append(
            f"text vocabulary of {text.vocab_size:,} (not CLIP's BPE): add the tokenizer to "
            'text_cfg for OpenCLIP (CLIPA-v2: "hf_tokenizer_name": "bert-base-uncased", '
            '"tokenizer_kwargs": {"strip_sep_token": true})'
        )
    return tuple(notes)


def read_state(source: Path):
    """The checkpoint's model state dict and architecture; the keys and shapes are checked
    against the architecture (built on the meta device: no memory, no init)."""
    import torch

    from clipa_train.checkpoint import FORMAT, _read
    from clipa_train.model import ModelConfig, build_model
    from clipa_train.model.weights import check_compatible, unwrap_state_dict

    payload = _read(source, fix="export an earlier checkpoint or copy this one again")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ClipaError(
            f"{source} is not a clipa checkpoint; OpenCLIP/CLIPA weights need no export (they "
            "already have OpenCLIP's names)"
        )
    architecture = ModelConfig.from_dict(payload["architecture"], source=str(source))
    state = {key: value.contiguous() for key, value in unwrap_state_dict(payload["model"]).items()}
    with torch.device("meta"):
        model = build_model(architecture)
    check_compatible(state, model, str(source))
    return state, architecture, payload


def write_weights(path: Path, state: dict, safetensors: bool, metadata: dict[str, str]) -> None:
    """The state dict at ``path``, atomically (a killed export leaves no half file)."""
    import torch

    from clipa_data.core.atomic import atomic_writer

    with atomic_writer(path) as handle:
        if safetensors:
            handle.write(_safetensors_save()(state, metadata=metadata))
        else:
            torch.save(state, handle)


def _safetensors_save():
    """``safetensors.torch.save``, or one line saying how to install it."""
    try:
        from safetensors.torch import save
    except ImportError:
        raise ClipaError(
            "--format safetensors needs the safetensors package: pip install 'clipa[train]'"
        ) from None
    return save


def _targets(config: ExportConfig) -> tuple[Path | None, Path]:
    """(config file or None, weights file) for ``config.out``; a file where a folder goes (or
    the other way round) is an error."""
    chosen = EXPORT_FORMATS[config.format]
    out = Path(config.out)
    if out.suffix == ".safetensors" and not chosen.safetensors:  # a pickle under that name
        raise ClipaError(
            f"{out} ends in .safetensors but --format {config.format} writes "
            f"{'a folder' if chosen.folder else 'a torch.save pickle'}; pass --format "
            "safetensors (or give OUT another name)"
        )
    if chosen.folder and not (chosen.safetensors and out.suffix == ".safetensors"):
        if out.is_file():
            raise ClipaError(f"{out} is a file; --format {config.format} writes a folder")
        return out / CONFIG_NAME, out / (SAFE_WEIGHTS_NAME if chosen.safetensors else WEIGHTS_NAME)
    if out.is_dir() or str(config.out).endswith(("/", os.sep)):  # "newdir/": a folder too
        what = "is a folder" if out.is_dir() else "ends with / (a folder)"
        raise ClipaError(
            f"{config.out} {what}; --format {config.format} writes one file (give OUT.pt, "
            "or use --format openclip-dir)"
        )
    return None, out


def _other_format_weights(config_path: Path | None, weights_path: Path) -> Path | None:
    """In an export folder, the weights file of the other folder format: an ``--overwrite``
    in one format removes the other's, so the folder never holds weights of two checkpoints."""
    if config_path is None:
        return None
    other = SAFE_WEIGHTS_NAME if weights_path.name == WEIGHTS_NAME else WEIGHTS_NAME
    return weights_path.parent / other


def _check_not_replacing(source: Path, targets: list[Path], overwrite: bool) -> None:
    """Never write over the checkpoint being exported; another existing file only with
    ``--overwrite`` (nothing is replaced without a word)."""
    for target in targets:
        if target.exists() and target.resolve() == source.resolve():
            raise ClipaError(f"OUT {target} is the checkpoint being exported; give another OUT")
        if target.exists() and not overwrite:
            raise ClipaError(f"{target} already exists; pass --overwrite to replace it")


def export_checkpoint(config: ExportConfig) -> ExportResult:
    """Write the export of ``config.checkpoint``; returns what was written."""
    from clipa_data.core.atomic import check_writable_folder, write_json
    from clipa_train.backend_config import IMAGE_NORMS
    from clipa_train.eval_stage import trained_image_norm

    source = checkpoint_file(config.checkpoint, "export")
    config_path, weights_path = _targets(config)
    stale = _other_format_weights(config_path, weights_path)
    check_writable_folder(weights_path.parent, weights_path.name)
    targets = [p for p in (config_path, weights_path, stale) if p]
    _check_not_replacing(source, targets, config.overwrite)
    state, architecture, payload = read_state(source)
    if config_path is not None:
        # Until the new weights are whole the folder holds no config, so a failed export never
        # pairs a new config with an earlier export's weights (OpenCLIP needs the config).
        config_path.unlink(missing_ok=True)
    metadata = {"format": "pt", "source": str(source), "step": str(payload.get("step", ""))}
    write_weights(weights_path, state, EXPORT_FORMATS[config.format].safetensors, metadata)
    files = [str(weights_path)]
    if stale is not None:
        stale.unlink(missing_ok=True)  # an earlier export's: OpenCLIP could load it instead
    if config_path is not None:
        mean_std = IMAGE_NORMS[trained_image_norm(source)]  # preprocess_cfg: what it trained on
        write_json(config_path, openclip_config(architecture, *mean_std))
        files.append(str(config_path))
    norm = trained_image_norm(source)
    unsaid_norm = (
        (f"trained with --image-norm {norm}, which one weights file cannot carry: pass "
         f"--image-norm {norm} to clipa-train eval and probe (--format openclip-dir keeps it)",)
        if config_path is None and norm != "openai"
        else ()
    )  # fmt: skip
    return ExportResult(
        source=str(source),
        files=tuple(files),
        tensors=len(state),
        parameters=sum(value.numel() for value in state.values()),
        notes=export_notes(architecture) + unsaid_norm,
    )
