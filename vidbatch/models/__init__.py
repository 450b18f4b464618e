"""Models: one registry of named models, their families, checkpoints and loaded form.

Importing this package registers every built-in model (each family module registers its own).
"""

from __future__ import annotations

from vidbatch.models import (  # noqa: F401  (registration side effects)
    cnn,
    detection,
    rnn,
    transformer,
    transnetv2,
    video_zoo,
)
from vidbatch.models.checkpoint import (
    CheckpointMeta,
    read_checkpoint,
    read_metadata,
    save_checkpoint,
    weights_version,
)
from vidbatch.models.loaded import Classifier, Detector
from vidbatch.models.registry import (
    describe_model,
    get_model,
    get_model_spec,
    list_models,
    load_model,
    register_model,
)
from vidbatch.models.shots import Shot, ShotDetector, shots_from_probabilities
from vidbatch.models.spec import ModelInfo, ModelSpec

__all__ = [
    "CheckpointMeta",
    "Classifier",
    "Detector",
    "ModelInfo",
    "ModelSpec",
    "Shot",
    "ShotDetector",
    "describe_model",
    "get_model",
    "get_model_spec",
    "list_models",
    "load_model",
    "read_checkpoint",
    "read_metadata",
    "register_model",
    "save_checkpoint",
    "shots_from_probabilities",
    "weights_version",
]
