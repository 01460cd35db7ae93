"""Pretrain the tiny CLIP of a built-in world (``ueobench pretrain shapes`` / ``ueobench pretrain shapes65``).

Image-caption pairs come from the same renderer as the benchmark but from a separate seed stream. Every caption
names the shape ("a sketch of a red star", "a blue hexagon", ...); the style mix is deliberately uneven
(photos common, sketches rare) so that zero-shot transfer with "a photo of a {}." is good on some domains and
worse on others. For ``shapes65`` the pretraining world is wider than the benchmark, as the web is wider than
Office-Home: all 16 shapes and 9 colours, of which the benchmark's classes are 13 shapes x 5 colours. The loss is
CLIP's symmetric contrastive loss with soft targets: identical captions in a batch are all positives.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import UeobenchError
from ..data import worlds as shapes

STYLE_WORDS = {"real": ["photo", "picture"], "clipart": ["clipart", "cartoon"], "painting": ["painting"],
               "sketch": ["sketch", "drawing"]}
STYLE_WORDS65 = {"product": ["photo", "product photo"], "real": ["photo", "picture"], "painting": ["painting"],
                 "sketch": ["sketch", "drawing"]}
#: colours seen in pretraining beyond the 5 class colours of shapes65
EXTRA_COLOURS65 = ("yellow", "pink", "brown", "cyan")


@dataclass
class PretrainConfig:
    arch: str = "tiny-shapes"
    seed: int = 1234  # the benchmark uses seed 0: pretraining images never repeat benchmark images
    pool: int = 24000
    style_mix: tuple[float, ...] = (0.55, 0.25, 0.15, 0.05)  # real, clipart, painting, sketch
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 150
    minutes: float = 58.0  # hard stop on a slow machine (the weights are then those of the last step reached)
    world: str = "shapes"


#: the shipped recipe of each world (``shapes``: the 0.1 weights; ``shapes65``: the Office-Home-shaped world)
RECIPES: dict[str, PretrainConfig] = {
    "shapes": PretrainConfig(),
    # 2,000 steps (about 8 minutes on 2 cores) leave zero-shot accuracy where CLIP's is on Office-Home; longer
    # pretraining pushes the easiest domain towards 100% (a 9-minute pilot run ended at 85% on product)
    "shapes65": PretrainConfig(arch="tiny-shapes65", pool=30000, style_mix=(0.4, 0.35, 0.15, 0.10), steps=2000,
                               batch_size=256, lr=1e-3, warmup=150, minutes=80.0, world="shapes65"),
}


def recipe(world: str) -> PretrainConfig:
    from dataclasses import replace

    return replace(RECIPES[world])


def installed_output(world: str = "shapes") -> Path:
    """The installed built-in weights of a world (written only with ``pretrain --install``)."""
    from importlib import resources

    return Path(str(resources.files("ueobench.weights"))) / f"{RECIPES[world].arch}.safetensors"


def caption(rng: np.random.Generator, shape: str, style: str, colour: str) -> str:
    word = STYLE_WORDS[style][int(rng.integers(len(STYLE_WORDS[style])))]
    name = shape
    forms = [f"a {word} of a {colour} {name}", f"a {word} of a {name}", f"a {colour} {name}", f"a {name}"]
    return forms[int(rng.integers(len(forms)))]


def _render_one65(args: tuple[int, int, tuple[float, ...]]) -> tuple[np.ndarray, str]:
    seed, i, mix = args
    rng = np.random.default_rng([seed, i])
    p = np.array(mix)
    style = shapes.STYLES65[int(rng.choice(4, p=p / p.sum()))]
    shape = list(shapes.SHAPES)[int(rng.integers(len(shapes.SHAPES)))]
    colours = list(shapes.CLASS_COLOURS) + list(EXTRA_COLOURS65)
    colour = colours[int(rng.integers(len(colours)))]
    img = shapes.render_class(colour, shape, style, rng)
    word = STYLE_WORDS65[style][int(rng.integers(len(STYLE_WORDS65[style])))]
    forms = [f"a {word} of a {colour} {shape}", f"a {word} of a {colour} {shape}.", f"a {colour} {shape}",
             f"a {word} of a {shape}"]
    return np.asarray(img, dtype=np.uint8), forms[int(rng.choice(4, p=[0.45, 0.2, 0.25, 0.1]))]


def _render_one(args: tuple[int, int]) -> tuple[np.ndarray, str]:
    seed, i = args
    rng = np.random.default_rng([seed, i])
    cfg_mix = np.array(PretrainConfig.style_mix)
    style = list(STYLE_WORDS)[int(rng.choice(4, p=cfg_mix / cfg_mix.sum()))]
    shape = list(shapes.SHAPES)[int(rng.integers(len(shapes.SHAPES)))]
    colour = shapes.pick_colour(rng)
    img = shapes.render(shape, style, rng, colour=colour)
    return np.asarray(img, dtype=np.uint8), caption(rng, shape, style, colour)


def build_pool(cfg: PretrainConfig, workers: int = 2) -> tuple[np.ndarray, list[str]]:
    with Pool(workers) as pool:
        if cfg.world == "shapes65":
            out = pool.map(_render_one65, [(cfg.seed, i, cfg.style_mix) for i in range(cfg.pool)], chunksize=256)
        else:
            out = pool.map(_render_one, [(cfg.seed, i) for i in range(cfg.pool)], chunksize=256)
    return np.stack([o[0] for o in out]), [o[1] for o in out]


def _save(model: torch.nn.Module, cfg: PretrainConfig, step: int, out: Path) -> str:
    """fp16 safetensors plus a ``.sha256`` file beside them; both replaced atomically."""
    import os

    from safetensors.torch import save_file

    from .backbones import weights_checksum

    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata={"arch": cfg.arch, "config": str(asdict(cfg)), "steps": str(step)})
    digest = weights_checksum(tmp)
    sha_tmp = out.with_suffix(".sha256.tmp")
    sha_tmp.write_text(f"{digest}  {out.name}\n")
    os.replace(tmp, out)
    os.replace(sha_tmp, out.with_suffix(".sha256"))
    return digest


def pretrain(cfg: PretrainConfig, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train from scratch and save fp16 safetensors weights plus their checksum. Returns a summary."""
    import open_clip

    from .backbones import register_model_configs
    from .text_tower import TextTower

    torch.manual_seed(cfg.seed)
    register_model_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(cfg.arch)
    tokenizer = open_clip.get_tokenizer(cfg.arch)
    t0 = time.time()
    images, captions = build_pool(cfg)
    log(f"rendered {len(captions)} image-caption pairs in {time.time() - t0:.0f}s")
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(preprocess.transforms[-1].mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.transforms[-1].std).view(1, 3, 1, 1)
    x = ((x - mean) / std).half()
    vocab = sorted(set(captions))
    where = {c: i for i, c in enumerate(vocab)}
    cap_id = torch.tensor([where[c] for c in captions])
    tokens = tokenizer(vocab)
    tower = TextTower(model)
    eot = tower.eot_positions(tokens)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    g = torch.Generator().manual_seed(cfg.seed)
    model.train()
    start, losses, step = time.time(), [], 0
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(len(x), (cfg.batch_size,), generator=g)
        batch = x[idx].float()
        flip = torch.rand(cfg.batch_size, generator=g) < 0.5
        batch[flip] = batch[flip].flip(-1)
        ids = cap_id[idx]
        uniq, inv = torch.unique(ids, return_inverse=True)
        img = F.normalize(model.encode_image(batch), dim=-1)
        txt_u = F.normalize(tower.encode_embeddings(tower.embed_tokens(tokens[uniq]), eot[uniq]), dim=-1)
        txt = txt_u[inv]
        logits = model.logit_scale.exp() * img @ txt.T
        same = (ids[:, None] == ids[None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.log_softmax(0)).sum(0).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise UeobenchError(f"pretraining diverged at step {step} (loss {losses[-1]}); nothing was written "
                                f"after step {step - step % 500}")
        if step % 100 == 0:
            log(f"step {step}/{cfg.steps}  loss {np.mean(losses[-100:]):.3f}  {time.time() - start:.0f}s")
        if step % 500 == 0:
            _save(model, cfg, step, out)
        if (time.time() - start) / 60 > cfg.minutes:
            log(f"time budget of {cfg.minutes} min reached at step {step}")
            break
    model.eval()
    digest = _save(model, cfg, step, out)
    return {"steps": step, "minutes": (time.time() - start) / 60, "final_loss": float(np.mean(losses[-100:])),
            "path": str(out), "sha256": digest, "bytes": out.stat().st_size}
