# Copyright 2025 The hf_vision_distill Authors.
# SPDX-License-Identifier: Apache-2.0
"""Dataset loading, column detection, image transforms and collators for image classification, by concern:
`loading.py` (splits, columns, labels), `images.py` (decoding, bad images), `transforms.py` (transforms and the lazy
per-batch transform), `collation.py` (batches, mixing).

The pieces fit together like this:

```python
>>> from hf_vision_distill.data import (
...     ImageClassificationCollator,
...     build_transforms,
...     drop_undecodable_images,
...     load_image_classification_dataset,
...     with_image_transform,
... )
>>> data = load_image_classification_dataset("data/cifar10-sample")  # train, validation, test: image, label, row_index
>>> data = drop_undecodable_images(data, on_bad_image="skip")  # optional: one scan of every image, cached by datasets
>>> train_dataset = with_image_transform(data.dataset["train"], build_transforms(32, train=True))
>>> collator = ImageClassificationCollator(num_labels=data.num_labels, mixup_alpha=0.8, cutmix_alpha=1.0)
```

Undecodable images are handled in two places. [`with_image_transform`] keeps images as undecoded bytes until the lazy
transform decodes them in the dataloader workers, so a broken file stops training with its source row (the loader's
`row_index` column; `on_bad_image="error"`) or is dropped and counted (`"skip"`) without any scan up front.
[`drop_undecodable_images`] scans every split once (a `Dataset.map`, cached by datasets) to list or remove all bad
rows before training. The loader itself never decodes images, so loading stays cheap.
"""

from .collation import ImageClassificationCollator, uint8_normalisation
from .images import ON_BAD_IMAGE_CHOICES, convert_image_to_rgb, drop_undecodable_images, find_undecodable_images
from .loading import (
    IMAGE_COLUMN_CANDIDATES,
    LABEL_COLUMN_CANDIDATES,
    MAX_REPORTED_ROWS,
    ROW_INDEX_COLUMN,
    VALIDATION_SPLIT_CANDIDATES,
    ImageClassificationData,
    load_image_classification_dataset,
)
from .transforms import (
    AUTO_AUGMENT_CHOICES,
    CROP_CHOICES,
    INTERPOLATION_MODES,
    PAD_CROP_MAX_IMAGE_SIZE,
    build_transforms,
    make_batch_transform,
    pad_crop_padding,
    with_image_transform,
)

__all__ = [
    "AUTO_AUGMENT_CHOICES",
    "CROP_CHOICES",
    "IMAGE_COLUMN_CANDIDATES",
    "INTERPOLATION_MODES",
    "LABEL_COLUMN_CANDIDATES",
    "MAX_REPORTED_ROWS",
    "ON_BAD_IMAGE_CHOICES",
    "PAD_CROP_MAX_IMAGE_SIZE",
    "ROW_INDEX_COLUMN",
    "VALIDATION_SPLIT_CANDIDATES",
    "ImageClassificationCollator",
    "ImageClassificationData",
    "build_transforms",
    "convert_image_to_rgb",
    "drop_undecodable_images",
    "find_undecodable_images",
    "load_image_classification_dataset",
    "make_batch_transform",
    "pad_crop_padding",
    "uint8_normalisation",
    "with_image_transform",
]
