"""Training: the loop, sharding and optimizers, checkpoints, evaluation, reports and plots."""
