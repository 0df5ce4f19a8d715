"""Reads a run's TensorBoard event files with TensorBoard's own reader and prints every scalar
series as JSON: {"tag": [[step, value], ...]}. usage: tensorboard_read.py LOGDIR"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({tag: [[s.step, s.value] for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
