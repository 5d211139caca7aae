"""Typed, validated configs loaded from YAML.

Every config is a pydantic model with unknown keys forbidden and strict types, so a typo or a
wrong type is an error naming the key and the file instead of a silently ignored setting.
A method's own options live under `method:` and are validated by the method's `Options` model; the
search config that holds them is `hwnas.methods.SearchConfig`, so this module knows no method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import torch
import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from hwnas.errors import ConfigError
from hwnas.limits import MAX_CELL_NODES, MAX_CHANNELS, MAX_DEPTH
from hwnas.runtimes import DEFAULT_RUNTIME, export_formats, file_runtime_names, get_runtime

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AugmentConfig(Strict):
    crop_padding: int = Field(0, ge=0, description="random crop with this zero padding (0: off)")
    flip: bool = Field(False, description="random horizontal flip")
    cutout: int = Field(0, ge=0, description="cutout square side in pixels (0: off)")


class DataConfig(Strict):
    dataset: Literal["digits", "fashion-mnist", "cifar10", "imagenet"] = "digits"
    root: str | None = Field(None, description="dataset folder; each dataset has a default")
    download: bool = False
    image_size: int | None = Field(None, gt=0, description="input side; each dataset has a default")
    channels: Literal[3] | None = Field(None, description="3: repeat a gray dataset's channel (for 3-channel spaces)")
    train_subset: int | None = Field(None, gt=1, description="use only this many training images")
    augment: AugmentConfig = AugmentConfig()


class SearchDataConfig(DataConfig):
    train_portion: float = Field(0.5, gt=0.0, lt=1.0, description="share of train set for weights")


class SGDConfig(Strict):
    lr: float = Field(0.025, gt=0.0)
    lr_min: float = Field(0.001, ge=0.0, description="end of the cosine schedule")
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(3e-4, ge=0.0)
    nesterov: bool = False


class AdamConfig(Strict):
    lr: float = Field(3e-4, gt=0.0)
    betas: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field([0.5, 0.999], min_length=2, max_length=2)
    weight_decay: float = Field(1e-3, ge=0.0)


class CellSupernetConfig(Strict):
    init_channels: int = Field(16, gt=0, le=MAX_CHANNELS)
    layers: int = Field(8, ge=3, le=MAX_DEPTH, description="cells; reductions at layers//3 and 2*layers//3")
    nodes: int = Field(4, gt=0, le=MAX_CELL_NODES, description="intermediate nodes per cell")
    stem_multiplier: int = Field(3, gt=0, le=MAX_CELL_NODES)


SYNC_BN = ("under torchrun: batch-norm statistics over the global batch, so N processes compute what one "
           "does; off: each rank normalises its own shard, as the multi-GPU releases did")


class SearchLoopConfig(Strict):
    epochs: int = Field(50, gt=0)
    batch_size: int = Field(64, gt=0)
    order: Literal["arch_first", "weights_first"] = "arch_first"
    weight_optimizer: SGDConfig = SGDConfig()
    arch_optimizer: AdamConfig = AdamConfig()
    grad_clip: float | None = Field(5.0, gt=0.0, description="weights' gradient norm clip")
    arch_grad_clip: float | None = Field(None, gt=0.0)
    arch_start_epoch: int = Field(0, ge=0, description="epochs of weight-only warm-up")
    alternate: Literal["step", "epoch"] = Field(
        "step", description="step: an architecture step beside every weight step; epoch: a whole epoch of "
                            "weight steps, then as many architecture steps (the DenseNAS release)")
    steps_per_epoch: int | None = Field(None, gt=0, description="cap on weight steps per epoch")
    # NHWC makes depthwise convs ~1.4x faster on CPU, but oneDNN's backward of a 1x1 stride-2 conv on
    # channels_last inputs with fewer than 8 (AVX2) or 16 (AVX-512) input channels crashes or hangs
    # (oneDNN issue #6035), so it is off unless a recipe's widths are safely above that.
    channels_last: bool = Field(False, description="NHWC tensors: faster depthwise convs on CPU")
    sync_bn: bool = Field(False, description=SYNC_BN)


def check_device(value: str) -> str:
    try:
        torch.device(value)
    except RuntimeError as exc:
        raise ValueError(f"not a torch device: {value!r}") from exc
    return value


class MethodConfig(Strict):
    """Base of every method's options; `name` picks the method."""

    name: str


class ModelConfig(Strict):
    """The final network. Cell genotypes: the layout, width and depth below; routed (DenseNAS)
    architectures take their blocks from their space, and only `dropout` applies."""

    layout: Literal["cifar", "imagenet"] = Field("cifar", description="cell networks: NetworkCIFAR or NetworkImageNet")
    init_channels: int = Field(36, gt=0, le=MAX_CHANNELS)
    layers: int = Field(20, ge=3, le=MAX_DEPTH)
    auxiliary: bool = Field(True, description="cell networks: auxiliary head after the second reduction")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="routed networks: dropout before the classifier")
    zero_init_residual: bool = Field(
        False, description="routed networks: the last BN of each residual MBConv starts at zero, so a deep "
                           "network starts as its shallow path of head layers (Goyal et al. 2017)")


class TrainLoopConfig(Strict):
    epochs: int = Field(600, gt=0)
    batch_size: int = Field(96, gt=0)
    optimizer: SGDConfig = SGDConfig(lr=0.025, lr_min=0.0)
    schedule: Literal["cosine", "exponential"] = Field(
        "cosine", description="cosine from lr to lr_min, or lr * lr_decay**epoch (DARTS ImageNet)")
    lr_decay: float = Field(0.97, gt=0.0, le=1.0)
    warmup_epochs: int = Field(0, ge=0, description="epochs over which the rate rises linearly (per step) to the schedule's")
    grad_clip: float | None = Field(5.0, gt=0.0)
    auxiliary_weight: float = Field(0.4, ge=0.0)
    drop_path_prob: float = Field(0.2, ge=0.0, lt=1.0, description="cell networks: grows linearly to this")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    valid_portion: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of the training set held out to pick the best epoch; "
                                         "0: evaluate on the test set each epoch, as the releases do")
    steps_per_epoch: int | None = Field(None, gt=0, description="cap on steps per epoch")
    channels_last: bool = Field(False, description="NHWC tensors (see search.channels_last)")
    sync_bn: bool = Field(False, description=SYNC_BN)


class TrainConfig(Strict):
    seed: int = 0
    device: str = "cpu"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainLoopConfig = TrainLoopConfig()

    @model_validator(mode="after")
    def _warmup_within_training(self):
        if self.train.warmup_epochs >= self.train.epochs:
            raise ValueError(f"train.warmup_epochs ({self.train.warmup_epochs}) must be less than train.epochs "
                             f"({self.train.epochs})")
        return self

    _device = field_validator("device")(lambda value: check_device(value))


class StageConfig(Strict):
    config: str = Field(description="the stage's recipe YAML")
    set: list[str] = Field([], description="overrides, as with --set")


class RunExportConfig(Strict):
    formats: list[str] = Field(["ort"], description="files written beside the deployed runtime's (hwnas export "
                                                    "--format), ONNX Runtime's mobile form by default")
    quantize: Literal["int8"] | None = None
    max_accuracy_drop: float = Field(1.0, ge=0.0, lt=100.0, allow_inf_nan=False,
                                     description="int8: the accuracy it may lose (points); the cheapest remedy within it is kept")
    qat_epochs: int = Field(2, ge=0, le=100, description="int8: epochs of quantization-aware fine-tuning, the remedy "
                                                        "after post-training quantization (0: not tried)")
    dynamic_batch: bool = False

    @model_validator(mode="before")
    @classmethod
    def _ort_became_a_format(cls, data: Any) -> Any:
        if isinstance(data, dict) and "ort" in data:
            raise ValueError("`ort` is now one of the formats: `formats: [ort]` (or `[]` for none)")
        return data

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, formats: list[str]) -> list[str]:
        known = export_formats()
        unknown = [fmt for fmt in formats if fmt not in known]
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}; hwnas exports {', '.join(known)}")
        return formats

    @model_validator(mode="after")
    def _drop_needs_int8(self) -> "RunExportConfig":
        for key in ("max_accuracy_drop", "qat_epochs"):
            if key in self.model_fields_set and self.quantize is None:
                raise ValueError(f"export.{key} applies to an int8 export: set export.quantize: int8 too")
        return self


class RunConfig(Strict):
    """`hwnas run`: check the shipped table here (or profile), search under a budget, train, export and verify."""

    @field_validator("runtime", check_fields=False)
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        if value not in file_runtime_names():
            raise ValueError(f"runtime {value!r}: `hwnas run` deploys to {', '.join(file_runtime_names())}")
        return value

    table: str = Field(description="shipped latency table: used when it was profiled on a host like this one and "
                                   "agrees with its calibration networks timed here, rescaled when off by one "
                                   "factor, otherwise the space is profiled first")
    budget_ms: float = Field(gt=0.0, allow_inf_nan=False, description="latency budget of the derived network")
    runtime: str = Field(DEFAULT_RUNTIME, description="the runtime the network is deployed with: its latency table (the "
                                            "shipped one when its runtime matches, else one shipped for it, else "
                                            "profiled here), its exported file, its measured latency")
    search: StageConfig
    train: StageConfig
    export: RunExportConfig = RunExportConfig()

    @model_validator(mode="after")
    def _int8_where_the_runtime_quantizes(self) -> "RunConfig":
        if self.export.quantize and self.export.quantize not in get_runtime(self.runtime).deploy_precisions:
            raise ValueError(f"export.quantize: {self.export.quantize}: the {self.runtime} runtime has no "
                             f"{self.export.quantize} files; deploy int8 with a runtime that quantizes "
                             f"({', '.join(n for n in file_runtime_names() if self.export.quantize in get_runtime(n).deploy_precisions)})")
        return self


ModelT = TypeVar("ModelT", bound=BaseModel)


def shipped_root() -> Path:
    """Where the shipped recipes, spaces and tables are: the checkout's top folder, or in an installed
    wheel the package's `shipped/` folder (pyproject.toml puts `configs/` and `latency_tables/` there)."""
    installed = Path(__file__).resolve().parent / "shipped"
    return installed if (installed / "configs").is_dir() else PROJECT_ROOT


def resolve_path(path: str | Path) -> Path:
    """A path as given, else relative to the shipped files (so `configs/...` works from anywhere)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    candidate = shipped_root() / path
    return candidate if candidate.exists() else path


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`["search.epochs=3", "data.augment.flip=false"]` -> nested dict, values parsed as YAML."""
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, for example --set search.epochs=3")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = overrides
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return overrides


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in exc.errors():
        where = (prefix + ".".join(str(p) for p in err["loc"])).rstrip(".") or "(top level)"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "value_error":  # a validator's own sentence: it says what is wrong and what to do
            message = message.removeprefix("Value error, ")
        elif err["type"] not in ("extra_forbidden", "missing") and "input" in err:
            shown = repr(err["input"])
            message += f" (got {shown[:60]})"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = resolve_path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a config file (.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        # _UniqueKeyLoader is yaml.SafeLoader with duplicate keys refused: no python tags, no code
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def build_config(model: type[ModelT], data: dict[str, Any], source: str, overrides: list[str] | None = None) -> ModelT:
    data = _merge(data, parse_overrides(overrides))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc)}") from None
    except ConfigError as exc:  # raised by a nested lookup (unknown method)
        raise ConfigError(f"{source}: {exc}") from None


def load_config(model: type[ModelT], path: str | Path, overrides: list[str] | None = None) -> ModelT:
    """Load `path` into `model`, applying `--set` overrides first; errors name the key and file."""
    return build_config(model, read_yaml(path), str(resolve_path(path)), overrides)


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    return config.model_dump(mode="json")
