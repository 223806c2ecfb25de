"""modelhaul: fast, resumable, verified downloads of ML model files.

The public API; everything else is internal and may change.
Imports are lazy (PEP 562): ``import modelhaul`` stays cheap, so the command line starts fast
and pulls in huggingface_hub or the server only when a command needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import (
        DownloadConfig,
        ManagerConfig,
        RateLimit,
        RetryPolicy,
        SegmentPolicy,
        Timeouts,
        default_state_dir,
    )
    from .engine.downloader import Downloader
    from .errors import (
        Cancelled,
        Category,
        DiskFull,
        HTTPStatusError,
        IntegrityError,
        InvalidInput,
        ModelhaulError,
        NetworkError,
        NetworkKind,
        PermissionDenied,
        RetriesExhausted,
        StallTimeout,
        TransferError,
    )
    from .events import (
        EventKind,
        FileEvent,
        FilePhase,
        Phase,
        Progress,
        Result,
        State,
        TaskEvent,
    )
    from .manager.downloads import DownloadManager
    from .manager.handle import DownloadHandle
    from .manager.tasks import TaskInfo
    from .sources.hf import HubSource, parse_hf_uri
    from .sources.manifest import load_manifest_file, parse_manifest_text
    from .sources.model import ModelFile, ModelSpec
    from .store.availability import AvailabilityEvent, ModelAvailability, ModelState, ModelStatus
    from .store.inventory import Inventory, StoredModel
    from .store.pull import ModelPuller, PullResult
    from .store.statedb import StateDB
    from .store.verify import VerifyReport
    from .sync import SyncDownloadManager, download

_EXPORTS: dict[str, str] = {
    "AvailabilityEvent": "store.availability",
    "Cancelled": "errors",
    "Category": "errors",
    "DiskFull": "errors",
    "DownloadConfig": "config",
    "DownloadHandle": "manager.handle",
    "DownloadManager": "manager.downloads",
    "Downloader": "engine.downloader",
    "EventKind": "events",
    "FileEvent": "events",
    "FilePhase": "events",
    "HTTPStatusError": "errors",
    "HubSource": "sources.hf",
    "IntegrityError": "errors",
    "InvalidInput": "errors",
    "Inventory": "store.inventory",
    "ManagerConfig": "config",
    "ModelAvailability": "store.availability",
    "ModelFile": "sources.model",
    "ModelPuller": "store.pull",
    "ModelSpec": "sources.model",
    "ModelState": "store.availability",
    "ModelStatus": "store.availability",
    "ModelhaulError": "errors",
    "NetworkError": "errors",
    "NetworkKind": "errors",
    "PermissionDenied": "errors",
    "Phase": "events",
    "Progress": "events",
    "PullResult": "store.pull",
    "RateLimit": "config",
    "Result": "events",
    "RetriesExhausted": "errors",
    "RetryPolicy": "config",
    "SegmentPolicy": "config",
    "StallTimeout": "errors",
    "State": "events",
    "StateDB": "store.statedb",
    "StoredModel": "store.inventory",
    "SyncDownloadManager": "sync",
    "TaskEvent": "events",
    "TaskInfo": "manager.tasks",
    "Timeouts": "config",
    "TransferError": "errors",
    "VerifyReport": "store.verify",
    "default_state_dir": "config",
    "download": "sync",
    "load_manifest_file": "sources.manifest",
    "parse_hf_uri": "sources.hf",
    "parse_manifest_text": "sources.manifest",
}

__version__ = "0.1.0"

__all__ = [
    "AvailabilityEvent",
    "Cancelled",
    "Category",
    "DiskFull",
    "DownloadConfig",
    "DownloadHandle",
    "DownloadManager",
    "Downloader",
    "EventKind",
    "FileEvent",
    "FilePhase",
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
    "NetworkKind",
    "PermissionDenied",
    "Phase",
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
    "default_state_dir",
    "download",
    "load_manifest_file",
    "parse_hf_uri",
    "parse_manifest_text",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'modelhaul' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
