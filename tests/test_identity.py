"""The stored record is the source of truth: a run's id depends on what it computes, never on the machine that
planned it; the method's code and the images are in it; labels come from records; the runner decides when
cached image features may be used."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, make_toy_tree, toy_protocol, write_image
from test_labeled_source import SOURCE_QUICK
from ueobench.sweeps.jobs import job_names
from ueobench.sweeps.spec import SweepSpec, expand
from ueobench.runs.plan import Planner
from ueobench.runs.request import RunRequest

PLUGIN = '''
from dataclasses import dataclass
import torch
from ueobench import Method, Options, register_method
from ueobench.models.clip_ops import encode_images, encode_texts, prompt_texts

BIAS = {bias}


@register_method("biased")
class Biased(Method):
    """Zero-shot with a bias towards class 0 (the bias is the 'code' a user edits)."""

    @dataclass
    class Options(Options):
        tag: int = 0

    def setup(self, backbone, class_names, context):
        super().setup(backbone, class_names, context)
        self.text = encode_texts(backbone, prompt_texts(context.prompt, class_names))

    def predict_features(self, features):
        out = features @ self.text.T
        out[:, 0] += BIAS
        return out

    @torch.no_grad()
    def predict(self, images):
        return self.predict_features(encode_images(self.backbone, images))
'''


@pytest.fixture
def plugin_dir(tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "biased.py").write_text(PLUGIN.format(bias=0.0))
    return d


def run_args(plugins, *extra):
    return ("--plugins", str(plugins), "run", "--method", "biased", "--protocol", "opda", "--domain", "clipart",
            "--backbone", TINY, *extra)


def test_plan_is_the_same_with_and_without_cuda_and_a_sweep_resumes_as_done(cli, monkeypatch):
    jobs = expand(SweepSpec(methods=["zeroshot"], protocols=["opda", "oda"], domains=["clipart"],
                                  datasets=["shapes"], seeds=[0], backbones=[TINY], device="cuda"))
    without = job_names(jobs)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node sees CUDA
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    with_cuda = job_names(jobs)
    assert with_cuda == without
    plans = [Planner().plan(j).plan for j in jobs]
    assert all(p.precision == "auto" for p in plans)  # "auto" stays "auto": resolved only when executing
    monkeypatch.undo()
    # planning with --device cuda works on a machine without CUDA (a login node) ...
    r = cli("sweep", "--method", "zeroshot", "--protocol", "opda,oda", "--domain", "clipart", "--backbone", TINY,
            "--device", "cuda", "--dry-run")
    assert r.exit_code == 0, r.output
    # ... and the runs executed here (on the CPU) are the ones a CUDA-visible status looks for
    assert cli("sweep", "--method", "zeroshot", "--protocol", "opda,oda", "--domain", "clipart", "--backbone", TINY,
               "--device", "cpu").exit_code == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = cli("status", "--method", "zeroshot", "--protocol", "opda,oda", "--domain", "clipart", "--backbone", TINY).output
    assert "2 done" in out and "0 pending" in out


def test_editing_a_plugin_reruns_it_and_tables_never_mix_old_and_new_code(cli, plugin_dir):
    first = cli(*run_args(plugin_dir))
    assert first.exit_code == 0 and ": done" in first.output
    assert "already done" in cli(*run_args(plugin_dir)).output
    (plugin_dir / "biased.py").write_text(PLUGIN.format(bias=5.0))  # an edited objective
    import sys as _sys

    for name in [m for m in _sys.modules if m.startswith("ueobench_plugins.biased")]:
        del _sys.modules[name]
    from ueobench.method import registry as method_mod

    method_mod.METHODS._items.pop("biased", None)
    method_mod._load_folder(plugin_dir)
    second = cli(*run_args(plugin_dir))
    assert second.exit_code == 0 and ": done" in second.output and "already done" not in second.output
    runs = sorted(p.name for p in Path("results/runs").iterdir())
    assert len(runs) == 2  # the old record stays on disk under its own id
    recs = [json.loads((Path("results/runs") / r / "record.json").read_text()) for r in runs]
    assert len({r["method"]["code"]["fingerprint"] for r in recs}) == 2
    table = cli("table", "--protocol", "opda").output
    assert "1 run made by other code left out" in table
    assert table.count("| biased") == 1
    every = cli("table", "--protocol", "opda", "--code", "all").output
    assert every.count("| biased") == 2 and "[code " in every


def test_table_without_plugins_keeps_configurations_apart(cli, plugin_dir):
    assert cli(*run_args(plugin_dir)).exit_code == 0
    assert cli(*run_args(plugin_dir, "--set", "tag=1")).exit_code == 0
    env = {**os.environ, "UEOBENCH_NO_PROGRESS": "1"}
    out = subprocess.run([sys.executable, "-m", "ueobench.cli", "table", "--protocol", "opda"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| biased |" in out.stdout and "| biased (tag=1) |" in out.stdout  # labels from the records


TUNES_IMAGE_TOWER = '''
from ueobench import register_method
from ueobench.adapt.prompt_tuning import PromptTuningMethod
from ueobench.adapt.losses import entropy_loss
import torch


@register_method("towerent")
class TowerEntropy(PromptTuningMethod):
    """Overrides step_loss entirely (no flag of the base class is set) and tunes the visual norm affines."""

    def step_loss(self, images, idx):
        cos = self.cosine(images).float()
        return entropy_loss(torch.softmax(100 * cos, 1)) + 10 * cos.mean()
'''


def test_runner_never_evaluates_a_tuned_image_tower_on_cached_features(cli, tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "towerent.py").write_text(TUNES_IMAGE_TOWER)
    r = cli("--plugins", str(d), "run", "--method", "towerent", "--protocol", "opda", "--domain", "clipart",
            "--backbone", TINY, "--set", "epochs=1", "--set", "eval_every=1", "--set", "lr_norm=0.5", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)
    paths = rec["evaluation"]["predictions"]
    assert paths["test"].startswith("pass over the images") and paths["target"].startswith("pass over the images")
    from ueobench.store.records import load_predictions

    preds = load_predictions(Path("results/runs") / rec["run_id"])
    epoch0 = rec["history"][0]["metrics"]["test"]  # before any step: the cache is still valid
    assert rec["feature_cache"]["images_encoded"] > 0 and epoch0["acc"] is not None
    assert preds["test_logits"].shape == (320, 10)
    # prompt-only tuning keeps using the shared features
    r2 = cli("--plugins", str(d), "run", "--method", "towerent", "--protocol", "opda", "--domain", "clipart",
             "--backbone", TINY, "--set", "epochs=1", "--set", "eval_every=0", "--set", "tune=prompt", "--json")
    assert json.loads(r2.output)["evaluation"]["predictions"]["test"] == "cached image features"


def test_data_fingerprint_covers_the_images_and_resolves_paths(tmp_path, monkeypatch):
    proto = toy_protocol(tmp_path)
    for root in ("a", "b"):
        make_toy_tree(tmp_path / root / "toy", "Art")
    for f in sorted((tmp_path / "b" / "toy" / "Art").rglob("*.png")):  # same names, other images
        write_image(f, seed=999, size=20)
    def run_id(root: str, **kw) -> str:
        req = RunRequest(method="zeroshot", protocol="opda", domain="Art", dataset=str(proto), backbone=TINY,
                         data_root=str(tmp_path / root), **kw)
        return Planner().plan(req).run_id

    assert run_id("a") != run_id("b")
    # a list whose paths spell the same files differently is the same data
    lines = [f"Art/{c}/{i:03d}.png {k}" for k, c in enumerate(["Alarm_Clock", "Back_Pack", "Bike", "CUP", "Desk_Lamp", "eraser"])
             for i in range(3)]
    listed = tmp_path / "a" / "toy" / "Art_list.txt"
    listed.write_text("\n".join(lines) + "\n")
    plain = run_id("a")
    listed.write_text("\n".join(f"Art/../{ln}" for ln in lines) + "\n")
    assert run_id("a") == plain
    # the data is its content: touching an image changes nothing; other bytes of the same size, with the old
    # modification time put back, change it (the content index keys on the change time, which no one can set)
    img = tmp_path / "a" / "toy" / "Art" / "Bike" / "000.png"
    os.utime(img, ns=(1, 1))
    assert run_id("a") == plain
    st = img.stat()
    data = bytearray(img.read_bytes())
    data[len(data) // 2] ^= 0xFF
    img.write_bytes(bytes(data))
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert img.stat().st_size == st.st_size and img.stat().st_mtime_ns == st.st_mtime_ns
    assert run_id("a") != plain
    # where the data lives is not part of it: a copy elsewhere is the same data
    import shutil

    shutil.copytree(tmp_path / "b", tmp_path / "c")
    assert run_id("c") == run_id("b")


def test_planning_reads_each_domain_once_and_fingerprints_each_method_once(monkeypatch):
    from ueobench.data import dataset as data_mod
    from ueobench.method import registry

    calls = {"load": 0, "code": 0}
    load, code = data_mod.load_domain, registry.method_code

    def counting_load(*a, **k):
        calls["load"] += 1
        return load(*a, **k)

    def counting_code(*a, **k):
        calls["code"] += 1
        return code(*a, **k)

    monkeypatch.setattr(data_mod, "load_domain", counting_load)
    monkeypatch.setattr(registry, "method_code", counting_code)
    jobs = expand(SweepSpec(methods=["zeroshot", "ent"], protocols=["cda", "pda", "oda", "opda", "csda"],
                                  domains=["clipart", "real"], datasets=["shapes"], seeds=[0, 1, 2], backbones=[TINY]))
    names = job_names(jobs)
    assert len(set(names)) == len(jobs) == 60
    assert calls == {"load": 2, "code": 2}


def test_misspelt_dataset_default_is_an_error_at_registration():
    from dataclasses import dataclass

    from ueobench import Method, register_method
    from ueobench import Options as BaseOptions
    from ueobench.core.errors import UeobenchError

    class Typo(Method):
        @dataclass
        class Options(BaseOptions):
            epochs: int = 1

        dataset_defaults = {"domainnet": {"epoch": 5}}

    with pytest.raises(UeobenchError, match="unknown option.*epoch"):
        register_method("typo-method")(Typo)


def _registered() -> list[str]:
    from ueobench.method.registry import list_methods

    return list_methods()


#: cheap settings for adapting once; a method missing here adapts with its defaults
CHEAP = {"ent": {"epochs": "1"}, "im": {"epochs": "1"}, "ueo": {"epochs": "1"}, "tent": {"epochs": "1"},
         "pouf": {"epochs": "1", "iters_per_epoch": "2"}, "upl": {"epochs": "1", "ensemble": "2"}, "tpt": {"views": "4"},
         "zero": {"views": "4"}}


@pytest.mark.parametrize("name", _registered())
def test_reset_returns_every_method_to_its_state_after_setup(name, tiny_clipn):
    """Every registered method: after adapting, ``reset`` restores each declared parameter and gives the
    predictions of right after setup again (caches and fitted heads included)."""
    from ueobench.method.base import implements
    from ueobench.method.registry import get_method
    from ueobench.runs.plan import plan_run
    from ueobench.runs.session import start

    backbone = tiny_clipn if "no_cos" in get_method(name).extras else TINY
    labeled = get_method(name).track == "labeled-source"
    s = start(plan_run(RunRequest(method=name, protocol="opda", domain="clipart", backbone=backbone,
                                  options={**CHEAP, **SOURCE_QUICK}.get(name, {}), source="real" if labeled else None)))
    m = s.method
    # from fixed features; a labeled-source method reads no target image, so its own source_val serves
    feats = (s.context.source_features("val", m.feature_kind) if labeled else s.context.image_features())[:8]

    def predictions():  # from fixed features: what the method's own state (prompt, caches, head) makes of them
        with torch.no_grad():
            return m.predict_features(feats).clone() if implements(m, "predict_features") else None

    params = [p for ps in m.trainable_parameters().values() for p in ps]
    before_params = [p.detach().clone() for p in params]
    before = predictions()
    m.adapt(s.context)
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    m.reset()
    assert all(torch.equal(p, b) for p, b in zip(params, before_params))
    if before is not None:
        assert torch.equal(predictions(), before), f"{name}: reset() did not return to the state after setup"


def test_records_of_the_previous_schema_are_read_and_left_out_by_default(cli):
    assert cli("run", "--method", "zeroshot", "--protocol", "opda", "--domain", "clipart", "--backbone", TINY).exit_code == 0
    [run] = list(Path("results/runs").iterdir())
    old = run.parent / "zeroshot_shapes_opda_clipart_s0-000000000000"
    shutil.copytree(run, old)
    rec = json.loads((old / "record.json").read_text())
    rec["schema"] = 1
    rec["run_id"] = old.name
    del rec["method"]["label"], rec["method"]["code"]
    (old / "record.json").write_text(json.dumps(rec))
    out = cli("table", "--protocol", "opda").output
    assert "1 run made by other code left out" in out and "| Zero-shot |" in out
    every = cli("table", "--protocol", "opda", "--code", "all").output
    assert "zeroshot [v1 " in every


def test_a_code_fingerprint_does_not_depend_on_what_the_planning_process_imported():
    """A sweep is planned in a CLI process (api, report, cli loaded) and executed in bare workers: every
    method's code fingerprint must come out the same in both."""
    import subprocess
    import sys

    import ueobench.api  # noqa: F401 - load what a planning CLI process has loaded
    import ueobench.cli.app  # noqa: F401
    from ueobench.method.registry import MethodResolver, list_methods
    from ueobench.runs.plan import EXECUTOR

    here = {n: MethodResolver(EXECUTOR).resolve(n, {}, "shapes").code["fingerprint"] for n in list_methods()}
    code = ("import json; from ueobench.method.registry import MethodResolver, list_methods; "
            "from ueobench.runs.plan import EXECUTOR; "
            "print(json.dumps({n: MethodResolver(EXECUTOR).resolve(n, {}, 'shapes').code['fingerprint'] "
            "for n in list_methods()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def test_the_fingerprint_covers_every_module_a_run_executes():
    """Core modules that change numbers (metrics, the checkpoint reader, the evaluator) are in every method's
    code, found from the imports, not listed by hand; the method's own toolkit only where it is used."""
    from ueobench.method.registry import MethodResolver
    from ueobench.runs.plan import EXECUTOR

    files = {n: set(MethodResolver(EXECUTOR).resolve(n, {}, "shapes").code["files"]) for n in ("zeroshot", "ueo")}
    for name in ("ueobench.scoring.metrics", "ueobench.models.clipn_checkpoint", "ueobench.runs.evaluation",
                 "ueobench.runs.features", "ueobench.data.dataset", "ueobench.models.backbones"):
        assert name in files["zeroshot"] and name in files["ueo"], name
    assert "ueobench.adapt.losses" in files["ueo"] and "ueobench.adapt.losses" not in files["zeroshot"]
    assert "ueobench.methods.ueo" in files["ueo"]
    assert not any(n.startswith(("ueobench.report", "ueobench.cli", "ueobench.api", "ueobench.sweeps"))
                   for n in files["ueo"])
