"""transformers and sentence-transformers models straight from a ``.cmf`` (or a sharded set).

``from_pretrained`` builds the model from the ``config.json`` attachment with its parameters on
PyTorch's meta device (no memory, no random init), then assigns the decoded tensors
(``load_state_dict(assign=True)``) and re-ties tied weights: the weights never go through a
temporary file. ``tokenizer`` and ``sentence_transformer`` write only the small side files
(tokenizer, module configs) to a temporary directory. A GGUF import (no config.json: packed from
a ``.gguf``) gives the model and tokenizer transformers builds from the ``.gguf``
(cmf.transformers_gguf). Nothing from the file is executed:
configs that need remote code are refused. Needs ``pip install 'cmf-container[transformers]'``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from .errors import CmfError
from .extras import install_hint

try:
    import torch
    import transformers
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"cmf.transformers needs transformers and PyTorch: {install_hint('transformers')}"
    ) from exc

from .limits import DEFAULT_LIMITS, Limits
from .shards import open_model
from .torch_arrays import TORCH_DTYPES, to_torch
from .transformers_gguf import config_dict as gguf_config_dict
from .transformers_gguf import hf_tensors as gguf_hf_tensors
from .transformers_gguf import is_gguf_import
from .transformers_gguf import tokenizer as gguf_tokenizer

CONFIG = "config.json"
_MAJOR = int(transformers.__version__.split(".")[0])
_DTYPE_KW = "dtype" if _MAJOR >= 5 else "torch_dtype"  # the builder's name for it


# ----------------------------------------------------------------------------- side files
def _safe_name(name: str) -> bool:
    """True for a relative attachment name that stays inside a directory (no '..', no root)."""
    parts = name.split("/")
    return (
        bool(name)
        and "\\" not in name
        and not name.startswith("/")
        and all(p not in ("", ".", "..") for p in parts)
        and "\0" not in name
    )


@contextlib.contextmanager
def side_files(f: Any) -> Iterator[str]:
    """A temporary directory holding the attachments of ``f`` (config, tokenizer, module
    configs; never weights), removed afterwards. CmfError for a name that would leave it."""
    with tempfile.TemporaryDirectory(prefix="cmf-side-") as tmp:
        for name in f.attachments():
            if not _safe_name(name):
                raise CmfError(f"attachment {name!r} is not a plain relative file name")
            target = os.path.join(tmp, *name.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(f.get_attachment(name))
        yield tmp


def _require_config(path: Any, f: Any) -> None:
    if CONFIG not in f.attachments():
        raise CmfError(
            f"{os.fspath(path)} has no {CONFIG} attachment, which transformers needs to build the "
            f"model: pack the model directory (cmf pack model_dir/ carries config.json and the "
            f"tokenizer files), or add it: cmf pack model.safetensors --attach config.json"
        )


# ----------------------------------------------------------------------------- building
_LOCAL = threading.local()


@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Parameters registered meanwhile (in this thread) go to the meta device: no memory and
    no initialisation cost. Buffers stay real (rotary frequencies, position ids are computed
    in ``__init__`` and are often not in the checkpoint)."""
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: Any) -> None:
        original(module, name, param)
        if param is not None and getattr(_LOCAL, "meta", False):
            kind = type(module._parameters[name])
            extra = module._parameters[name].__dict__
            moved = kind(module._parameters[name].to("meta"), requires_grad=param.requires_grad)
            moved.__dict__.update(extra)
            module._parameters[name] = moved

    _LOCAL.meta = True
    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        _LOCAL.meta = False
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def _model_class(config: Any, model_class: Any) -> Any:
    if model_class is not None:
        return model_class
    arch = (getattr(config, "architectures", None) or [None])[0]
    if arch is None:
        return transformers.AutoModel
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise CmfError(
            f"architecture {arch!r} (config.json) is not known to transformers "
            f"{transformers.__version__}"
        )
    return cls


def _dtype(requested: Any, config: Any, f: Any) -> Any:
    """The torch dtype to build in: as given, or for "auto" the config's (else the file's first
    float tensor's); None: transformers' own default (float32 before v5, "auto" from v5)."""
    if requested is None:
        requested = "auto" if _MAJOR >= 5 else torch.float32
    if isinstance(requested, str) and requested != "auto":
        requested = getattr(torch, requested, None)
        if not isinstance(requested, torch.dtype):
            raise CmfError(f"dtype {requested!r} is not a torch dtype")
    if requested == "auto":
        found = config.dtype if hasattr(config, "dtype") else getattr(config, "torch_dtype", None)
        if isinstance(found, str):
            found = getattr(torch, found, None)
        if isinstance(found, torch.dtype):
            return found
        floats = [f.spec(n).dtype.name for n in f.keys() if f.spec(n).dtype.is_float]
        return TORCH_DTYPES[floats[0]] if floats else torch.float32
    return requested


def _key_map(model_keys: list[str], file_keys: list[str], prefix: str) -> dict[str, str]:
    """File name -> model name, adding or removing the base model prefix as transformers does."""
    dot = f"{prefix}." if prefix else ""
    model_has = bool(dot) and any(k.startswith(dot) for k in model_keys)
    file_has = bool(dot) and any(k.startswith(dot) for k in file_keys)
    wanted = set(model_keys)
    out = {}
    for name in file_keys:
        if file_has and not model_has and name.startswith(dot):
            out[name] = name[len(dot) :]
        elif model_has and not file_has and dot + name in wanted:
            out[name] = dot + name
        else:
            out[name] = name
    return out


def _config_and_tensors(path: Any, f: Any) -> tuple[Any, Any, list[str], Any]:
    """``(config, generation_config or None, file tensor names, get_tensor)`` of an open file:
    from its config.json attachment, or for a GGUF import without one from its GGUF metadata.
    A GGUF import's tensors go by their Hugging Face names, q/k rows in Hugging Face order
    (cmf.transformers_gguf)."""
    meta = f.metadata()
    names, get = f.keys(), f.get_tensor
    if is_gguf_import(meta):  # GGUF names and row order, whichever config comes with them
        names, get = gguf_hf_tensors(meta, names, get)
    if is_gguf_import(meta, f.attachments()):
        try:
            config = transformers.AutoConfig.for_model(**gguf_config_dict(meta))
        except (ValueError, KeyError, TypeError) as exc:
            raise CmfError(
                f"transformers cannot build a config from {os.fspath(path)}'s GGUF metadata: {exc}"
            ) from None
        return config, None, names, get
    _require_config(path, f)
    with side_files(f) as tmp:
        config = transformers.AutoConfig.from_pretrained(tmp, trust_remote_code=False)
        generation = None
        if "generation_config.json" in f.attachments():
            generation = transformers.GenerationConfig.from_pretrained(tmp)
    return config, generation, names, get


def from_pretrained(
    path: str | os.PathLike,
    model_class: Any = None,
    *,
    device: Any = None,
    limits: Limits = DEFAULT_LIMITS,
    **kwargs: Any,
) -> Any:
    """The transformers model packed in ``path`` (a .cmf file or sharded set), in eval mode.

    The class is ``model_class`` (e.g. ``transformers.AutoModelForCausalLM``, or a model class)
    or the first of config.json's ``architectures``; ``dtype``/``torch_dtype`` as transformers
    takes them (a torch dtype, its name, or "auto"); ``device`` where the model ends up; other
    keyword arguments go to the class's ``from_config`` (e.g. ``attn_implementation``).
    Weights the file lacks are initialised as transformers does and reported by a warning.
    A GGUF import (packed from a ``.gguf``, no config.json) is built as transformers builds
    the ``.gguf``: config from its metadata, float32 unless told otherwise."""
    requested = kwargs.pop("dtype", None)
    requested = kwargs.pop("torch_dtype", requested)
    with open_model(path, limits=limits) as f:
        config, generation, file_keys, get_tensor = _config_and_tensors(path, f)
        dtype = _dtype(requested, config, f)
        cls = _model_class(config, model_class)
        build = cls.from_config if hasattr(cls, "_model_mapping") else cls._from_config
        try:
            with _params_on_meta():
                model = build(config, **{_DTYPE_KW: dtype}, **kwargs)
        except (ValueError, KeyError) as exc:
            raise CmfError(
                f"transformers cannot build {getattr(cls, '__name__', cls)} from "
                f"{os.fspath(path)}'s config: {exc}"
            ) from None
        state = model.state_dict()
        names = _key_map(list(state), file_keys, getattr(model, "base_model_prefix", ""))
        loaded = {}
        for name, key in names.items():
            if key not in state:
                continue
            t = to_torch(get_tensor(name))
            want = state[key]
            if tuple(t.shape) != tuple(want.shape):
                raise CmfError(
                    f"{os.fspath(path)}: tensor {name!r} has shape {list(t.shape)}, "
                    f"{type(model).__name__} expects {list(want.shape)}"
                )
            if t.dtype != want.dtype and t.is_floating_point() and want.is_floating_point():
                t = t.to(want.dtype)
            loaded[key] = t
    model.load_state_dict(loaded, strict=False, assign=True)
    model.tie_weights()
    _init_missing(model)
    if generation is not None and getattr(model, "generation_config", None) is not None:
        model.generation_config = generation
    if device is not None:
        model.to(device)
    return model.eval()


def _init_missing(model: Any) -> None:
    """Parameters still on the meta device (absent from the file and not tied): allocated and
    initialised by the model's own ``_init_weights``, with a warning naming them."""
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if not left:
        return
    import warnings

    warnings.warn(
        f"weights of {type(model).__name__} not in the file, newly initialised: {left}",
        stacklevel=3,
    )
    for name in left:
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        old = module._parameters[leaf]
        module._parameters[leaf] = torch.nn.Parameter(
            torch.empty_like(old, device="cpu"), requires_grad=old.requires_grad
        )
        with torch.no_grad():
            try:
                model._init_weights(module)
            except Exception:  # noqa: BLE001 - a model-specific initialiser: fall back to zeros
                module._parameters[leaf].zero_()


# ----------------------------------------------------------------------------- tokenizers
def tokenizer(path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS, **kwargs: Any) -> Any:
    """``transformers.AutoTokenizer`` from the tokenizer attachments of ``path``; for a GGUF
    import without them, the ``PreTrainedTokenizerFast`` transformers' GGUF loader gives
    (vocabulary, merges, special tokens and chat template from the GGUF metadata)."""
    with open_model(path, limits=limits) as f:
        if not any(
            n.startswith(("tokenizer", "vocab", "merges", "spiece", "sentencepiece"))
            for n in f.attachments()
        ):
            meta = f.metadata()
            if is_gguf_import(meta) and "gguf.tokenizer.ggml.model" in meta:
                return gguf_tokenizer(meta, **kwargs)
            raise CmfError(
                f"{os.fspath(path)} has no tokenizer attachments (tokenizer.json, "
                "tokenizer_config.json, vocab.txt ...): pack the model directory"
            )
        with side_files(f) as tmp:
            return transformers.AutoTokenizer.from_pretrained(
                tmp, trust_remote_code=False, **kwargs
            )


# ------------------------------------------------------------------ sentence-transformers
_ST_LOCAL = threading.local()


def _patched_loader(original: Any) -> Any:
    def load(self: Any, *args: Any, **kwargs: Any) -> Any:
        model = getattr(_ST_LOCAL, "model", None)
        if model is None:  # not ours: the library's own loading
            return original(self, *args, **kwargs)
        _ST_LOCAL.model = None
        if not isinstance(getattr(type(self), "auto_model", None), property):
            self.auto_model = model  # sentence-transformers < 6 keeps it here
        return model

    load.__cmf_patch__ = True  # type: ignore[attr-defined]
    return load


def sentence_transformer(
    path: str | os.PathLike, *, device: Any = None, limits: Limits = DEFAULT_LIMITS, **kwargs: Any
) -> Any:
    """The ``sentence_transformers.SentenceTransformer`` of a packed sentence-transformers
    directory (modules.json, pooling, normalize): the transformer's weights come from the .cmf
    (built by :func:`from_pretrained`), the module configs and tokenizer from its attachments.
    ``kwargs`` go to ``from_pretrained`` (e.g. ``dtype``)."""
    try:
        import sentence_transformers
        from sentence_transformers.models import Transformer
    except ImportError as exc:
        raise CmfError(
            f"sentence_transformer needs sentence-transformers: {install_hint('transformers')}"
        ) from exc
    model = from_pretrained(path, transformers.AutoModel, limits=limits, **kwargs)
    with open_model(path, limits=limits) as f:
        if "modules.json" not in f.attachments():
            raise CmfError(
                f"{os.fspath(path)} has no modules.json attachment: not a packed "
                "sentence-transformers directory (use from_pretrained and tokenizer)"
            )
        modules = json.loads(f.get_attachment("modules.json"))
        dense = [
            m.get("path")
            for m in modules
            if isinstance(m, dict) and str(m.get("type", "")).endswith("Dense")
        ]
        if dense:
            raise CmfError(
                f"{os.fspath(path)}: Dense modules ({dense}) keep their weights in "
                "sub-directories, which cmf pack does not carry"
            )
        with side_files(f) as tmp:
            loader = Transformer._load_model
            if not getattr(loader, "__cmf_patch__", False):
                Transformer._load_model = _patched_loader(loader)  # type: ignore[method-assign]
            _ST_LOCAL.model = model
            try:
                st = sentence_transformers.SentenceTransformer(
                    tmp, device=str(device or "cpu"), local_files_only=True
                )
            finally:
                _ST_LOCAL.model = None
    return st.eval()


__all__ = ["from_pretrained", "sentence_transformer", "side_files", "tokenizer"]
