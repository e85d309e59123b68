"""EfficientNetV2, reproduced notebook-first: data, models, augmentation, progressive training."""
