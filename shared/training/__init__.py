"""Training: recipe -> model + data -> one Trainer (build), the stage entry point (train), guards, checkpoints and
resume, the run log and loss plot (runlog), stage outputs swapped in whole (stage), and the ZeRO memory estimate
(estimate). Sits above shared.inference (it writes samples after training); nothing below imports it."""
