"""Offload backends: where the job goes when the local GPU can't finish the night."""

from daemon.cloud.offload.base import (
                                 JobSpec,
                                 OffloadAuthError,
                                 OffloadBackend,
                                 OffloadError,
                                 RemoteStatus,
                                 UploadResult,
)

__all__ = ["JobSpec", "OffloadAuthError", "OffloadBackend", "OffloadError", "RemoteStatus",
           "UploadResult"]
