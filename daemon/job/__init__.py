"""The job and its files: one real job process and its tree (jobproc), the job port that runs one
attempt at a time (jobrunner), the control file (control), progress.jsonl and output-line
progress (progress, outputprogress), what the records say (status: JobFacts), how the job ended
(classify), its checkpoints: namespace, adoption, --resume-from and a full disk (ckptns, adopt,
resume, diskfull) and those set aside after a divergence (quarantine, suspects), and its log
(joblog). It is the bottom of daemon/: it may import trainer/'s torch-free modules (protocol,
format) and the standard library, and nothing else of daemon/.
"""
