"""Checkpoints: safetensors + JSON metadata round-trips; bad files are one-line errors naming
the file, and nothing is ever unpickled."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vidbatch.models import (
    CheckpointMeta,
    get_model,
    load_model,
    read_checkpoint,
    read_metadata,
    save_checkpoint,
    weights_version,
)
from vidbatch.models.common import KINETICS_MEAN, KINETICS_STD
from vidbatch.specs import ClipSpec

CLIP = ClipSpec(frames=8, fps=8.0, size=32)
LABELS = ("left", "right", "still")


def make_checkpoint(path, name="motion-rnn", family="rnn", labels=LABELS, arch=None, seed=0):
    torch.manual_seed(seed)
    arch = arch if arch is not None else {"dim": 32, "hidden": 16, "width": 8}
    module = get_model(name, num_classes=len(labels), clip=CLIP, **arch)
    meta = CheckpointMeta(
        name=name,
        family=family,
        task="classify",
        labels=tuple(labels),
        clip=CLIP,
        mean=KINETICS_MEAN,
        std=KINETICS_STD,
        arch=arch,
        metrics={"heldout_accuracy": 0.5, "per_class_recall": {label: 0.5 for label in labels}},
    )
    save_checkpoint(str(path), module, meta)
    return module, meta


def assert_one_line_naming(exc: BaseException, path) -> None:
    message = str(exc)
    assert "\n" not in message, message
    assert str(path) in message, message


def test_roundtrip_state_and_meta(tmp_path):
    path = tmp_path / "m.safetensors"
    module, meta = make_checkpoint(path)
    state, read_meta = read_checkpoint(str(path))
    assert read_meta == meta
    expected = module.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    doc = json.loads(json.loads(_header(path.read_bytes()))["__metadata__"]["vidbatch"])
    assert doc["family"] == "rnn" and doc["clip"] == {"frames": 8, "fps": 8.0, "size": 32}
    assert doc["normalization"]["mean"] == list(KINETICS_MEAN)
    assert doc["format_version"] == 1


def test_loaded_model_predicts_like_the_module(tmp_path):
    path = tmp_path / "m.safetensors"
    module, _ = make_checkpoint(path)
    model = load_model("motion-rnn", str(path), device="cpu")
    assert (model.name, model.family, model.task) == ("motion-rnn", "rnn", "classify")
    assert model.labels == list(LABELS) and model.clip == CLIP and str(model.device) == "cpu"
    clips = np.random.default_rng(1).integers(0, 256, (3, 8, 32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(clips).float().div(255)
    x = (x - torch.tensor(KINETICS_MEAN)) / torch.tensor(KINETICS_STD)
    with torch.inference_mode():
        expected = module.eval()(x.permute(0, 1, 4, 2, 3)).softmax(-1).numpy()
    np.testing.assert_allclose(model.predict(clips), expected, rtol=1e-4, atol=1e-5)


def test_version_is_sha256_of_bytes_and_stable(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    make_checkpoint(a)
    make_checkpoint(b)  # same seed, same module, same metadata -> same bytes
    version = load_model("motion-rnn", str(a), device="cpu").version
    assert version == hashlib.sha256(a.read_bytes()).hexdigest()[:12]
    assert version == weights_version(a.read_bytes())
    assert load_model("motion-rnn", str(b), device="cpu").version == version
    make_checkpoint(b, seed=1)
    assert load_model("motion-rnn", str(b), device="cpu").version != version


def test_remote_uri_through_fsspec():
    uri = "memory://vidbatch-test/ckpt/m.safetensors"
    module, meta = make_checkpoint(uri)
    state, read_meta = read_checkpoint(uri, storage_options={})
    assert read_meta == meta
    assert load_model("motion-rnn", uri, storage_options={}, device="cpu").labels == list(LABELS)


def test_missing_file_is_file_not_found_naming_it(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        load_model("motion-cnn", str(path))
    assert_one_line_naming(info.value, path)


@pytest.mark.parametrize("keep", [0.5, 0.9, 20 / 1000, 4 / 1000])
def test_truncated_file(tmp_path, keep):
    path = tmp_path / "m.safetensors"
    make_checkpoint(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    with pytest.raises(ValueError) as info:
        read_checkpoint(str(path))
    assert_one_line_naming(info.value, path)
    assert "truncated" in str(info.value) or "not a safetensors" in str(info.value)
    with pytest.raises(ValueError):
        load_model("motion-rnn", str(path))


class _Payload:
    """Unpickling this would create a file: proof that nothing is ever unpickled."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_disguised_as_safetensors_is_never_unpickled(tmp_path, writer):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.safetensors"
    if writer == "pickle":
        path.write_bytes(pickle.dumps({"weight": _Payload(str(target))}))
    else:
        torch.save({"weight": _Payload(str(target))}, path)
    for call in (lambda: read_checkpoint(str(path)), lambda: load_model("motion-cnn", str(path))):
        with pytest.raises(ValueError) as info:
            call()
        assert_one_line_naming(info.value, path)
        assert "not a safetensors file" in str(info.value)
    assert not target.exists()


def test_plain_safetensors_without_vidbatch_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a vidbatch checkpoint") as info:
        read_checkpoint(str(path))
    assert_one_line_naming(info.value, path)


def test_family_mismatch(tmp_path):
    path = tmp_path / "rnn.safetensors"
    make_checkpoint(path)
    with pytest.raises(ValueError) as info:
        load_model("motion-cnn", str(path))
    assert_one_line_naming(info.value, path)
    assert "family 'rnn'" in str(info.value) and "family 'cnn'" in str(info.value)


def test_labels_do_not_fit_the_head(tmp_path):
    """Metadata says 3 labels, weights were trained for 5 classes."""
    path = tmp_path / "m.safetensors"
    arch = {"dim": 32, "hidden": 16, "width": 8}
    module = get_model("motion-rnn", num_classes=5, clip=CLIP, **arch)
    _, meta = make_checkpoint(tmp_path / "ok.safetensors", arch=arch)
    save_checkpoint(str(path), module, meta)
    with pytest.raises(ValueError) as info:
        load_model("motion-rnn", str(path))
    assert_one_line_naming(info.value, path)
    assert "do not fit" in str(info.value) and "head.1.weight" in str(info.value)


def test_arch_does_not_fit_the_weights(tmp_path):
    """Metadata claims an LSTM; the weights are a GRU's."""
    path = tmp_path / "m.safetensors"
    module, meta = make_checkpoint(tmp_path / "ok.safetensors")
    lying = CheckpointMeta(**{**meta.__dict__, "arch": {**meta.arch, "cell": "lstm"}})
    save_checkpoint(str(path), module, lying)
    with pytest.raises(ValueError) as info:
        load_model("motion-rnn", str(path))
    assert_one_line_naming(info.value, path)
    assert "shape mismatch" in str(info.value)


def test_unknown_arch_arg_in_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    module, meta = make_checkpoint(tmp_path / "ok.safetensors")
    save_checkpoint(str(path), module, CheckpointMeta(**{**meta.__dict__, "arch": {"bogus": 1}}))
    with pytest.raises(ValueError, match="no arch arg 'bogus'") as info:
        load_model("motion-rnn", str(path))
    assert_one_line_naming(info.value, path)


def test_read_metadata_only(tmp_path):
    path = tmp_path / "m.safetensors"
    _, meta = make_checkpoint(path)
    assert read_metadata(str(path)) == meta


def _header(data: bytes) -> str:
    (size,) = struct.unpack("<Q", data[:8])
    return data[8 : 8 + size].decode()
