"""tuner: find the most accurate Ultralytics YOLO config that fits in memory, and train it safely."""

__version__ = "0.1.0"
