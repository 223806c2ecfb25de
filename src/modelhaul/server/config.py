"""The service's configuration: a frozen value the CLI builds at its edge (and tests build
directly), read by the service and by the job runner alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import DownloadConfig, ManagerConfig
from ..sources.hf import DEFAULT_ENDPOINT


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    """Where the service keeps things and how it downloads; read by the CLI at its edge.

    ``download_dir`` is the only place URL downloads may land; ``store_root`` is the Hugging
    Face cache the models go to.
    """

    download_dir: Path
    store_root: Path
    state_dir: Path
    store_db: Path
    queue_db: Path | None = None  # default: state_dir / "server-queue.sqlite"
    hf_endpoint: str = DEFAULT_ENDPOINT
    hf_token: str | None = None
    # The Hub the mirror under /hf relays and fetches from (None: hf_endpoint). The mirror never
    # sends hf_token: each caller's own Authorization goes upstream.
    mirror_upstream: str | None = None
    symlinks: bool = True
    manager: ManagerConfig = field(default_factory=ManagerConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    max_finished: int = 200

    def __post_init__(self) -> None:
        if self.max_finished < 0:
            raise ValueError(f"max_finished must be >= 0, got {self.max_finished!r}")

    @property
    def upstream(self) -> str:
        """The mirror's upstream Hub: ``mirror_upstream``, else ``hf_endpoint``."""
        return (self.mirror_upstream or self.hf_endpoint).rstrip("/")

    @property
    def queue_path(self) -> Path:
        return self.queue_db or self.state_dir / "server-queue.sqlite"
