"""The GPU: its sensors (sensors/), resets seen in the kernel's log and the reset log (resets/),
whether resets are heat-correlated (diagnosis), the clock cap and the governor that moves it
(clockcap, governor_io, governing), the probe that shows the card runs work again (probe) and
the simulated 780M (simgpu). Its parts stand at three heights: clockcap, simgpu and probe
import nothing of daemon/ (state/ reads simgpu's parameter names); sensors/, diagnosis,
governor_io and governing may import daemon.policy; resets/ may also import daemon.state (the
config's reset source names). Never core, night, cloud, web, service or commands.
"""
