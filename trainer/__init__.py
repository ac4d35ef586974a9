"""trainer: exact checkpoint/resume runtime used inside the job process.

Kept import-light: nothing here imports torch at package import time, so the daemon may use
the torch-free pieces (trainer.format).
"""
