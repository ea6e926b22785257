"""The CLI's exit codes: 0 done, 1 the run failed, 2 bad input, 130 stopped with Ctrl-C
(143 with SIGTERM, 129 with SIGHUP: 128 + the signal, as a shell reports it), 141 its
output's reader went away (128 + SIGPIPE, as other Unix tools end)."""

import signal

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141

# Each means "stop cleanly, keep what you have": Ctrl-C, a supervisor's or `kill`'s
# SIGTERM, and SIGHUP when the terminal closes.
STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}
