"""Training data by dataset index: the strategy says which examples, a source loads them.

`source.py`: `Batch`, `derive_seed` and `TorchSource` (torchvision Dataset + DataLoader, augmentation
per example on the host); `device_source.py`: `DeviceSource` (the whole training set on the model's
device, augmentation as batched tensor ops) and `build_source`, which picks one by `dataset.loader`.
They sit above `data/` (datasets, transforms) and below `distributed.py`, the strategies and `engine/`.
"""
