"""End to end through the CLI on ``shapes`` with a tiny random-weight open_clip model, and bad inputs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, make_toy_tree, toy_protocol
from ueobench.store.records import load_predictions

RUN = ("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--backbone", TINY)


def test_run_then_table(cli):
    r = cli(*RUN)
    assert r.exit_code == 0, r.output
    assert "zeroshot | shapes/opda/clipart | tiny-vit:random | seed 0: done" in r.output
    assert "test   acc" in r.output and "target acc" in r.output
    [run_dir] = list(Path("results/runs").iterdir())
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["schema"] == 2 and rec["status"] == "done"
    assert rec["config"]["protocol_checksum"].startswith("sha256:")
    assert rec["protocol"]["prompt"] == "a photo of a {}."
    assert rec["protocol"]["known"][:2] == ["circle", "square"]
    assert rec["backbone"]["random_weights"] is True
    assert {"python", "torch", "open_clip", "cuda", "gpu"} <= set(rec["environment"])
    assert rec["trainable_parameters"] == 0
    m = rec["metrics"]["test"]
    assert m["n_unknown"] > 0 and m["auroc"] is not None and m["rule"] == "nent:0.5"
    assert m["n"] == 16 * 20 and m["n_unknown"] == 6 * 20  # the test split holds every class
    assert rec["metrics"]["target"]["n"] == 9 * 40  # opda adaptation data: classes 0-5 and 10-12
    preds = load_predictions(run_dir)
    assert preds["test_logits"].shape == (m["n"], 10)
    assert (preds["test_labels"] >= 10).sum() == m["n_unknown"]

    t = cli("table")
    assert t.exit_code == 0, t.output
    assert "| Zero-shot |" in t.output
    assert "clipart" in t.output and "avg" not in t.output  # an average of one column is left out

    again = cli(*RUN)
    assert "already done, reused" in again.output
    assert len(list(Path("results/runs").iterdir())) == 1


def test_seeded_rerun_reproduces_record_and_predictions(cli):
    assert cli(*RUN).exit_code == 0
    [run_dir] = list(Path("results/runs").iterdir())
    first = json.loads((run_dir / "record.json").read_text())
    first_preds = (run_dir / "predictions.npz").read_bytes()
    assert cli(*RUN, "--force").exit_code == 0
    second = json.loads((run_dir / "record.json").read_text())
    volatile = {"created", "timings", "peak_memory", "environment", "feature_cache"}  # the rerun reads the cache
    assert {k: v for k, v in first.items() if k not in volatile} == {k: v for k, v in second.items() if k not in volatile}
    assert (run_dir / "predictions.npz").read_bytes() == first_preds


def test_api_mirrors_cli():
    import ueobench

    res = ueobench.run(method="zeroshot", protocol="cda", domain="sketch", backbone=TINY, seed=1)
    assert not res.skipped and res.record.metrics["test"]["acc"] is not None
    assert res.record.metrics["target"]["n_unknown"] == 0  # cda adaptation data holds known classes only
    assert "sketch" in ueobench.table(protocol="cda")


@pytest.mark.parametrize(
    "args, message",
    [
        (("run", "--method", "zeroshoot", "--protocol", "opda", "--domain", "clipart"), "unknown method 'zeroshoot'; did you mean 'zeroshot'?"),
        (("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipprt"), "unknown domain 'clipprt'; did you mean 'clipart'?"),
        (("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--dataset", "shapez"), "did you mean 'shapes'?"),
        (("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--set", "promt=x"), "has no option 'promt'; did you mean 'prompt'?"),
        (("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--backbone", "ViT-B-16"), "names no weights"),
        (("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--backbone", "ViT-B-61:openai"), "did you mean 'ViT-B-16'?"),
        (("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--backbone", "tiny-vit:/nope.pt"), "checkpoint /nope.pt not found"),
        (("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "Art"), "belongs to officehome, whose data is not configured"),
        (("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "Art", "--dataset", "officehome"), "no data root for dataset 'officehome'"),
        (("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--score", "msq", "--backbone", TINY), "unknown score 'msq'; did you mean 'msp'?"),
        (("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--epochs", "3"), "method 'zeroshot' has no option 'epochs'"),
        (("show", "protocol", "officehom", "opda"), "unknown dataset 'officehom'; did you mean 'officehome'?"),
    ],
)
def test_bad_input_is_one_line_error(cli, args, message):
    r = cli(*args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert message in lines[0]


def test_unknown_protocol_is_rejected_with_the_dataset_s_protocols(cli):
    r = cli("run", "--method", "zeroshot", "--protocol", "opdaa", "--domain", "clipart", "--dataset", "shapes")
    assert r.exit_code == 2, r.output
    [line] = r.output.strip().splitlines()
    assert "unknown protocol 'opdaa'" in line and "did you mean 'opda'" in line and "cda, pda, oda, opda, csda" in line


def test_ambiguous_domain_lists_datasets(cli, tmp_path):
    make_toy_tree(tmp_path / "data" / "office-home", "Clipart", per_class=1)  # officehome now configured
    r = cli("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--data-root", str(tmp_path / "data"))
    assert r.exit_code == 2
    assert "domain 'clipart' is in several configured datasets (officehome, shapes); pick one with --dataset" in r.output


def test_missing_weights_are_an_error_not_random(cli):
    r = cli(*RUN[:-1], "ViT-B-16:openai")  # offline in tests: the download fails
    assert r.exit_code == 2
    assert "cannot load backbone 'ViT-B-16:openai'" in r.output
    assert not Path("results/runs").exists() or not list(Path("results/runs").iterdir())


def test_corrupt_image_fails_the_run_without_a_record(cli, tmp_path):
    proto = toy_protocol(tmp_path)
    make_toy_tree(tmp_path / "data" / "toy", "Art", per_class=2)
    (tmp_path / "data" / "toy" / "Art" / "Bike" / "001.png").write_bytes(b"\x89PNG broken")
    r = cli("run", "--method", "zeroshot", "--protocol", "oda", "--domain", "Art", "--dataset", str(proto),
            "--data-root", str(tmp_path / "data"), "--backbone", TINY)
    assert r.exit_code == 2
    assert "cannot read image" in r.output and "001.png" in r.output
    assert not [p for p in Path("results/runs").iterdir() if not p.name.startswith(".")]


def test_malformed_protocol_file(cli, tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"format": 1, "name": "bad", "classes": ["a"], "domains": []}))
    r = cli("show", "protocol", str(f), "opda")
    assert r.exit_code == 2 and f"{f}.domains: expected at least one domain" in r.output


def test_toy_dataset_runs_from_a_folder_tree(cli, tmp_path):
    proto = toy_protocol(tmp_path)
    make_toy_tree(tmp_path / "data" / "toy", "Art", per_class=2)
    r = cli("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "Art", "--dataset", str(proto),
            "--data-root", str(tmp_path / "data"), "--backbone", "tiny-rn:random", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)
    assert rec["data"]["source"] == "folder" and rec["data"]["n_test"] == 12 and rec["data"]["n_adapt"] == 6
    assert rec["metrics"]["test"]["n_unknown"] == 4


def test_list_and_show_commands(cli):
    assert "zeroshot" in cli("list", "methods").output
    out = cli("list", "datasets").output
    assert all(d in out for d in ("office", "officehome", "visdac", "domainnet", "shapes"))
    b = cli("list", "backbones").output
    assert "tiny-vit:random" in b and "open_clip pretrained backbones" in b
    assert "ViT-B-16:openai" in cli("list", "backbones", "--all").output
    assert "mcm" in cli("list", "scores").output
    j = json.loads(cli("show", "protocol", "officehome", "opda", "--json").output)
    assert set(j) >= {"known", "target", "unknown", "absent", "num_classes"}
    assert len(j["unknown"]) == 10 and len(j["absent"]) == 15 and j["num_classes"] == 65


def test_data_check_on_shapes(cli):
    r = cli("data", "check", "--dataset", "shapes", "--domain", "sketch", "--json")
    assert r.exit_code == 0, r.output
    [rep] = json.loads(r.output)
    assert rep["splits"]["test"]["images"] == 16 * 20
    assert rep["splits"]["adapt"]["unknown"] == 3 * 40 and rep["missing"] == [] and rep["unreadable"] == []


PLUGIN = '''
from dataclasses import dataclass
import torch
from ueobench import Method, Options, register_method
from ueobench.models.clip_ops import encode_images


@register_method("randproto")
class RandomPrototypes(Method):
    """Random class prototypes: a plugin used by the tests."""

    @dataclass
    class Options(Options):
        scale: float = 1.0

    def setup(self, backbone, class_names, context):
        super().setup(backbone, class_names, context)
        g = torch.Generator().manual_seed(context.seed)
        dim = backbone.model.text_projection.shape[1]
        self.protos = torch.nn.functional.normalize(torch.randn(len(class_names), dim, generator=g), dim=-1)

    @torch.no_grad()
    def predict(self, images):
        return self.options.scale * encode_images(self.backbone, images) @ self.protos.T
'''


def test_plugin_folder_appears_in_every_command(cli, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "randproto.py").write_text(PLUGIN)
    assert "randproto" in cli("--plugins", str(plugins), "list", "methods").output
    r = cli("--plugins", str(plugins), *RUN[:2], "randproto", *RUN[3:], "--set", "scale=0.5")
    assert r.exit_code == 0, r.output
    assert "randproto" in cli("table").output
    (plugins / "clash.py").write_text(PLUGIN.replace("class RandomPrototypes", "class Other"))
    from ueobench.method import plugins as plugin_mod

    plugin_mod.PLUGIN_DIRS.clear()
    r = cli("--plugins", str(plugins), "list", "methods")
    assert r.exit_code == 2 and "duplicate method name 'randproto'" in r.output


def test_console_script_runs_in_a_subprocess(tmp_path):
    exe = shutil.which("ueobench", path=str(Path(sys.executable).parent))
    assert exe, "the ueobench console script is installed"
    out = subprocess.run([exe, "run", "--method", "nope", "--protocol", "cda", "--domain", "real"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().startswith("Error: unknown method 'nope'")
