"""Job-side hook of the simulated GPU (owned by the sensors/simgpu work).

Contract: ``on_step()`` is called by trainer.runtime at every step boundary. It is a no-op
unless $NIGHTSHIFT_SIM_GPU is set; under the simulated GPU it marks the device busy and, when the
simulated GPU has reset, prints the ROCm runtime's dying message and aborts like a real job.
"""


def on_step() -> None:
    return None
