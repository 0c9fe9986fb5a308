"""The precisions one `llmserve eval` run compares, each a dtype plus a quantization."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from llmserve.quant.config import QuantConfig


@dataclass(frozen=True)
class EvalSetting:
    dtype: str
    quant: QuantConfig

    @property
    def label(self) -> str:
        if not self.quant.enabled:
            return self.dtype
        return f"{self.quant.describe()} ({self.dtype})"

    def engine_kwargs(self) -> dict:
        quant = self.quant
        return dict(dtype=self.dtype, quantization=quant.method, quant_group_size=quant.group_size,
                    quant_skip=list(quant.skip))

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "quant": asdict(self.quant)}

    @classmethod
    def from_dict(cls, data: dict) -> EvalSetting:
        quant = data["quant"]
        return cls(data["dtype"], QuantConfig(quant["method"], quant["group_size"], tuple(quant["skip"])))


BASELINE = EvalSetting("float32", QuantConfig())


def parse_settings(methods: str, dtype: str, group_size: int | None = None,
                   skip: str | None = None) -> list[EvalSetting]:
    """The fp32 baseline first, then one row per item of `methods` (comma-separated) in `dtype`.

    `none` is the unquantized model in `dtype`; `+` adds modules an item keeps in full precision,
    so `int4+lm_head+layers.0` is a mixed-precision row. `skip` applies to every quantized item.
    """
    settings = [BASELINE]
    shared = [s.strip() for s in (skip or "").split(",") if s.strip()]
    for item in filter(None, (part.strip().lower() for part in methods.split(","))):
        method, *item_skip = item.split("+")
        if method == "none" and item_skip:
            raise ValueError(f"{item!r}: an unquantized setting has nothing to skip")
        quant = QuantConfig.create(method, group_size if method == "int4" else None,
                                   [*shared, *item_skip] if method != "none" else None)
        setting = EvalSetting(dtype, quant)
        if setting not in settings:
            settings.append(setting)
    return settings
