"""The GPU check (issue 30): on a CUDA machine with nothing downloaded, one UEO step at ViT-B-16 scale (random
weights, the session's autocast dtype) against its floor, peak memory, and one full UEO run on shapes65.

    python benchmarks/gpu_check.py              # cuda: batch 64, 50 and 300 classes, then the shapes65 run
    python benchmarks/gpu_check.py --device cpu --batch 2 --classes 10 --no-run   # a smoke test of the script

The floor is the same step with the text features fixed (no text tower): the visual forward and backward
through UEO's trainable LayerNorm affines, which any method tuning them must pay. Ratios are measured in one
process, interleaved, median of --repeats; the output is one JSON object (and a readable summary on stderr).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--classes", default="50,300")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-run", action="store_true", help="skip the shapes65 UEO run")
    a = ap.parse_args()

    import torch

    from ueobench.adapt.losses import ueo_loss
    from ueobench.adapt.prompt_learner import PromptLearner
    from ueobench.data.protocols import load_protocol
    from ueobench.models.backbones import load_backbone
    from ueobench.runs.precision import autocast_dtype, resolve_precision

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: pass --device cpu for a smoke test", file=sys.stderr)
        return 2
    dtype = autocast_dtype(resolve_precision("auto", device))
    torch.manual_seed(0)
    bb = load_backbone("ViT-B-16:random", device)
    model = bb.model
    model.requires_grad_(False)
    norms = [p for n, p in model.visual.named_parameters() if "ln" in n]
    for p in norms:
        p.requires_grad_(True)
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "autocast": str(dtype), "batch": a.batch, "torch": torch.__version__, "steps": {}}
    names = list(load_protocol("domainnet").classes)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for k in (int(x) for x in a.classes.split(",")):
        learner = PromptLearner(bb, names[:k]).to(device)
        opt = torch.optim.SGD([learner.ctx, *norms], lr=1e-4)
        images = torch.randn(a.batch, 3, bb.image_size, bb.image_size, device=device)
        w = torch.rand(a.batch, device=device) + 0.5
        with torch.no_grad():
            fixed = learner().detach()

        def step(text: bool):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                f = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
                t = learner() if text else fixed
                loss = ueo_loss(torch.softmax(100 * f.float() @ t.float().T, dim=1), w)
            opt.zero_grad()
            loss.backward()
            opt.step()

        times: dict[str, list[float]] = {"step": [], "floor": []}
        step(True), step(False)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(a.repeats):
            for kind, text in (("step", True), ("floor", False)):
                sync()
                t0 = time.perf_counter()
                step(text)
                sync()
                times[kind].append(time.perf_counter() - t0)
        s, f = statistics.median(times["step"]), statistics.median(times["floor"])
        out["steps"][k] = {"step_s": s, "floor_s": f, "ratio_to_floor": s / f,
                           "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                                               if device.type == "cuda" else None)}
        print(f"UEO step, {k} classes, batch {a.batch}: {s * 1000:.1f} ms, floor {f * 1000:.1f} ms, "
              f"ratio {s / f:.2f}", file=sys.stderr)
    if not a.no_run:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "ueobench.cli.app", "run", "--method", "ueo", "--dataset", "shapes65", "--protocol", "opda",
                            "--domain", "sketch", "--device", a.device, "--no-cache", "--json",
                            "--results", "gpu-check-results", "--force"], capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-2000:], file=sys.stderr)
            return r.returncode
        rec = json.loads(r.stdout)
        out["shapes65_ueo_run"] = {"wall_s": time.perf_counter() - t0, "timings": rec["timings"],
                                   "peak_memory": rec.get("peak_memory"), "test": rec["metrics"]["test"]}
        print(f"shapes65 UEO run: {out['shapes65_ueo_run']['wall_s']:.1f} s, test acc "
              f"{100 * rec['metrics']['test']['acc']:.1f}", file=sys.stderr)
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
