"""What a stage Job's container runs (`siked stage …`); see `siked_jobs.stage`.

The exit codes are the contract with the operator, which imports them from here:
a permanent failure fails the run at once, anything else is retried up to the
run's `backoffLimit`.
"""

EXIT_OK = 0
EXIT_PERMANENT = 2   # retrying cannot help: invalid spec, missing inputs or datasets, bad arguments
EXIT_RETRYABLE = 75  # EX_TEMPFAIL: storage or network trouble; the next attempt may succeed

# Kubernetes keeps at most 4096 bytes of a container's termination message.
TERMINATION_MESSAGE_LIMIT = 4096
