"""ai-singer export and engine=onnx: the ONNX graphs of a tiny singer give the torch model's audio (the same noise,
fed as inputs) within 1e-4, conversion picks the engine the settings ask for, and an export that is missing, stale
or unusable is a clear error (engine=onnx) or torch (engine=auto)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from conftest import harmonic  # noqa: E402
from test_infer import conf_settings, make_adapter, make_base  # noqa: E402

from ai_singer import checkpoint as ckpt  # noqa: E402
from ai_singer.convert import Converter, InferError, load_base_model, with_adapter  # noqa: E402
from ai_singer.onnx_export import example_inputs, export_singer, largest_difference  # noqa: E402
from ai_singer.onnx_singer import EXPORT_CONFIG_FILE, METADATA_KEY, PRIOR_FILE, OnnxExportError, OnnxSinger  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny base, two singers (alto exported, bass not) and alto's export."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("onnx")
    base_dir = make_base(root)
    make_adapter(root, base_dir, "alto", seed=1)
    make_adapter(root, base_dir, "bass", f0_median_hz=110.0, seed=2)
    out, config = export_singer("alto", root / "singers", root / "pretrain", check_frames=40)
    return root, out, config


def converter(root: Path, hubert: Path, *overrides: str, **kwargs) -> Converter:
    """A Converter of the tiny base; fp32 unless ``overrides`` set the precision (``auto`` depends on the CPU)."""
    if not any(o.startswith("precision=") for o in overrides):
        overrides = ("precision=fp32", *overrides)
    return Converter(root / "pretrain" / "tiny", {"name": "hubert", "path": str(hubert), "layer": 2},
                     conf_settings("f0.method=dio", "noise_scale=0.5", *overrides), root / "singers",
                     **{"device": "cpu", **kwargs})


def test_the_export_describes_itself_and_matches_the_torch_model(exported):
    root, out, config = exported
    assert out == root / "singers" / "alto" / "onnx"
    written = yaml.safe_load((out / EXPORT_CONFIG_FILE).read_text())
    base = ckpt.load_base(root / "pretrain" / "tiny")
    assert written["base_sha256"] == base.sha256 and written["singer"] == "alto"
    assert written["adapter_sha256"] == ckpt.load_adapter(root / "singers" / "alto").config["tensors_sha256"]
    assert written["files"][PRIOR_FILE] == ckpt.sha256_file(out / PRIOR_FILE)
    assert 0 <= written["check"]["max_abs_difference"] <= 1e-4
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(out / PRIOR_FILE), load_external_data=False).metadata_props}
    assert '"base_sha256"' in metadata[METADATA_KEY]

    # longer than the export's example, other lengths, decoder windows or not: still the torch model's audio
    _, model = load_base_model(root / "pretrain" / "tiny")
    adapter = ckpt.load_adapter(root / "singers" / "alto")
    model = with_adapter(model, adapter)
    g = adapter.tensors["singer_embedding"].reshape(1, -1)
    onnx_singer = OnnxSinger(out)
    for frames, window in ((2, 0), (7, 0), (150, 0), (150, 31)):
        inputs = example_inputs(model, frames)
        assert largest_difference(model, g, onnx_singer, inputs, window) <= 1e-4, (frames, window)


def test_engine_onnx_converts_a_vocal_as_torch_does(exported, tiny_hubert_dir):
    root, _, _ = exported
    sr = 44100
    vocal = np.concatenate([np.zeros(sr // 2, np.float32), harmonic(220.0, sr, 1.2), np.zeros(sr // 2, np.float32),
                            harmonic(330.0, sr, 0.8)])
    results = {engine: converter(root, tiny_hubert_dir, f"engine={engine}", "chunk.decode_window_s=0.3",
                                 "decoder_layout=plain").convert_vocal(vocal, sr, "alto")
               for engine in ("torch", "onnx", "auto")}
    assert results["torch"].engines == {"alto": "torch"}
    assert results["onnx"].engines == {"alto": "onnx"} and results["auto"].engines == {"alto": "onnx"}
    peak = np.abs(results["torch"].audio).max()
    assert peak > 0 and np.abs(results["onnx"].audio - results["torch"].audio).max() <= 1e-4 * max(1.0, peak)
    assert np.array_equal(results["auto"].audio, results["onnx"].audio)


def test_settings_choose_the_engine_and_a_missing_export_is_a_clear_error(exported, tiny_hubert_dir, monkeypatch):
    root, _, _ = exported
    sr = 44100
    take = harmonic(220.0, sr, 0.6)
    auto = converter(root, tiny_hubert_dir, "engine=auto", "decoder_layout=plain")
    assert auto.convert_vocal(take, sr, "bass").engines == {"bass": "torch"}  # no export: torch
    assert auto.convert_vocal(take, sr, "alto").engines == {"alto": "onnx"}
    # torch's channels-last decoder (decoder_layout=auto on the CPU) is faster than the export: auto takes torch
    assert converter(root, tiny_hubert_dir, "engine=auto").convert_vocal(take, sr, "alto").engines == {"alto": "torch"}
    assert converter(root, tiny_hubert_dir, "engine=onnx").convert_vocal(take, sr, "alto").engines == {"alto": "onnx"}
    assert converter(root, tiny_hubert_dir, "engine=auto", "precision=bf16").convert_vocal(
        take, sr, "alto").engines == {"alto": "torch"}  # bf16 is torch's
    assert converter(root, tiny_hubert_dir, "engine=auto", merge=False).convert_vocal(
        take, sr, "alto").engines == {"alto": "torch"}
    with pytest.raises(InferError, match=r"engine=onnx for singer 'bass'.*no ONNX export.*ai-singer export singer=bass"):
        converter(root, tiny_hubert_dir, "engine=onnx").convert_vocal(take, sr, "bass")
    with pytest.raises(InferError, match=r"engine=onnx.*a blend has no export"):
        converter(root, tiny_hubert_dir, "engine=onnx").convert_vocal(take, sr, "alto:0.5,bass:0.5")
    with pytest.raises(InferError, match=r"precision=bf16 runs with torch only"):
        converter(root, tiny_hubert_dir, "engine=onnx", "precision=bf16").convert_vocal(take, sr, "alto")
    with pytest.raises(InferError, match=r"unknown engine"):
        conf_settings("engine=tensorrt")

    # precision=auto: torch with the decoder's blocks in bfloat16 on a CPU that computes it natively (faster there
    # than the fp32 export), else fp32 (and the export); engine=onnx always runs fp32
    import ai_singer.convert as convert_module

    monkeypatch.setattr(convert_module, "computes_bfloat16_natively", lambda device: True)
    fast = converter(root, tiny_hubert_dir, "engine=auto", "precision=auto")
    assert fast.precision == "bf16_decoder" and fast.convert_vocal(take, sr, "alto").engines == {"alto": "torch"}
    assert converter(root, tiny_hubert_dir, "engine=onnx", "precision=auto").precision == "fp32"
    monkeypatch.setattr(convert_module, "computes_bfloat16_natively", lambda device: False)
    plain = converter(root, tiny_hubert_dir, "engine=auto", "precision=auto", "decoder_layout=plain")
    assert plain.precision == "fp32" and plain.convert_vocal(take, sr, "alto").engines == {"alto": "onnx"}


def test_a_stale_or_damaged_export_is_not_used(exported, tiny_hubert_dir, tmp_path):
    root, _, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    sr = 44100
    take = harmonic(220.0, sr, 0.6)
    make_adapter(copy, copy / "pretrain" / "tiny", "alto", seed=9)  # alto fine-tuned again: the export is stale
    assert converter(copy, tiny_hubert_dir, "engine=auto", "decoder_layout=plain").convert_vocal(
        take, sr, "alto").engines == {"alto": "torch"}
    with pytest.raises(InferError, match=r"adapter has changed since"):
        converter(copy, tiny_hubert_dir, "engine=onnx").convert_vocal(take, sr, "alto")
    export_singer("alto", copy / "singers", copy / "pretrain", check_frames=20)  # made again: used again
    assert converter(copy, tiny_hubert_dir, "engine=onnx").convert_vocal(take, sr, "alto").engines == {"alto": "onnx"}
    prior = copy / "singers" / "alto" / "onnx" / PRIOR_FILE
    prior.write_bytes(prior.read_bytes()[:-10])
    with pytest.raises(OnnxExportError, match="sha256 differs"):
        converter(copy, tiny_hubert_dir, "engine=onnx").convert_vocal(take, sr, "alto")


def test_a_failed_export_leaves_the_old_export_whole(exported, tmp_path, monkeypatch):
    """The export is written in a temporary folder beside ``out`` and swapped in: a failure while the graphs are
    written (a disk full after half of prior.onnx), or a check that refuses the graphs after every file is
    written, leaves the previous export byte for byte and nothing beside it; a temporary folder a killed export
    left is removed by the next one."""
    import ai_singer.onnx_export as onnx_export

    root, old, _ = exported
    out = tmp_path / "onnx"
    shutil.copytree(old, out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    killed = tmp_path / ".onnx.999999999.abc.tmp"  # a dead writer's (pid beyond pid_max)
    killed.mkdir()
    (killed / PRIOR_FILE).write_bytes(b"half")

    def disk_full(prior, decoder, inputs, folder, description):
        (folder / PRIOR_FILE).write_bytes(before[PRIOR_FILE][: len(before[PRIOR_FILE]) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_export, "_export", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_singer("alto", root / "singers", root / "pretrain", out=out, check_frames=16)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == [out.name]

    def copy_old_graphs(prior, decoder, inputs, folder, description):  # complete graphs, then refused
        for name in before:
            if name != EXPORT_CONFIG_FILE:
                (folder / name).write_bytes(before[name])

    monkeypatch.setattr(onnx_export, "_export", copy_old_graphs)
    monkeypatch.setattr(onnx_export, "largest_difference", lambda *args, **kwargs: 1.0)
    with pytest.raises(OnnxExportError, match="nothing was written"):
        export_singer("alto", root / "singers", root / "pretrain", out=out, check_frames=16)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == [out.name]


def test_the_export_command(exported, tmp_path):
    """`ai-singer export`: writes the folder (out=), and a blend or an unknown singer is one line, exit 2."""
    root, _, _ = exported
    env_paths = [f"paths.singers={root / 'singers'}", f"paths.pretrain={root / 'pretrain'}"]
    command = [sys.executable, "-m", "ai_singer", "export", *env_paths]
    done = subprocess.run([*command, "singer=bass", f"out={tmp_path / 'bass-onnx'}", "check_frames=16"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "export: wrote" in done.stdout and (tmp_path / "bass-onnx" / EXPORT_CONFIG_FILE).is_file()
    for singer, message in (("alto:0.5,bass:0.5", "a blend has no folder to export"), ("nobody", "unknown singer")):
        done = subprocess.run([*command, f"singer='{singer}'"], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
