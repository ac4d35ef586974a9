"""The cloud: the offload backends (offload/: local, modal, ssh, what carries the job and the body
that runs it remotely) and the offload port the Supervisor's remote run calls (offloader:
backends in order, the launch journal, credentials refused). It may import daemon.job (the
control file, adoption, progress) and daemon.policy; never core, the GPU, the night, web,
service or commands.
"""
