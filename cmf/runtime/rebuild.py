"""Rebuild a model from a ``.cmf`` file, or from its original, and pick the runner that runs it.

``open_model(path)`` gives one view (``ModelSource``) of a ``.cmf`` file, a sharded cmf set (its
``*.cmf.index.json`` or the directory holding it, read by cmf.shards as ``cmf.open`` reads it), a
``.safetensors`` file, a Hugging Face model directory, an ``.onnx`` file or a ``.gguf`` file:
tensor names, tensors fetched (and for a .cmf decoded) one at a time, side files (attachments
of a .cmf, of a sharded set's last shard, files of a directory: ``config.json``,
``tokenizer.json``, ``modules.json``, ``1_Pooling/config.json`` ... named by their path relative
to the model directory, as cmf.convert.hfdir stores them) and metadata. The same runners take
originals and .cmf files, so ``cmf eval`` compares like with like.

``detect_kind`` tells the model apart:

* ``onnx``: packed from ONNX (``cmf.source_format`` = ``onnx``, the ``model.onnx.skeleton``
  attachment) or an ``.onnx`` file -> cmf.runtime.onnx_runner;
* ``encoder``: ``config.json`` with a BERT-family ``model_type`` -> cmf.runtime.bert;
* ``decoder``: a ``model_type`` the Llama-family runner supports (cmf.runtime.llama), or a GGUF
  import of such an architecture.

``load_runner(path)`` returns an ``OnnxRunner``, a ``BertEncoder`` or a ``Decoder``.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import CmfError
from ..extras import install_hint
from ..format import MAGIC
from .bert import ENCODER_TYPES, BertEncoder, pipeline_from

ONNX_SKELETON = "model.onnx.skeleton"  # cmf.convert.onnx.SKELETON (not imported: onnx is heavy)


class ModelSource:
    """A model opened for running: ``keys()``, ``get_tensor(name)``, ``items()``,
    ``attachment(name)``, ``metadata``; ``origin`` is cmf, safetensors, hfdir, onnx or gguf."""

    origin = "?"

    def __init__(self, path: str) -> None:
        self.path = path
        self.metadata: dict[str, Any] = {}
        self._borrowed: ModelSource | None = None

    # tensors
    def keys(self) -> list[str]:
        raise NotImplementedError

    def get_tensor(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self.keys():
            yield name, self.get_tensor(name)

    # side files
    def _own_attachments(self) -> dict[str, Callable[[], bytes]]:
        return {}

    def _lent(self) -> dict[str, Callable[[], bytes]]:
        """The borrowed model's side files (never its ONNX graph: a graph is the model)."""
        if self._borrowed is None:
            return {}
        return {n: f for n, f in self._borrowed._own_attachments().items() if n != ONNX_SKELETON}

    def attachment_names(self) -> list[str]:
        names = list(self._own_attachments())
        return names + [n for n in self._lent() if n not in names]

    def attachment(self, name: str) -> bytes | None:
        own = self._own_attachments()
        if name in own:
            return own[name]()
        lent = self._lent()
        return lent[name]() if name in lent else None

    def json(self, name: str) -> Any:
        """Attachment ``name`` parsed as JSON; None when there is no such attachment."""
        data = self.attachment(name)
        if data is None:
            return None
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CmfError(f"{self.path}: {name} is not valid JSON ({exc})") from None

    def borrow(self, other: ModelSource) -> None:
        """Use ``other``'s own side files where this model has none of that name (a bare
        .safetensors original takes config.json and tokenizer.json from its .cmf)."""
        if other is not self:
            self._borrowed = other

    def close(self) -> None:
        pass

    def __enter__(self) -> ModelSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CmfModel(ModelSource):
    """A .cmf file, or a sharded set read as one model (cmf.shards.ShardedFile: tensors from every
    shard, metadata and attachments from the last, spec/sharding.md §3)."""

    origin = "cmf"

    def __init__(self, path: str) -> None:
        from ..shards import open_model as open_cmf

        super().__init__(path)
        self.file = open_cmf(path)  # a CmfFile, or a ShardedFile for an index or its directory
        try:
            self.metadata = self.file.metadata()
        except BaseException:
            self.file.close()
            raise

    def keys(self) -> list[str]:
        return self.file.keys()

    def get_tensor(self, name: str) -> np.ndarray:
        return self.file.get_tensor(name)

    def _own_attachments(self) -> dict[str, Callable[[], bytes]]:
        return {n: (lambda n=n: self.file.get_attachment(n)) for n in self.file.attachments()}

    def close(self) -> None:
        self.file.close()


class SafetensorsModel(ModelSource):
    """One .safetensors file, or a Hugging Face directory (its shards and side files)."""

    def __init__(self, path: str) -> None:
        from safetensors import safe_open

        from ..convert.hfdir import HFDirectorySource
        from ..convert.safetensors import SafetensorsSource

        super().__init__(path)
        if os.path.isdir(path):
            src = HFDirectorySource(path)  # finds the shards, reads the side files
            self.origin, shards, self._side = "hfdir", src.shards, src.attachments
        else:
            self.origin, shards, self._side = "safetensors", [SafetensorsSource(path)], {}
        self.metadata = dict(shards[0].metadata)
        self._shards = shards
        self._where = {name: k for k, shard in enumerate(shards) for name in shard.names()}
        self._handles = [safe_open(shard.path, framework="numpy") for shard in shards]

    def keys(self) -> list[str]:
        return list(self._where)

    def get_tensor(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise CmfError(f"no tensor named {name!r} in {self.path}")
        k = self._where[name]
        try:
            return self._handles[k].get_tensor(name)
        except Exception:  # a dtype safetensors' numpy API cannot make (fp8): cmf's reader
            for found, array in self._shards[k].items():
                if found == name:
                    return array
            raise CmfError(f"{self._shards[k].path}: cannot read tensor {name!r}") from None

    def _own_attachments(self) -> dict[str, Callable[[], bytes]]:
        return {n: (lambda d=d: d) for n, d in self._side.items()}

    def close(self) -> None:
        self._handles = []


class OnnxModel(ModelSource):
    """An original .onnx: its weights (cmf's checked reader) and its skeleton as an attachment."""

    origin = "onnx"

    def __init__(self, path: str) -> None:
        from ..convert.onnx import OnnxSource

        super().__init__(path)
        self.source = OnnxSource(path)
        self.metadata = dict(self.source.metadata)
        self._cache: dict[str, np.ndarray] | None = None

    def keys(self) -> list[str]:
        return self.source.names()

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        return self.source.items()

    def get_tensor(self, name: str) -> np.ndarray:
        if self._cache is None:
            self._cache = dict(self.source.items())
        if name not in self._cache:
            raise CmfError(f"no tensor named {name!r} in {self.path}")
        return self._cache[name]

    def _own_attachments(self) -> dict[str, Callable[[], bytes]]:
        return {n: (lambda d=d: d) for n, d in self.source.attachments.items()}


class GGUFModel(ModelSource):
    """An original .gguf: metadata as cmf keeps it, tensors dequantized by gguf-py (which the
    kept GGML blocks of a .cmf decode to exactly)."""

    origin = "gguf"

    def __init__(self, path: str) -> None:
        from ..convert.gguf import GGUFSource

        super().__init__(path)
        self.metadata = dict(GGUFSource(path).metadata)  # checks the file and its tensor types
        import gguf  # GGUFSource has just made sure it is installed

        self._gguf = gguf
        self._tensors = {t.name: t for t in gguf.GGUFReader(path, "r").tensors}

    def keys(self) -> list[str]:
        return list(self._tensors)

    def get_tensor(self, name: str) -> np.ndarray:
        if name not in self._tensors:
            raise CmfError(f"no tensor named {name!r} in {self.path}")
        t = self._tensors[name]
        shape = tuple(reversed([int(d) for d in t.shape]))
        try:
            values = self._gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        except NotImplementedError:  # integer tensors
            values = np.array(t.data)
        except Exception as exc:
            raise CmfError(
                f"{self.path}: cannot read tensor {name!r} ({type(exc).__name__}: {exc})"
            ) from None
        return np.asarray(values).reshape(shape)


def open_model(path: str | os.PathLike) -> ModelSource:
    """Open a .cmf, .safetensors, .onnx or .gguf file, a sharded cmf set (its ``*.cmf.index.json``
    or a directory holding one) or a Hugging Face model directory."""
    from ..shards import index_names, is_sharded

    path = os.fspath(path)
    if os.path.isdir(path):
        if index_names(path):  # a sharded set: cmf.shards finds its one index (several: an error)
            return CmfModel(path)
        return SafetensorsModel(path)
    if not os.path.exists(path):
        raise CmfError(f"{path}: no such file or directory")
    if is_sharded(path):  # a .json: a shard index (cmf.shards says what is wrong with a bad one)
        return CmfModel(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(MAGIC))
    except OSError as exc:
        raise CmfError(f"cannot open {path}: {exc.strerror}") from None
    if head == MAGIC or path.lower().endswith(
        ".cmf"
    ):  # the reader says what is wrong with a bad one
        return CmfModel(path)
    if head[:4] == b"GGUF":
        return GGUFModel(path)
    if path.lower().endswith(".onnx"):
        return OnnxModel(path)
    return SafetensorsModel(path)


# -- what model is it? -----------------------------------------------------------------------------
def _llama() -> Any:
    """cmf.runtime.llama, or None when this installation has no decoder runner."""
    try:
        from . import llama
    except ImportError:
        return None
    return llama


def detect_kind(src: ModelSource) -> tuple[str, dict[str, Any]]:
    """("onnx" | "encoder" | "decoder", config dict) of a model; CmfError when no runner fits."""
    if src.metadata.get("cmf.source_format") == "onnx" or ONNX_SKELETON in src.attachment_names():
        return "onnx", {}
    config = src.json("config.json")
    if config is None and src.metadata.get("cmf.source_format") == "gguf":
        arch = src.metadata.get("gguf.general.architecture")
        llama = _llama()
        if llama is None or not hasattr(llama, "from_gguf_metadata"):
            raise CmfError(f"no runner for GGUF architecture {arch!r} in this installation")
        return "decoder", dict(llama.from_gguf_metadata(src.metadata))
    if config is None:
        raise CmfError(
            f"{src.path} has no config.json, so which model it is cannot be told; pack the "
            "model directory (cmf pack dir/) so that config.json travels with the weights"
        )
    if not isinstance(config, dict):
        raise CmfError(f"{src.path}: config.json is not a JSON object")
    model_type = config.get("model_type")
    if model_type in ENCODER_TYPES:
        return "encoder", config
    llama = _llama()
    supported = sorted(ENCODER_TYPES) + sorted(getattr(llama, "SUPPORTED_MODEL_TYPES", ()))
    if llama is not None and model_type in llama.SUPPORTED_MODEL_TYPES:
        return "decoder", config
    raise CmfError(f"no runner for model_type {model_type!r} (supported: {', '.join(supported)})")


def load_tokenizer(src: ModelSource) -> Any:
    """The ``tokenizers`` tokenizer of ``tokenizer.json``; CmfError when it or the package is
    missing."""
    data = src.attachment("tokenizer.json")
    if data is None:
        raise CmfError(
            f"{src.path} has no tokenizer.json (attach it: cmf pack ... --attach tokenizer.json)"
        )
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise CmfError(
            f"running text models needs the tokenizers package: {install_hint('run')}"
        ) from None
    try:
        return Tokenizer.from_str(data.decode("utf-8"))
    except (
        BaseException
    ) as exc:  # a bare Exception for malformed files; a Rust panic (merges naming
        if (
            not isinstance(exc, Exception) and type(exc).__name__ != "PanicException"
        ):  # missing tokens)
            raise  # is a BaseException
        raise CmfError(
            f"{src.path}: tokenizer.json cannot be loaded ({type(exc).__name__}: {exc})"
        ) from None


# -- decoders: the Llama-family runner plus a tokenizer --------------------------------------------
class Decoder:
    """A causal LM (cmf.runtime.llama's ``LlamaRunner``) with its tokenizer."""

    def __init__(self, runner: Any, tokenizer: Any, config: dict[str, Any]) -> None:
        self.runner, self.tokenizer, self.config = runner, tokenizer, config
        self.engine = getattr(runner, "engine", "reference")

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise CmfError(
                "this model has no tokenizer.json (pack it with --attach tokenizer.json)"
            )
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        return list(self.tokenizer.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _eos(self) -> list[int]:
        eos = self.config.get("eos_token_id")
        if isinstance(eos, int):
            return [eos]
        return [e for e in eos if isinstance(e, int)] if isinstance(eos, list) else []

    def generate(self, ids: Sequence[int], n: int) -> list[int]:
        """Greedy: up to ``n`` new token ids after ``ids``."""
        gen = self.runner.generate
        if "eos_token_id" in inspect.signature(gen).parameters:
            out = list(gen(list(ids), n, eos_token_id=self._eos()))
        else:
            out = list(gen(list(ids), n))
        if len(out) == len(ids) + n and out[: len(ids)] == list(ids):
            out = out[len(ids) :]  # a runner that returns the prompt too
        return out

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        return np.asarray(self.runner.logits(np.asarray(ids, np.int64)), np.float32)


def has_hf_config(src: ModelSource) -> bool:
    """True when the model carries (or borrows) a ``config.json``, or is a GGUF model (its
    config comes from the GGUF metadata, cmf.transformers_gguf): transformers can build it."""
    return src.json("config.json") is not None or src.metadata.get("cmf.source_format") == "gguf"


def pick_engine(kind: str, src: ModelSource, engine: str | None) -> str | None:
    """The engine that runs a model of ``kind``: ``engine`` checked against the kind (UsageError
    for a mismatch), or for "auto" the default (text models: torch when torch and transformers
    are importable and the model has a config.json, else reference; ONNX graphs: None, i.e.
    onnxruntime when installed). None for a text model means reference. A model with neither a
    config.json nor GGUF metadata runs on the reference only."""
    from ..errors import UsageError
    from .torch_engine import ENGINES, available

    if engine not in (None, "auto") + ENGINES:
        raise UsageError(f"engine {engine!r} is not one of auto, {', '.join(ENGINES)}")
    if kind == "onnx":
        if engine == "torch":
            raise UsageError(
                f"{src.path} is an ONNX graph: it runs on --engine onnxruntime or "
                "reference, not torch"
            )
        return None if engine == "auto" else engine
    if engine == "onnxruntime":
        raise UsageError(
            f"{src.path} is a text model: it runs on --engine torch or reference, "
            "not onnxruntime (that is for ONNX graphs)"
        )
    if engine == "torch" and not has_hf_config(src):
        raise UsageError(
            f"{src.path} has no config.json (nor GGUF metadata to build one from): "
            "transformers cannot build it, so only --engine reference runs it"
        )
    if engine == "auto":
        return "torch" if available() and has_hf_config(src) else "reference"
    return engine or "reference"


def load_runner(
    source: str | os.PathLike | ModelSource,
    *,
    borrow: ModelSource | None = None,
    engine: str | None = None,
) -> Any:
    """The runner of a model: OnnxRunner, BertEncoder or Decoder (see module docstring).

    ``borrow``: another model whose side files fill in missing ones (see ModelSource.borrow).
    ``engine``: "onnxruntime" or "reference" for ONNX graphs, "torch" or "reference" for text
    models (cmf.runtime.torch_engine), "auto" for the default of each (``pick_engine``); None:
    onnxruntime when installed for ONNX graphs, the numpy reference for text models.
    The runner's ``engine`` attribute names the engine that runs it.
    """
    src = source if isinstance(source, ModelSource) else open_model(source)
    if borrow is not None:
        src.borrow(borrow)
    kind, config = detect_kind(src)
    engine = pick_engine(kind, src, engine)
    if kind == "onnx":
        from . import onnx_runner

        if isinstance(src, CmfModel):
            return onnx_runner.from_cmf(src.file, engine)
        if isinstance(src, OnnxModel):
            data = src.attachment(ONNX_SKELETON)
            model = onnx_runner.skeleton_from(data, src.path)
            return onnx_runner.OnnxRunner(onnx_runner.rebuild(model, src.items()), engine)
        raise CmfError(f"{src.path}: an ONNX graph needs a .onnx or a .cmf packed from one")
    if kind == "encoder":
        pipeline = pipeline_from(src.json)
        tokenizer = load_tokenizer(src) if src.attachment("tokenizer.json") is not None else None
        if engine == "torch":
            from .torch_engine import TorchEncoder

            return TorchEncoder.from_source(src, config, pipeline, tokenizer)
        return BertEncoder.from_tensors(src.get_tensor, src.keys(), config, pipeline, tokenizer)
    if engine == "torch":
        from .torch_engine import TorchCausalLM

        return Decoder(TorchCausalLM.from_source(src, config), _decoder_tokenizer(src), config)
    llama = _llama()
    names = set(src.keys())

    def get(name: str) -> np.ndarray:
        if name not in names:
            raise CmfError(f"the model has no tensor {name!r}")
        return src.get_tensor(name)

    if src.metadata.get("cmf.source_format") == "gguf" and src.json("config.json") is None:
        if not hasattr(llama.LlamaRunner, "from_gguf"):
            raise CmfError("this installation's decoder runner cannot run GGUF imports")
        runner = llama.LlamaRunner.from_gguf(get, src.metadata)
    else:
        runner = llama.LlamaRunner.from_tensors(get, config)
    return Decoder(runner, _decoder_tokenizer(src), config)


def _decoder_tokenizer(src: ModelSource) -> Any:
    """tokenizer.json's tokenizer, else a GGUF model's own (built on first use), else None."""
    if src.attachment("tokenizer.json") is not None:
        return load_tokenizer(src)
    if "gguf.tokenizer.ggml.model" in src.metadata:
        from .gguf_tokenizer import LazyTokenizer

        return LazyTokenizer(src.metadata)
    return None


def kind_of(runner: Any) -> str:
    from .onnx_runner import OnnxRunner

    if isinstance(runner, OnnxRunner):
        return "onnx"
    return "encoder" if isinstance(runner, BertEncoder) else "decoder"
