"""nightshiftd: the service that supervises the training job. It never imports torch. Its
packages, lowest first, each importing only packages below it (its own ``__init__`` says what it
owns and may import): job, policy, gpu (whose resets/ reads state), state, night, cloud, web,
core, service, commands; ``daemon.cli``, the ``nightshift`` command, may import any of them.
"""
