"""Errors the binaries turn into one line, and the binaries' exit statuses (no TensorFlow import).

| status | meaning |
|---|---|
| 0 | finished |
| 2 | a bad flag or input, or (train) a non-finite loss; one line on stderr names it |
| 74 | a checkpoint, export or run file could not be written (e.g. no space left); one line names the path; the previous checkpoint or export is intact |
| 75 | (train) stopped by SIGTERM or SIGINT after checkpointing the step it was in; run the same command again to continue |
"""

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_WRITE_FAILED = 74   # sysexits.h EX_IOERR
EXIT_PREEMPTED = 75      # sysexits.h EX_TEMPFAIL: "try again later"


class WriteError(Exception):
  """A checkpoint, export or run file could not be written; the message is one line naming the
  path and what is left intact."""
