"""Load a torchvision state_dict (efficientnet_v2_s/m/l, efficientnet_b0..b7, resnet50,
wide_resnet101_2) into our models.

Our blocks register their tensors in the same order as torchvision's, so the mapping is by
position: the i-th tensor of torchvision's state_dict goes to our i-th tensor. Each pair is
checked for equal shape and equal tensor kind (the last name component: weight, bias,
running_mean, ...), which catches a wrong architecture at the first differing tensor instead of
loading garbage. No key renaming tables.

The classifier: torchvision's pretrained heads have 1000 classes. Loading them into a model with
another number of classes raises a ValueError unless ``skip_classifier=True`` is passed, in
which case everything but the final Linear is loaded and the head keeps its fresh init. We
chose an explicit flag over silently skipping mismatched shapes, so that a wrong
``num_classes`` is never hidden.

Note: BatchNorm's eps is not in a state_dict. Our B0-B4 use torchvision's 1e-5 and everything
else 1e-3, as torchvision does; a model built with another ``bn_eps`` loads fine but gives
slightly different outputs.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def load_torchvision_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, skip_classifier: bool = False
) -> dict[str, str]:
    """Copy ``state_dict`` into ``model`` by position; return {our key: torchvision key}.

    Raises ValueError (and changes nothing) on a different tensor count, shape or kind.
    """
    ours = list(model.state_dict().items())
    theirs = list(state_dict.items())
    if skip_classifier:
        for name, items in (("model", ours), ("state_dict", theirs)):
            if len(items) < 2 or items[-2][1].ndim != 2 or items[-1][1].ndim != 1:
                raise ValueError(f"skip_classifier: the {name}'s last tensors are not a Linear layer's weight and bias")
        ours, theirs = ours[:-2], theirs[:-2]
    if len(ours) != len(theirs):
        raise ValueError(
            f"state_dict has {len(theirs)} tensors but the model has {len(ours)}: not the same architecture"
        )
    mapping, new_state = {}, {}
    for index, ((key, value), (tkey, tvalue)) in enumerate(zip(ours, theirs)):
        if value.shape != tvalue.shape or _kind(key) != _kind(tkey):
            hint = ""
            if index >= len(ours) - 2 and not skip_classifier:
                hint = " (classifier differs: pass skip_classifier=True to load all but the head)"
            raise ValueError(
                f"tensor {index}: ours {key} {tuple(value.shape)} vs torchvision {tkey} {tuple(tvalue.shape)}{hint}"
            )
        mapping[key], new_state[key] = tkey, tvalue
    result = model.load_state_dict(new_state, strict=False)
    assert not result.unexpected_keys
    return mapping
