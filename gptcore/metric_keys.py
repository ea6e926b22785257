"""The names of the metrics the trainer reports, one place for the trainer, the database
bridge, the progress bar and the pages.

A metric is stored in long format under its key, so a new key needs no migration; a key
spelt twice differently would silently be two curves, so everyone imports these.
"""

TRAIN_LOSS = "train/loss"            # the loss of each optimizer step's batch
TRAIN_EVAL_LOSS = "train/eval_loss"  # the loss on held-out training batches at an evaluation
VAL_LOSS = "val/loss"                # the loss on the validation set at an evaluation
VAL_PPL = "val/ppl"                  # exp(val/loss)
EVAL_TIME_MS = "eval_time_ms"        # milliseconds an evaluation took, its text sample included
LR = "lr"                            # the learning rate a step used
GRAD_NORM = "grad_norm"              # the gradient's norm before clipping
TOKENS_PER_SEC = "tokens_per_sec"    # throughput over the last logging interval
STEP_TIME_MS = "step_time_ms"        # milliseconds per step over that interval
TOKENS_SEEN = "tokens_seen"          # training tokens consumed so far
MFU = "mfu"                          # model FLOPs utilisation, where the device's peak is known
EVAL_TIME_MS = "eval_time_ms"          # milliseconds an evaluation took, its text sample included
