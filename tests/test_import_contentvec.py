"""Importing fairseq HuBERT/ContentVec checkpoints (ai_singer.importers.contentvec).

fairseq cannot be installed here (Python 3.11), so the oracle is fairseq's published architecture, not its
code: checkpoints come from tools/fairseq_hubert_checkpoint.py (fairseq's tensor names, shapes and pickle
structure, random values), and :func:`fairseq_forward` below is an independent re-statement of fairseq's
HubertModel forward (wav2vec2.py's ConvFeatureExtractionModel, make_conv_pos, TransformerEncoder and
TransformerSentenceEncoderLayer) in plain torch functional ops, read straight from the fairseq state dict.
The converted Hugging Face model must give the same hidden states (max abs difference <= 1e-4).
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ai_singer.errors import UserError  # noqa: E402
from ai_singer.importers.contentvec import import_contentvec  # noqa: E402
from ai_singer.importers.fairseq_checkpoint import parse_conv_layers  # noqa: E402
from tools import fairseq_hubert_checkpoint as tool  # noqa: E402

TOLERANCE = 1e-4
#: A HuBERT-large-like variant: pre-LN layers, layer-norm convolutions with bias, no post_extract_proj
#: (convolution channels = model width), an odd positional kernel, ReLU.
LARGE_LIKE = {**tool.TINY, "layer_norm_first": True, "extractor_mode": "layer_norm", "conv_bias": True,
              "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 2", "conv_pos": 7, "conv_pos_groups": 2,
              "activation_fn": "relu", "final_dim": 0}


# ------------------------------------------------------------------ the reference: fairseq's forward, restated

def _layer_norm(x, state, prefix):
    return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-5)


def _self_attention(x, state, prefix, heads):
    batch, frames, width = x.shape
    head = width // heads

    def project(name):
        return F.linear(x, state[f"{prefix}.{name}.weight"], state[f"{prefix}.{name}.bias"])

    q = (project("q_proj") * head ** -0.5).view(batch, frames, heads, head).transpose(1, 2)
    k = project("k_proj").view(batch, frames, heads, head).transpose(1, 2)
    v = project("v_proj").view(batch, frames, heads, head).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, frames, width)
    return F.linear(out, state[f"{prefix}.out_proj.weight"], state[f"{prefix}.out_proj.bias"])


def fairseq_forward(state: dict, cfg: dict, wav: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """fairseq HubertModel.extract_features, no masking: ([x for output_layer = 0 .. N], the output with
    output_layer=None). Output layer 0 is the encoder input (after the encoder layer norm in post-LN models)."""
    act = F.gelu if cfg["activation_fn"] == "gelu" else F.relu
    x = wav.unsqueeze(1)
    for i, (channels, _, stride) in enumerate(tool.conv_layers(cfg)):
        block = f"feature_extractor.conv_layers.{i}"
        x = F.conv1d(x, state[f"{block}.0.weight"], state.get(f"{block}.0.bias"), stride=stride)
        if cfg["extractor_mode"] == "layer_norm":
            x = _layer_norm(x.transpose(1, 2), state, f"{block}.2.1").transpose(1, 2)
        elif i == 0:
            x = F.group_norm(x, channels, state[f"{block}.2.weight"], state[f"{block}.2.bias"], eps=1e-5)
        x = F.gelu(x)
    x = _layer_norm(x.transpose(1, 2), state, "layer_norm")
    if "post_extract_proj.weight" in state:
        x = F.linear(x, state["post_extract_proj.weight"], state["post_extract_proj.bias"])
    g, v = state["encoder.pos_conv.0.weight_g"], state["encoder.pos_conv.0.weight_v"]
    kernel = v.shape[-1]
    weight = g * v / v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()  # weight_norm(dim=2)
    positions = F.conv1d(x.transpose(1, 2), weight, state["encoder.pos_conv.0.bias"], padding=kernel // 2,
                         groups=cfg["conv_pos_groups"])
    if kernel % 2 == 0:  # SamePad
        positions = positions[..., :-1]
    x = x + F.gelu(positions).transpose(1, 2)
    pre_ln = cfg["layer_norm_first"]
    if not pre_ln:
        x = _layer_norm(x, state, "encoder.layer_norm")
    outputs = [x]
    for i in range(cfg["encoder_layers"]):
        layer = f"encoder.layers.{i}"

        def feed_forward(h):
            h = act(F.linear(h, state[f"{layer}.fc1.weight"], state[f"{layer}.fc1.bias"]))
            return F.linear(h, state[f"{layer}.fc2.weight"], state[f"{layer}.fc2.bias"])

        heads = cfg["encoder_attention_heads"]
        if pre_ln:
            x = x + _self_attention(_layer_norm(x, state, f"{layer}.self_attn_layer_norm"), state,
                                    f"{layer}.self_attn", heads)
            x = x + feed_forward(_layer_norm(x, state, f"{layer}.final_layer_norm"))
        else:
            x = _layer_norm(x + _self_attention(x, state, f"{layer}.self_attn", heads), state,
                            f"{layer}.self_attn_layer_norm")
            x = _layer_norm(x + feed_forward(x), state, f"{layer}.final_layer_norm")
        outputs.append(x)
    return outputs, _layer_norm(x, state, "encoder.layer_norm") if pre_ln else x


def _audio(samples: int = 3000, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    return (0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(samples, generator=gen)).unsqueeze(0)


def _hf_outputs(folder: Path, wav: torch.Tensor):
    """The imported folder's HubertModel run on ``wav``: (hidden_states, last_hidden_state)."""
    from transformers import HubertModel

    model = HubertModel.from_pretrained(folder, local_files_only=True).eval()
    with torch.inference_mode():
        outputs = model(wav, output_hidden_states=True)
    return outputs.hidden_states, outputs.last_hidden_state


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


# ------------------------------------------------------------------------------------------ equivalence

@pytest.mark.parametrize("cfg_style", ["dict", "omegaconf", "args"])
def test_converted_contentvec_matches_fairseqs_forward(tmp_path, cfg_style):
    source = tmp_path / "checkpoint_best_legacy_500.pt"
    state = tool.write_checkpoint(source, tool.TINY, n_clusters=10, seed=1, cfg_style=cfg_style)
    record = import_contentvec(source, tmp_path / "contentvec")
    assert record["final_proj"] == [16, 32] and record["dropped"] == ["label_embs_concat"]
    assert sorted(os.listdir(tmp_path / "contentvec")) == ["config.json", "import.json", "model.safetensors"]

    wav = _audio()
    reference, _ = fairseq_forward(state, tool.TINY, wav)
    hidden, last = _hf_outputs(tmp_path / "contentvec", wav)
    assert len(hidden) == len(reference) == 4
    diffs = [_max_diff(h, r) for h, r in zip(hidden, reference)] + [_max_diff(last, reference[-1])]
    assert max(diffs) <= TOLERANCE, diffs


def test_backend_gives_the_projected_and_the_last_layer_features(tmp_path):
    """What so-vits-svc calls vec256l9 (final_proj of an inner layer) and vec768l12 (the last layer), through
    content=hubert on the imported folder."""
    from ai_singer.features.content import describe_encoder, load_content_encoder

    source = tmp_path / "contentvec.pt"
    state = tool.write_checkpoint(source, tool.TINY, n_clusters=10, seed=2)
    import_contentvec(source, tmp_path / "contentvec")
    wav = _audio(4000, seed=3)
    reference, _ = fairseq_forward(state, tool.TINY, wav)

    projected = load_content_encoder("hubert", tmp_path / "contentvec", layer=2, final_proj=True, device="cpu")
    expected = F.linear(reference[2], state["final_proj.weight"], state["final_proj.bias"])
    assert _max_diff(projected.encode(wav), expected) <= TOLERANCE
    assert describe_encoder(projected)["dim"] == 16

    last = load_content_encoder("hubert", tmp_path / "contentvec", layer=3, final_proj=False, device="cpu")
    assert _max_diff(last.encode(wav), reference[3]) <= TOLERANCE
    assert last.hop == 40 and last.receptive_field == 10 + 2 * 5 + 2 * 10 + 1 * 20


def test_large_like_variant_matches_fairseqs_forward(tmp_path):
    """Pre-LN layers (hidden_states[i] is fairseq's output_layer=i, without the encoder's final layer norm;
    last_hidden_state carries it, as fairseq's output with no output layer), layer-norm convolutions with bias, no post_extract_proj, an odd positional kernel, ReLU;
    stored in torch's legacy (non-zip) format as float16."""
    source = tmp_path / "large.pt"
    state = tool.write_checkpoint(source, LARGE_LIKE, n_clusters=6, seed=4, legacy_format=True,
                                  dtype=torch.float16)
    stored = {key: value.half().float() for key, value in state.items()}
    record = import_contentvec(source, tmp_path / "large")
    assert record["final_proj"] == [32, 32]
    wav = _audio()
    reference, final = fairseq_forward(stored, LARGE_LIKE, wav)
    hidden, last = _hf_outputs(tmp_path / "large", wav)
    diffs = [_max_diff(h, r) for h, r in zip(hidden, reference)] + [_max_diff(last, final)]
    assert max(diffs) <= TOLERANCE, diffs


@pytest.mark.slow
def test_full_size_contentvec_matches_fairseqs_forward(tmp_path):
    """ContentVec's real shapes (379 MB random checkpoint): vec256l9 and vec768l12 through content=hubert."""
    from ai_singer.features.content import load_content_encoder

    source = tmp_path / "checkpoint_best_legacy_500.pt"
    state = tool.write_checkpoint(source, tool.BASE, n_clusters=500)
    import_contentvec(source, tmp_path / "contentvec")
    source.unlink()
    wav = _audio(16000, seed=5)
    reference, _ = fairseq_forward(state, tool.BASE, wav)
    for layer, project in ((9, True), (12, False)):
        encoder = load_content_encoder("hubert", tmp_path / "contentvec", layer=layer, final_proj=project, device="cpu")
        expected = (F.linear(reference[layer], state["final_proj.weight"], state["final_proj.bias"]) if project
                    else reference[layer])
        assert _max_diff(encoder.encode(wav), expected) <= TOLERANCE


def test_fairseqs_conv_layer_strings_are_parsed_without_eval():
    assert parse_conv_layers(tool.BASE["conv_feature_layers"]) == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert parse_conv_layers(tool.TINY["conv_feature_layers"]) == tool.conv_layers(tool.TINY)
    for bad in ("__import__('os').system('true')", "[(512,10,5)] * -1", "[(1.5,2,3)]", "[]", "[(1,2)]"):
        with pytest.raises(ValueError):
            parse_conv_layers(bad)


# ------------------------------------------------------------------------------------------ bad inputs

def _assert_refused(source: Path, out: Path, *fragments: str) -> str:
    with pytest.raises(UserError) as caught:
        import_contentvec(source, out)
    message = str(caught.value)
    assert "\n" not in message and str(source) in message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
    return message


class Foreign:
    """A class no fairseq checkpoint holds; unpickling it would import this test module."""

    def __init__(self):
        self.note = "foreign"


class RunsCode:
    """Unpickling this would run ``exec`` (it would create a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_foreign_classes_are_refused_and_nothing_runs(tmp_path):
    good = tmp_path / "good.pt"
    tool.write_checkpoint(good, tool.TINY, n_clusters=10)
    marker = tmp_path / "ran.txt"
    for name, payload, named in (("exec.pt", RunsCode(marker), "names exec,"),
                                 ("class.pt", Foreign(), f"names {Foreign.__module__}.Foreign,")):
        source = tmp_path / name
        torch.save({"model": {}, "cfg": {"model": {}}, "extra_state": {"x": payload}}, source)
        message = _assert_refused(source, tmp_path / "out", "refused", named, "nothing from the file was run")
        assert message.count(str(source)) == 1
    assert not marker.exists()


class HubertConfig:
    """Pickled as ``fairseq.models.hubert.hubert.<name>``: a fairseq configuration dataclass is admitted (as
    an inert record), any other fairseq class is not."""


class HubertModel:
    pass


def test_fairseq_config_classes_are_kept_as_data_other_fairseq_classes_refused(tmp_path):
    tool.write_checkpoint(tmp_path / "plain.pt", tool.TINY, n_clusters=10)
    for cls, accepted in ((HubertConfig, True), (HubertModel, False)):
        source = tmp_path / f"{cls.__name__}.pt"
        with tool.pickled_under(tool.Dictionary, "fairseq.data.dictionary"), \
                tool.pickled_under(cls, "fairseq.models.hubert.hubert"):
            torch.save({**_contents(tmp_path / "plain.pt"), "extra_state": {"object_type": cls, "instance": cls()},
                        "task_state": {"dictionaries": [tool.Dictionary(10)]}}, source)
        if accepted:
            assert import_contentvec(source, tmp_path / "accepted")["layers"] == 3
        else:
            _assert_refused(source, tmp_path / "out", "fairseq.models.hubert.hubert.HubertModel")


def _contents(path: Path) -> dict:
    """The cfg and model of a checkpoint written by the tool (read back with the importer's own loader)."""
    from ai_singer.importers.fairseq_checkpoint import ALLOWED
    from ai_singer.importers.safe_load import load_checkpoint

    checkpoint = load_checkpoint(path, ALLOWED)
    return {"cfg": checkpoint["cfg"], "model": checkpoint["model"]}


def test_wrong_kinds_of_file_are_named(tmp_path):
    import soundfile as sf
    from safetensors.torch import save_file

    wav = tmp_path / "voice.wav"
    sf.write(wav, np.zeros(1600, np.float32), 16000)
    safetensors = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, safetensors)
    text = tmp_path / "config.json"
    text.write_text('{"model_type": "hubert"}')
    bare = tmp_path / "pytorch_model.bin"
    torch.save({"encoder.layer_norm.weight": torch.ones(4)}, bare)
    sovits = tmp_path / "G_0.pth"  # a so-vits-svc generator checkpoint: a state dict, no fairseq config
    torch.save({"model": {"enc_p.proj.weight": torch.zeros(2, 2)}, "iteration": 1, "learning_rate": 1e-4}, sovits)
    other = tmp_path / "other.pt"
    torch.save({"step": 3, "weights": [1.0]}, other)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    archive = tmp_path / "songs.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("song.txt", "la la")
    cases = [(wav, "WAV"), (safetensors, "safetensors"), (text, "JSON"), (bare, "bare state dict"), (sovits, "no model configuration"),
             (other, "no 'model' state dict"), (empty, "empty"), (archive, "zip archive without"), (tmp_path / "missing.pt", "no such file"),
             (tmp_path, "is a folder")]
    for source, fragment in cases:
        _assert_refused(source, tmp_path / "out", fragment)


@pytest.mark.parametrize("fraction", [0.002, 0.5, 0.97])
def test_truncated_files_are_refused(tmp_path, fraction):
    good = tmp_path / "good.pt"
    tool.write_checkpoint(good, tool.TINY, n_clusters=10)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[:max(8, int(len(data) * fraction))])
    _assert_refused(cut, tmp_path / "out", "truncated or damaged")


def test_truncated_legacy_format_is_refused(tmp_path):
    good = tmp_path / "legacy.pt"
    tool.write_checkpoint(good, tool.TINY, n_clusters=10, legacy_format=True)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    _assert_refused(cut, tmp_path / "out", "truncated or damaged")


@pytest.mark.parametrize("overrides, task, fragments", [
    ({"encoder_layers": 2}, None, ("config does not match its weights", "encoder.layers.2", "encoder_layers=2")),
    ({"encoder_layers": 4}, None, ("config does not match its weights", "lacks", "encoder.layers.3")),
    ({"encoder_ffn_embed_dim": 48}, None, ("config does not match its weights", "fc1.weight is [64, 32]",
                                           "[48, 32]")),
    ({"conv_feature_layers": "[(24,10,5)] + [(24,3,2)] * 2"}, None, ("config does not match its weights",)),
    ({"extractor_mode": "layer_norm"}, None, ("config does not match its weights",)),
    ({"encoder_attention_heads": 5}, None, ("not divisible by encoder_attention_heads=5",)),
    ({"_name": "wav2vec2"}, None, ("'wav2vec2' model",)),
    ({}, {"normalize": True}, ("task.normalize=true",)),
    ({}, {"sample_rate": 22050}, ("22050 Hz",)),
])
def test_config_that_does_not_fit_is_refused(tmp_path, overrides, task, fragments):
    source = tmp_path / "mismatch.pt"
    tool.write_checkpoint(source, tool.TINY, n_clusters=10, cfg_overrides=overrides, task_cfg=task)
    _assert_refused(source, tmp_path / "out", *fragments)


def test_existing_output_needs_overwrite(tmp_path):
    source = tmp_path / "cv.pt"
    tool.write_checkpoint(source, tool.TINY, n_clusters=10)
    out = tmp_path / "contentvec"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        import_contentvec(source, out)
    assert (out / "keep.txt").read_text() == "mine"
    import_contentvec(source, out, overwrite=True)
    assert sorted(os.listdir(out)) == ["config.json", "import.json", "model.safetensors"]


def test_a_failed_import_leaves_the_old_folder_whole(tmp_path, monkeypatch):
    """The folder is written in a temporary folder and swapped in: an import that fails after config.json is
    written (the weights cannot be saved) leaves the previous import byte for byte and nothing beside it; a
    temporary folder a killed import left is removed by the next one, and a folder it set aside is put back
    (and kept without --overwrite)."""
    import safetensors.torch

    source = tmp_path / "cv.pt"
    tool.write_checkpoint(source, tool.TINY, n_clusters=10)
    out = tmp_path / "encoders" / "contentvec"
    import_contentvec(source, out)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    killed = out.parent / ".contentvec.999999999.abc.tmp"  # a dead writer's (pid beyond pid_max)
    killed.mkdir()
    (killed / "config.json").write_text("{}")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        import_contentvec(source, out, overwrite=True)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert os.listdir(out.parent) == ["contentvec"]
    monkeypatch.undo()

    os.rename(out, out.parent / ".contentvec.999999999.old.tmp")  # an import killed between its two renames
    with pytest.raises(UserError, match="already exists"):  # put back, so it still needs --overwrite
        import_contentvec(source, out)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


# ------------------------------------------------------------------------------------------ entry points

def test_command_line_one_line_error_exit_2_and_success(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    bad = tmp_path / "bad.pt"
    with open(bad, "wb") as handle:
        pickle.dump({"model": {}, "x": Foreign()}, handle, protocol=2)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "ai_singer.importers", "contentvec", str(bad), str(out)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("import contentvec: error: ")
    assert str(bad) in run.stderr and "Foreign" in run.stderr
    assert not out.exists()

    from ai_singer.cli import main as cli_main

    good = tmp_path / "hubert_base.pt"
    tool.write_checkpoint(good, tool.TINY, n_clusters=10)
    assert cli_main(["import", "contentvec", str(good), str(out)]) == 0
    assert (out / "model.safetensors").is_file()
    assert cli_main(["import", "contentvec", str(good), str(out)]) == 2  # exists: one-line error
