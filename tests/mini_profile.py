"""The miniature reproduction profile the reproduce tests share: a 640-image tiny digits teacher
with a gate lenient enough for it, tiny student and measurement settings."""

MINI_PROFILE = """
[mini]
description = "test"
data = "digits"
[mini.teacher]
preset = "tiny"
images = 640
batch = 32
sample_steps = 2
[mini.student]
batch = 16
eval_n = 10
eval_every = 64
eval_at = [16]
eval_classifier_steps = 20
[mini.measure]
n = 12
n_images = 12
[mini.gate]                     # a 640-image teacher: only a gate this lenient passes
n = 20
heun_steps = 4
max_fd_ratio = 1e9
min_classes = 1
max_class_kl = 10.0
min_confidence_ratio = 0.0
"""
