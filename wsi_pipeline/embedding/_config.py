"""``EmbedConfig``: the options of the ``embed`` stage (``configs/embed.yaml`` mirrors these defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["EmbedConfig", "embed_stage_name"]


@dataclass
class EmbedConfig:
    """Options of ``embed_stores``/``embed_slide``.

    Parameters
    ----------
    encoder
        Preset name (``wsi-pipeline encoders``), a timm model name or ``hf-hub:ORG/NAME``.
    weights
        ``None``: the preset's default weights (Hugging Face repository or cache); ``"random"``; a local
        ``.pth``/``.bin``/``.safetensors`` file; or ``hf-hub:ORG/NAME``.
    weights_remap
        ``None``: the preset's rule; ``"auto"`` (match names) or ``"by_order"`` (pair tensors in order).
    device
        ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    precision
        ``auto``: the preset's recommendation on CUDA (bf16 falls back to fp16 where unsupported), fp32 on CPU.
        ``bf16``/``fp16`` run under autocast on either device; ``fp32`` disables it.
    batch_size
        Tiles per forward pass.
    num_workers
        DataLoader processes reading and decoding tiles; ``None``: from the CPUs this process may use
        (``SLURM_CPUS_PER_TASK`` or the affinity mask), leaving room for the main process.
    prefetch_factor
        Batches each worker reads ahead, so the encoder never waits for JPEG decoding.
    compile
        ``torch.compile`` the encoder (worth it for long runs on CUDA).
    channels_last
        Run convolutions in NHWC memory format (faster with tensor cores).
    dtype
        Stored dtype of the embeddings.
    offline
        Never touch the network (also set by ``HF_HUB_OFFLINE=1``).
    input_size
        Override the preset's input size (``None``: the preset's).
    seed
        Seed of random-init weights (``weights: random``), so such runs are reproducible.
    torch_threads
        Intra-op threads of the encoder on CPU; ``None``: the CPUs left after the reader workers.
    """

    encoder: str = "resnet50_trunc"
    weights: str | None = None
    weights_remap: Literal["auto", "by_order"] | None = None
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    batch_size: int = 64
    num_workers: int | None = None
    prefetch_factor: int = 4
    compile: bool = False
    channels_last: bool = True
    dtype: Literal["float16", "float32"] = "float16"
    offline: bool = False
    input_size: int | None = None
    seed: int = 0
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 or null, got {self.num_workers}")
        if self.prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {self.prefetch_factor}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ValueError(f"device {self.device!r}: expected auto, cpu, cuda or cuda:N")


def embed_stage_name(enc_name: str) -> str:
    """Stage name of one encoder's run: manifests ``manifests/embed-<enc>.csv``, locks ``.locks/embed-<enc>/``."""
    return f"embed-{enc_name}"
