"""Checkpoint integrity: every file's SHA-256 is recorded and checked; a corrupt newest checkpoint is skipped with a
warning on resume="latest" and nothing is deleted; a legacy pickle that would run code is refused, not run (training
checkpoints and the toy pretraining state alike)."""

import json
import pathlib

import pytest
import torch
from safetensors.torch import save_file

from flowalign.toy.architecture import ToyArchitecture
from flowalign.toy.pretrain import PretrainConfig, Pretrainer
from flowalign.training.checkpoint import (CHECKSUM_FILE, CheckpointError, list_checkpoints, read_state_file,
                                           resolve_resume, rng_state, save_checkpoint, verify_checkpoint,
                                           write_state)
from flowalign.utils.safe_state import StateFileError


def save(out, iteration, keep_last=5):
    """A checkpoint shaped like the trainer's: an adapter file in a subfolder and an optimizer state."""
    def write(tmp):
        (tmp / "lora").mkdir()
        save_file({"w": torch.full((4, 4), float(iteration))}, tmp / "lora" / "adapter.safetensors")
        write_state(tmp, "optimizer", {"state": {0: {"step": torch.tensor(float(iteration))}}, "param_groups": []})
    return save_checkpoint(out, iteration, write, {"history": []}, keep_last)


def flip_byte(path, offset=-1):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def files_under(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_checksums_list_every_file_and_verify(tmp_path):
    folder = save(tmp_path, 10)
    listed = json.loads((folder / CHECKSUM_FILE).read_text())["sha256"]
    assert set(listed) == set(files_under(folder)) - {CHECKSUM_FILE}
    assert {"lora/adapter.safetensors", "optimizer.json", "optimizer.safetensors", "rng.json", "rng.safetensors",
            "state.json"} <= set(listed)
    assert not any(name.endswith(".pt") for name in listed)  # nothing pickled
    assert verify_checkpoint(folder) is True
    assert read_state_file(folder, "optimizer")["state"][0]["step"] == 10.0
    assert read_state_file(folder, "rng")["python"] == rng_state()["python"]  # nothing drew since the save


def test_a_flipped_byte_is_reported_naming_the_file(tmp_path):
    folder = save(tmp_path, 10)
    victim = folder / "optimizer.safetensors"
    flip_byte(victim)
    message = rf"checkpoint file '{victim}' is corrupt: its SHA-256 [0-9a-f]+… differs from [0-9a-f]+… recorded"
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(folder)
    with pytest.raises(CheckpointError, match=message):  # an explicit resume path is verified too
        resolve_resume(tmp_path, str(folder))
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors' is corrupt or from another save"):
        read_state_file(folder, "optimizer")  # reading alone also catches it (the JSON records the hash)


def test_a_missing_or_unlisted_checksum_entry_is_reported(tmp_path):
    folder = save(tmp_path, 10)
    (folder / "lora" / "adapter.safetensors").unlink()
    with pytest.raises(CheckpointError, match=rf"'{folder}' is incomplete: lora/adapter.safetensors is missing"):
        verify_checkpoint(folder)
    (folder / CHECKSUM_FILE).write_text('{"sha256": {}}')  # a damaged list must not verify nothing
    with pytest.raises(CheckpointError, match=rf"{CHECKSUM_FILE}' is corrupt \(it does not list state.json\)"):
        verify_checkpoint(folder)
    (folder / CHECKSUM_FILE).write_text('{"sha256": {"state.json": "00", "../../outside": "00"}}')
    with pytest.raises(CheckpointError, match=r"entry '../../outside'.*is not a file in the checkpoint"):
        verify_checkpoint(folder)


def test_latest_skips_a_corrupt_newest_checkpoint_with_a_warning_and_deletes_nothing(tmp_path):
    older, newest = save(tmp_path, 10), save(tmp_path, 20)
    flip_byte(newest / "lora" / "adapter.safetensors", offset=100)
    before = {folder: files_under(folder) for folder in (older, newest)}
    with pytest.warns(UserWarning, match=rf"skipping checkpoint '{newest}':.*adapter.safetensors' is corrupt"):
        assert resolve_resume(tmp_path, "latest") == older
    assert list_checkpoints(tmp_path) == [older, newest]
    assert {folder: files_under(folder) for folder in (older, newest)} == before  # untouched, corrupt one too


def test_latest_refuses_to_start_afresh_when_every_checkpoint_is_corrupt(tmp_path):
    assert resolve_resume(tmp_path, "latest") is None  # no checkpoint at all: a fresh run
    first, second = save(tmp_path, 10), save(tmp_path, 20)
    flip_byte(first / "rng.safetensors")
    (second / "state.json").unlink()
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        with pytest.raises(CheckpointError, match=r"no intact checkpoint.*iter-000020: .*state.json is missing; "
                                                  r"iter-000010: .*rng.safetensors' is corrupt.*left as they are"):
            resolve_resume(tmp_path, "latest")
    assert list_checkpoints(tmp_path) == [first, second]


def test_a_save_after_falling_back_keeps_the_corrupt_checkpoint_aside(tmp_path):
    older, newest = save(tmp_path, 10), save(tmp_path, 20)
    later = save(tmp_path, 30)
    flip_byte(newest / "optimizer.safetensors")
    corrupt_bytes = files_under(newest)
    # a run resumed from 10 writes 20 again, then prunes its abandoned future (30, intact: deleted as before)
    with pytest.warns(UserWarning, match=r"iter-000020' is corrupt.*kept as iter-000020-corrupt"):
        rewritten = save(tmp_path, 20)
    assert list_checkpoints(tmp_path) == [older, rewritten] and not later.exists()
    assert files_under(tmp_path / "checkpoints" / "iter-000020-corrupt") == corrupt_bytes
    assert verify_checkpoint(rewritten) and resolve_resume(tmp_path, "latest") == rewritten


def legacy_checkpoint(out, iteration, **files):
    """A checkpoint as written before checksums: state.json and torch.save'd ``.pt`` files."""
    folder = out / "checkpoints" / f"iter-{iteration:06d}"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"iteration": iteration}))
    for name, obj in files.items():
        torch.save(obj, folder / f"{name}.pt")
    return folder


def test_a_legacy_checkpoint_loads_with_weights_only_and_a_warning(tmp_path):
    rng = rng_state()
    folder = legacy_checkpoint(tmp_path, 5, rng=rng, optimizer={"state": {0: {"step": torch.tensor(3.0)}}})
    with pytest.warns(UserWarning, match=rf"'{folder}' has no {CHECKSUM_FILE}.*cannot be verified"):
        assert resolve_resume(tmp_path, "latest") == folder
    loaded = read_state_file(folder, "rng")
    assert loaded["python"] == rng["python"] and (loaded["numpy"][1] == rng["numpy"][1]).all()
    assert read_state_file(folder, "optimizer")["state"][0]["step"] == 3.0
    with pytest.raises(CheckpointError, match=rf"'{folder}' is incomplete: ema.json is missing"):
        read_state_file(folder, "ema")


class TouchOnUnpickle:
    """Unpickling this calls ``Path.touch(marker)``: a stand-in for any code a malicious pickle would run."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_legacy_pickle_that_would_run_code_is_refused(tmp_path):
    control = tmp_path / "control-marker"
    torch.save({"x": TouchOnUnpickle(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # the payload is real: unrestricted unpickling runs it
    assert control.exists()

    marker = tmp_path / "marker"
    folder = legacy_checkpoint(tmp_path / "run", 5, optimizer={"state": {}, "param_groups": [TouchOnUnpickle(marker)]})
    with pytest.raises(CheckpointError, match=r"optimizer.pt' was refused.*GLOBAL.*may hold code"):
        read_state_file(folder, "optimizer")
    assert not marker.exists()


# --- the toy pretraining state: same format, same refusal ------------------------------------------------------
TOY = PretrainConfig(seed=3, vae_steps=2, flow_steps=3, vae_batch=4, flow_batch=4, warmup=2, threads=1,
                     arch=ToyArchitecture(vae_channels=(8, 16), num_layers=1, num_heads=2, head_dim=16))


def test_the_toy_pretraining_state_is_pickle_free_and_a_legacy_one_loads_with_weights_only(tmp_path):
    quiet = dict(log=lambda s: None)
    t = Pretrainer(TOY, tmp_path / "new", **quiet)
    t.vae_step, t.losses = 2, [{"loss": float("nan")}]
    t.save_checkpoint()
    assert sorted(p.name for p in t.run_dir.iterdir()) == ["checkpoint.json", "checkpoint.safetensors"]
    resumed = Pretrainer(TOY, tmp_path / "new", **quiet)
    assert resumed.vae_step == 2 and str(resumed.losses) == str(t.losses)
    for name, value in t.pipe.transformer.state_dict().items():
        assert torch.equal(resumed.pipe.transformer.state_dict()[name], value)  # copied bytes: exact
    flip_byte(t.run_dir / "checkpoint.safetensors")
    with pytest.raises(StateFileError, match=r"checkpoint.safetensors' is corrupt or from another save"):
        Pretrainer(TOY, tmp_path / "new", **quiet)

    (tmp_path / "old").mkdir()
    torch.save(t.state(), tmp_path / "old" / "checkpoint.pt")  # as written before this format
    assert Pretrainer(TOY, tmp_path / "old", **quiet).vae_step == 2


def test_a_toy_pretraining_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "run").mkdir()
    torch.save({"config": TouchOnUnpickle(marker)}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(StateFileError, match=r"checkpoint.pt' was refused.*may hold code"):
        Pretrainer(TOY, tmp_path / "run", log=lambda s: None)
    assert not marker.exists()
