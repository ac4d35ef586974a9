"""Offload backends: where the job goes when the local GPU can't finish the night (local, modal,
ssh), what travels with it (carry, sync) and the body that runs it remotely (remote). It may
import daemon.job (the control file, adoption, process checks) and daemon.policy; never the
offload port above it (daemon.cloud.offloader) nor anything else of daemon/."""

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
