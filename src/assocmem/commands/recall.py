"""``assocmem recall --memory FILE --cue image.png --out result.png``: complete a damaged picture from
a memory bank written by ``assocmem store``, with the modern Hopfield network (KH eq. 16, default)
or another effective model (classical, Dense AM of KH eq. 8, spherical of KH eq. 22). PNG in, PNG out.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..models import by_name, entry, names
from . import _args as A

#: the model names of :func:`assocmem.models.by_name`
MODELS = names()


def register(sub):
    p = sub.add_parser(
        "recall",
        help="complete a damaged image from a memory bank (PNG in, PNG out)",
        description="Recall the stored image nearest to a damaged cue. Transparent pixels of the cue (alpha < 0.5) "
        "count as unknown: they start at 0 in the continuous models and at random +-1 values in the binary ones. "
        "The opaque pixels may be noisy and are updated too, unless --clamp holds them fixed. The cue must have the "
        "bank's image size.",
    )
    p.add_argument("--memory", required=True, metavar="FILE", help="memory bank written by `assocmem store`")
    p.add_argument("--cue", required=True, metavar="IMAGE", help="the damaged image (PNG, JPEG, ...)")
    p.add_argument("--out", required=True, metavar="PNG", help="where to write the recalled image (PNG)")
    p.add_argument("--model", default="modern", type=A.choice(MODELS), help=f"which model recalls: {' | '.join(MODELS)} (default modern)")
    p.add_argument("--beta", type=A.positive(), default=None,
                   help="inverse temperature for modern, dense-exp, spherical (default: the bank's, 0.8 unless set at store)")
    p.add_argument("--n", type=A.integer(minimum=2), default=30, help="power n of dense-power (default 30)")
    p.add_argument("--max-steps", type=A.integer(minimum=1), default=50,
                   help="most updates (sweeps for binary models), default 50")
    p.add_argument("--clamp", action="store_true",
                   help="hold the opaque pixels of the cue fixed (when they are known to be right); with spherical "
                        "the unknown pixels then start at random +-1 values")
    p.add_argument("--seed", type=A.seed(), default=0,
                   help="seed of the sweep order and of random unknown pixels, 0 to 2^64 - 1 (default 0)")
    p.set_defaults(func=run)
    return p


def build_model(name: str, bank, beta: float, n: int):
    """The effective model ``name`` (:func:`assocmem.models.by_name`) over the bank's patterns."""
    xi = bank.xi
    if entry(name).binary and not bank.binary_pixels:
        raise ValueError(f"--model: {name} stores +-1 pixels only; this bank holds grey levels (stored with --gray); "
                         "use --model modern or spherical, or store the images without --gray")
    kwargs = {"modern": {"beta": beta}, "dense-exp": {"beta": beta}, "dense-power": {"n": n}, "dense": {"n": n},
              "spherical": {"F": "exp", "beta": beta * math.sqrt(xi.shape[1])}}
    return by_name(name, xi, **kwargs.get(name, {}))


def run(args) -> int:
    import torch

    from .. import load
    from ..data import ImageMemory, image_to_pattern, pattern_to_image, read_image, write_png

    model_name, n, max_steps, seed = args.model, args.n, args.max_steps, args.seed
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out: got {str(out)!r}; expected a file name ending in .png")
    if out.is_dir():
        raise ValueError(f"--out: {str(out)!r} is a folder; expected a PNG file name")
    if not out.absolute().parent.is_dir():
        raise FileNotFoundError(f"--out: the folder {str(out.absolute().parent)!r} does not exist")
    mem = Path(args.memory)
    if not mem.exists():
        raise FileNotFoundError(f"--memory: no memory bank at {str(mem)!r}")
    bank = load(mem)
    if not isinstance(bank, ImageMemory):
        raise ValueError(f"--memory: {str(mem)!r} holds a {type(bank).__name__}, not images; "
                         "expected a bank written by `assocmem store`")
    grey, known = read_image(args.cue, name="--cue")
    h, w = bank.image_shape
    if grey.shape != (h, w):
        raise ValueError(f"--cue: the image is {grey.shape[1]}x{grey.shape[0]} pixels; expected {w}x{h}, "
                         f"the size of the images in {mem.name}")
    beta = bank.beta if args.beta is None else float(args.beta)
    model = build_model(model_name, bank, beta, n)
    cue = image_to_pattern(grey, binary=bank.binary_pixels or model.binary).to(bank.xi.dtype)
    known_t = torch.from_numpy(known.reshape(-1))
    g = torch.Generator().manual_seed(seed)
    if model.binary:
        cue = torch.where(cue > 0, 1.0, -1.0).to(bank.xi.dtype)
    partial = not bool(known_t.all())
    if partial and (model.binary or (args.clamp and model_name == "spherical")):
        # binary neurons have no "unknown" value; the spherical clamp needs room for the free pixels
        fill = torch.where(torch.rand(cue.shape, generator=g) < 0.5, 1.0, -1.0).to(cue.dtype)
        cue = torch.where(known_t, cue, fill)
    elif partial:
        cue = torch.where(known_t, cue, torch.zeros_like(cue))
    clamp = known_t if (args.clamp and partial) else None
    r = model.recall(cue, max_steps=max_steps, clamp=clamp, generator=g)
    state = r.state
    if bank.binary_pixels:
        state = torch.where(state > 0, 1.0, -1.0)
    dist = (state.unsqueeze(0) - bank.xi).abs().mean(-1) / 2.0  # fraction of differing pixels (for +-1)
    best = int(dist.argmin())
    write_png(out, pattern_to_image(state, h, w))
    conv = "converged" if bool(r.converged) else f"not converged after {r.steps} steps"
    print(f"recalled with {model_name} in {r.steps} step(s), {conv}; nearest stored image: {bank.names[best]} "
          f"({100.0 * float(dist[best]):.2f} % of pixels differ); wrote {out}")
    return 0
