"""``EmbedRuntime``: an encoder on its device with the resolved precision, and how the CPUs are shared out."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .._memory import keep_freed_memory
from ..batch import available_cpus
from ..device import resolve_device
from ..encoders import Encoder, create_encoder
from ..errors import ConfigError
from ._config import EmbedConfig
from ._reader import to_model_input

__all__ = ["EmbedRuntime", "load_encoder", "resolve_num_workers", "resolve_precision"]

log = logging.getLogger(__name__)

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}

# On the CPU the encoder runs a batch CPU_CHUNK tiles at a time. A whole batch's activations (64 tiles through
# EfficientNet-Lite0: ~100 MB per layer) are beyond glibc's mmap threshold, so every layer of every batch mapped fresh
# pages and unmapped them again: profiled (perf record -e page-faults) on `predict` of a raw slide, 56% of the
# page faults were in batch norm and fill kernels writing new activations, and system time was 0.65x user time.
# Chunks of 4 tiles keep them in the heap and in cache: 256 tiles went from 21.6 s to 6.1 s of CPU, 6.2 M to
# 0.15 M page faults (benchmarks/bench_predict.py). The embeddings are those of the whole batch, tile by tile.
# WSI_PIPELINE_CPU_CHUNK=0 restores whole batches and glibc's defaults (the benchmark's "before"). The malloc
# settings are made when tiles are embedded (``cpu_threads``), and on its exit the memory they kept goes back: kept
# past the embedding, the encoder's freed memory stayed in the process (165 MB after embedding a raw slide in
# `predict`) and what came next (the fold models, the heatmap) was allocated on top of it.
CPU_CHUNK = int(os.environ.get("WSI_PIPELINE_CPU_CHUNK", "4"))


def resolve_precision(precision: str, device: torch.device, recommended: str) -> str:
    """``bf16``/``fp16``/``fp32`` actually used: ``auto`` is the preset's choice on CUDA and fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        precision = recommended
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16; using fp16 autocast instead")
        return "fp16"
    if precision not in _AUTOCAST:
        raise ConfigError(f"precision {precision!r}: expected auto, bf16, fp16 or fp32")
    return precision


def resolve_num_workers(config: EmbedConfig, device: torch.device, environ: dict[str, str] | None = None) -> int:
    """Reader processes: explicit, else the usable CPUs minus the main process (on CPU, half go to the encoder)."""
    if config.num_workers is not None:
        return config.num_workers
    cpus = available_cpus(environ)
    if device.type == "cuda":
        return max(0, min(cpus - 1, 16))
    return max(0, min(cpus // 2, 8))


def load_encoder(config: EmbedConfig) -> Encoder:
    """The encoder named by ``config`` with its weights (``create_encoder`` with the config's options)."""
    return create_encoder(
        config.encoder,
        weights=config.weights,
        offline=config.offline,
        seed=config.seed,
        weights_remap=config.weights_remap,
        input_size=config.input_size,
    )


@dataclass
class EmbedRuntime:
    """An encoder placed on its device with the resolved precision, ready to embed batches of ``uint8`` tiles."""

    encoder: Encoder
    device: torch.device
    precision: str
    num_workers: int
    config: EmbedConfig
    model: Any
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def create(cls, encoder: Encoder, config: EmbedConfig) -> EmbedRuntime:
        device = resolve_device(config.device)
        precision = resolve_precision(config.precision, device, encoder.precision)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every batch has the same shape: pick the fastest kernels once
        model = encoder.model.to(device).eval()
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if config.compile:
            model = torch.compile(model, dynamic=False)
        spec = encoder.config
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        workers = resolve_num_workers(config, device)
        return cls(encoder, device, precision, workers, config, model, mean, std)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = _AUTOCAST[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """``uint8`` tiles (B, S, S, 3) on any device -> float32 embeddings (B, D) on the runtime's device."""
        n = len(tiles)
        tiles = tiles.to(self.device, non_blocking=True)
        if self.config.compile and n < self.config.batch_size:
            # A fixed batch shape avoids recompiling for the last, shorter batch.
            pad = tiles.new_zeros((self.config.batch_size - n, *tiles.shape[1:]))
            tiles = torch.cat([tiles, pad])
        channels_last = self.config.channels_last
        with torch.inference_mode(), self.autocast():
            if self.device.type == "cpu" and not self.config.compile and CPU_CHUNK > 0:
                # Each chunk made into model input on its own: the whole batch's float copies (2 x 38 MB for 64
                # tiles of 224 px) stayed in the heap for the whole embedding.
                chunks = tiles.split(CPU_CHUNK)
                out = torch.cat(
                    [self.model(to_model_input(c, self.mean, self.std, channels_last=channels_last)) for c in chunks]
                )  # (B, D)
            else:
                out = self.model(to_model_input(tiles, self.mean, self.std, channels_last=channels_last))  # (B, D)
            return out[:n].float()

    @contextlib.contextmanager
    def cpu_threads(self) -> Iterator[int]:
        """On CPU, give the encoder the CPUs the readers leave free (never more than this process may use) and keep
        the memory it frees for its next batch (``keep_freed_memory``); yields the encoder's thread count."""
        if self.device.type != "cpu":
            yield torch.get_num_threads()
            return
        before = torch.get_num_threads()
        threads = self.config.torch_threads or max(1, available_cpus() - self.num_workers)
        torch.set_num_threads(threads)
        try:
            with keep_freed_memory() if CPU_CHUNK > 0 else contextlib.nullcontext():
                yield threads
        finally:
            torch.set_num_threads(before)
