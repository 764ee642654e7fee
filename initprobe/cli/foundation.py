"""Foundation commands: train-teacher, sample, layers."""
