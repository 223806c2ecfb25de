"""modelhaul: fast, resumable, verified downloads of ML model files.

The public API; everything else is internal and may change.
"""

from .availability import AvailabilityEvent, ModelAvailability, ModelState, ModelStatus
from .config import (
    DownloadConfig,
    ManagerConfig,
    RateLimit,
    RetryPolicy,
    SegmentPolicy,
    Timeouts,
)
from .engine import Downloader
from .errors import (
    Cancelled,
    DiskFull,
    HTTPStatusError,
    IntegrityError,
    InvalidInput,
    ModelhaulError,
    NetworkError,
    PermissionDenied,
    RetriesExhausted,
    StallTimeout,
    TransferError,
)
from .events import Progress, Result, State, TaskEvent
from .inventory import Inventory, StoredModel
from .manager import DownloadHandle, DownloadManager, TaskInfo
from .models import ModelPuller, PullResult, VerifyReport
from .sources.hf import HubSource, parse_hf_uri
from .sources.manifest import load_manifest_file, parse_manifest_text
from .sources.model import ModelFile, ModelSpec
from .statedb import StateDB
from .sync import SyncDownloadManager, download

__version__ = "0.1.0"

__all__ = [
    "AvailabilityEvent",
    "Cancelled",
    "DiskFull",
    "DownloadConfig",
    "DownloadHandle",
    "DownloadManager",
    "Downloader",
    "HTTPStatusError",
    "HubSource",
    "IntegrityError",
    "InvalidInput",
    "Inventory",
    "ManagerConfig",
    "ModelAvailability",
    "ModelFile",
    "ModelPuller",
    "ModelSpec",
    "ModelState",
    "ModelStatus",
    "ModelhaulError",
    "NetworkError",
    "PermissionDenied",
    "Progress",
    "PullResult",
    "RateLimit",
    "Result",
    "RetriesExhausted",
    "RetryPolicy",
    "SegmentPolicy",
    "StallTimeout",
    "State",
    "StateDB",
    "StoredModel",
    "SyncDownloadManager",
    "TaskEvent",
    "TaskInfo",
    "Timeouts",
    "TransferError",
    "VerifyReport",
    "download",
    "load_manifest_file",
    "parse_hf_uri",
    "parse_manifest_text",
]
