"""Models: one registry of named models, their families, checkpoints and loaded form.

Importing this package registers every built-in model (each family module registers its own).
"""

from __future__ import annotations

from vidbatch.models import (  # noqa: F401  (registration side effects)
    cnn,
    custom,
    detection,
    rnn,
    transformer,
    video_zoo,
)
from vidbatch.models.checkpoint import (
    CheckpointMeta,
    read_checkpoint,
    read_metadata,
    save_checkpoint,
    weights_version,
)
from vidbatch.models.detection import Detector
from vidbatch.models.loaded import Classifier, load_model, register_loader
from vidbatch.models.registry import (
    ModelSpec,
    get_model,
    get_model_spec,
    list_models,
    register_model,
)

__all__ = [
    "CheckpointMeta",
    "Classifier",
    "Detector",
    "ModelSpec",
    "get_model",
    "get_model_spec",
    "list_models",
    "load_model",
    "read_checkpoint",
    "read_metadata",
    "register_loader",
    "register_model",
    "save_checkpoint",
    "weights_version",
]
